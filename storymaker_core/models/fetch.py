"""Bring each selected model to its ComfyUI folder: check what is there, download what is not, report.

Per item: a file whose record (see :mod:`.records`) still matches is taken as is, without network;
otherwise the source's published size (and sha256 where the Hub publishes it) decides whether the file
is valid, corrupt (downloaded again) or missing. Failures of one item do not stop the others; the
summary names what to fetch by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .catalog import HubSource, ModelItem
from .errors import FetchError, NetworkUnavailable, VerificationFailed
from .hub_download import download_hub_file, hub_file_info
from .http_download import download, remote_size
from .insightface_pack import unpack
from .place import prune_staging, remove_staging, staging_dir
from .records import Records, sha256_file

logger = logging.getLogger(__name__)
PRESENT, DOWNLOADED, WOULD_DOWNLOAD, REFUSED, FAILED = "present", "downloaded", "would download", "refused", "failed"
CONVERTED_NAME = "storymaker.safetensors"


@dataclass
class FetchOptions:
    """``verify``: hash every present file (ignore records); ``convert``: mask.bin -> safetensors after."""

    accept_insightface_license: bool = False
    verify: bool = False
    dry_run: bool = False
    convert: bool = False


@dataclass
class Outcome:
    item: ModelItem
    status: str
    detail: str = ""
    unreachable: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in (PRESENT, DOWNLOADED, WOULD_DOWNLOAD)


class Fetcher:
    """Fetch :class:`ModelItem`s into one ComfyUI folder; ``say`` receives the status lines."""

    def __init__(self, comfyui: Path, options: FetchOptions, say: Callable[[str], None] = print):
        self.comfyui = Path(comfyui)
        self.options = options
        self.say = say
        self.records = Records(self.comfyui, read_only=options.dry_run)

    def run(self, items: list[ModelItem]) -> list[Outcome]:
        outcomes = []
        for item in items:
            try:
                outcome = self._fetch(item)
            except NetworkUnavailable as e:
                outcome = Outcome(item, FAILED, str(e), unreachable=True)
            except FetchError as e:
                outcome = Outcome(item, FAILED, str(e))
            finally:
                prune_staging(self.comfyui)
            if outcome.ok and self.options.convert and item.key == "storymaker":
                self._convert(item, outcome)
            self.say(f"[{item.key}] {outcome.status}: {outcome.detail}")
            for note in outcome.notes:
                self.say(f"[{item.key}]   {note}")
            outcomes.append(outcome)
        return outcomes

    # -- one item ---------------------------------------------------------------------------------------
    def _fetch(self, item: ModelItem) -> Outcome:
        if item.unzip_members:
            return self._fetch_pack(item)
        dest = self.comfyui / item.folder / item.name
        if dest.is_file() and not self.options.verify and self.records.unchanged(dest):
            return Outcome(item, PRESENT, f"{dest} (verified when it was fetched; --verify hashes it again)")
        try:
            size, sha256, hub_info = self._published(item)
        except FetchError as e:  # offline, or the source is gone: a present file is still usable
            if dest.is_file():
                return Outcome(item, PRESENT, f"{dest} (not checked: {e})")
            raise
        notes = []
        if dest.is_file():
            problem = self._problem_with(dest, size, sha256)
            if problem is None:
                return Outcome(item, PRESENT, f"{dest} (checked)")
            notes.append(f"{dest} is not valid ({problem}): fetching it again")
            self.records.forget(dest)
        if self.options.dry_run:
            return Outcome(item, WOULD_DOWNLOAD, f"{item.source.describe()} -> {dest} ({_size(size)})", notes=notes)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if hub_info is not None:
            digest = download_hub_file(item.source, dest, hub_info, staging_dir(self.comfyui, item.key))
        else:
            download(item.source.url, dest, expected_size=size, desc=item.name)
            digest = sha256_file(dest)
        self.records.put(dest, digest, item.source.describe())
        return Outcome(item, DOWNLOADED, f"{dest} ({_size(dest.stat().st_size)}, sha256 {digest[:12]}...)",
                       notes=notes)

    def _published(self, item: ModelItem):
        """(size, sha256, hub info) the source publishes; sha256 is None where nothing is published."""
        if isinstance(item.source, HubSource):
            info = hub_file_info(item.source)
            return info.size, info.sha256, info
        return remote_size(item.source.url), None, None

    def _problem_with(self, path: Path, size: int | None, sha256: str | None) -> str | None:
        """Why a present file is not the published one, or None when it is (recording it)."""
        actual = path.stat().st_size
        if size is not None and actual != size:
            return f"{actual} bytes, the source has {size}"
        record = self.records.get(path)
        expected = sha256 or (record.sha256 if record else None)
        if expected is None:  # nothing to compare with but the size: trust it, remember its hash
            self.records.put(path, sha256_file(path), "found in place")
            return None
        digest = sha256_file(path)
        if digest != expected:
            return f"sha256 {digest[:12]}... instead of {expected[:12]}..."
        self.records.put(path, digest, record.source if record else "found in place")
        return None

    def _fetch_pack(self, item: ModelItem) -> Outcome:
        folder = self.comfyui / item.folder / item.name
        problem = self._pack_problem(folder, item.unzip_members)
        if problem is None:
            return Outcome(item, PRESENT, f"{folder} ({len(item.unzip_members)} files)")
        notes = [problem] if problem != "missing" else []
        if item.licence_gate:
            self.say(f"[{item.key}] licence:\n{_indent(item.licence_gate)}")
            if not self.options.accept_insightface_license:
                return Outcome(item, REFUSED, f"not downloaded: accept the licence above with "
                                              f"--accept-{item.key}-license, or leave {item.key} out with --only",
                               notes=notes)
            self.say(f"[{item.key}] licence accepted (--accept-{item.key}-license)")
        if self.options.dry_run:
            size = remote_size(item.source.url)
            return Outcome(item, WOULD_DOWNLOAD, f"{item.source.describe()} -> unzip into {folder} ({_size(size)})",
                           notes=notes)
        staging = staging_dir(self.comfyui, item.key)
        zip_name = item.source.url.rsplit("/", 1)[-1].split("?", 1)[0] or f"{item.key}.zip"
        archive = download(item.source.url, staging / zip_name, desc=zip_name)  # a stopped run resumes here
        try:
            digests = unpack(archive, folder, item.unzip_members)
        except VerificationFailed:
            remove_staging(staging)  # a corrupt zip is fetched whole next time
            raise
        for name, digest in digests.items():
            self.records.put(folder / name, digest, item.source.describe())
        remove_staging(staging)
        return Outcome(item, DOWNLOADED, f"{folder} ({', '.join(digests)})", notes=notes)

    def _pack_problem(self, folder: Path, members: tuple[str, ...]) -> str | None:
        """None when every member is in place and unchanged, or (unzipped by hand, no record) a whole ONNX file."""
        from ..model_files import onnx_problem  # reads the protobuf's top-level fields: catches truncation

        missing = [name for name in members if not (folder / name).is_file()]
        if len(missing) == len(members):
            return "missing"
        if missing:
            return f"{folder} lacks {', '.join(missing)}"
        for name in members:
            path = folder / name
            record = self.records.get(path)
            if record is None:
                problem = onnx_problem(path)
                if problem:
                    return f"{path} {problem}"
                continue
            if self.records.unchanged(path) and not self.options.verify:
                continue
            if path.stat().st_size != record.size or sha256_file(path) != record.sha256:
                return f"{path} differs from the file unzipped earlier"
            self.records.put(path, record.sha256, record.source)
        return None

    def _convert(self, item: ModelItem, outcome: Outcome) -> None:
        """``--convert``: write the half-size safetensors next to mask.bin, again only when mask.bin changed."""
        source = self.comfyui / item.folder / item.name
        target = source.with_name(CONVERTED_NAME)
        source_record, target_record = self.records.unchanged(source), self.records.unchanged(target)
        made_from = f"converted from {source.name} sha256 {source_record.sha256}" if source_record else None
        if target_record is not None and target_record.source == made_from:
            outcome.notes.append(f"{target} already converted from this {source.name}")
            return
        if self.options.dry_run:
            outcome.notes.append(f"would convert to {target} (fp16)")
            return
        from ..convert import convert  # imports torch: only when asked
        from ..weights import StoryMakerWeightsError

        try:
            metadata = convert(str(source), str(target), "fp16")
        except StoryMakerWeightsError as e:
            outcome.status, outcome.detail = FAILED, f"converting {source}: {e}"
            return
        made_from = f"converted from {source.name} sha256 {metadata['source_sha256']}"
        self.records.put(target, sha256_file(target), made_from)
        outcome.notes.append(f"converted to {target} (fp16; the Load StoryMaker node reads either file)")


def _size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024
    return f"{size} B"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
