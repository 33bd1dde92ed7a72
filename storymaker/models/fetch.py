"""Bring each selected model to ComfyUI: check what is there, download what is not, report.

Per item:

* where: the folders ComfyUI searches for the item's kind (its own ``models/<folder>``, the folders of
  ``extra_model_paths.yaml``, ``--base-directory``; see :mod:`storymaker.comfyui`), in ComfyUI's order. The
  first folder that holds the file is the one ComfyUI loads it from: that file is checked (and, if it is
  damaged, replaced there). When no folder holds it, it is downloaded into the first folder, where ComfyUI
  looks first. A file found in a later folder is reported and not downloaded again.
* what: the catalog's pin (size and sha256). A present file whose record (see :mod:`.records`) still
  matches is taken as is, without network; otherwise it is hashed against the pin. A download is checked
  against the pin before it takes its final name, whoever serves it (Hugging Face, ``HF_ENDPOINT``, a
  ``--url`` mirror). A file without a pin is placed only with ``--trust-unpinned``, checked then against
  what its own host publishes.

Failures of one item do not stop the others; the summary names what to fetch by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..comfyui import ComfyPaths, model_paths
from .catalog import HubSource, ModelItem
from .errors import FetchError, NetworkUnavailable, VerificationFailed
from .hub_download import HubFileInfo, download_hub_file, hub_file_info
from .http_download import download, remote_size
from .insightface_pack import install, recover
from .place import prune_staging, remove_staging, staging_dir
from .records import Records, sha256_file

logger = logging.getLogger(__name__)
PRESENT, DOWNLOADED, WOULD_DOWNLOAD, REFUSED, FAILED = "present", "downloaded", "would download", "refused", "failed"
CONVERTED_NAME = "storymaker.safetensors"


@dataclass
class FetchOptions:
    """``verify``: hash every present file (ignore records); ``convert``: mask.bin -> safetensors after;
    ``trust_unpinned``: place files the catalog has no size + sha256 for (checked against their host only)."""

    accept_insightface_license: bool = False
    verify: bool = False
    dry_run: bool = False
    convert: bool = False
    trust_unpinned: bool = False


@dataclass
class Outcome:
    item: ModelItem
    status: str
    detail: str = ""
    unreachable: bool = False
    notes: list[str] = field(default_factory=list)
    path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status in (PRESENT, DOWNLOADED, WOULD_DOWNLOAD)


@dataclass(frozen=True)
class Expected:
    """The bytes a file must have, and whose word that is (``basis``: "the pin", "the Hub", ...)."""

    size: int | None
    sha256: str | None
    basis: str


class Fetcher:
    """Fetch :class:`ModelItem`s into one ComfyUI set-up; ``say`` receives the status lines."""

    def __init__(self, comfyui: Path, options: FetchOptions, say: Callable[[str], None] = print,
                 paths: ComfyPaths | None = None):
        self.comfyui = Path(comfyui)
        self.options = options
        self.say = say
        self.paths = paths if paths is not None else model_paths(self.comfyui)
        self.records = Records(self.paths.base, read_only=options.dry_run)

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
                prune_staging(self.paths.models_dir)
            if outcome.ok and self.options.convert and item.key == "storymaker":
                self._convert(item, outcome)
            self.say(f"[{item.key}] {outcome.status}: {outcome.detail}")
            for note in outcome.notes:
                self.say(f"[{item.key}]   {note}")
            outcomes.append(outcome)
        return outcomes

    # -- where ComfyUI looks ----------------------------------------------------------------------------
    def _search(self, item: ModelItem) -> list[tuple[Path, Path]]:
        """(search folder, where the item would be in it), in the order ComfyUI searches."""
        dirs = self.paths.dirs(item.folder_name) or [self.paths.models_dir / item.folder_name]
        return [(d, d / item.subfolder / item.name if item.subfolder else d / item.name) for d in dirs]

    def _candidates(self, item: ModelItem) -> list[Path]:
        return [path for _, path in self._search(item)]

    def _where(self, item: ModelItem, path: Path, detail: str) -> str:
        """``path (detail)``, saying how ComfyUI finds it when it is not the first place ComfyUI looks."""
        search = self._search(item)
        if path == search[0][1]:
            return f"{path} ({detail})"
        origin = next((self.paths.origin(d) for d, p in search if p == path), "")
        return (f"{path} ({detail}; found elsewhere in ComfyUI's search path{' (' + origin + ')' if origin else ''}: "
                f"ComfyUI loads it from there, so it is not downloaded again)")

    # -- one item ---------------------------------------------------------------------------------------
    def _fetch(self, item: ModelItem) -> Outcome:
        if item.unzip_members:
            return self._fetch_pack(item)
        candidates = self._candidates(item)
        found = next((p for p in candidates if p.is_file()), None)
        target = found or candidates[0]
        notes: list[str] = []
        pin = item.pin
        if found is not None and not self.options.verify:
            record = self.records.unchanged(found)
            if record is not None and (pin.sha256 is None or record.sha256 == pin.sha256):
                return Outcome(item, PRESENT, self._where(item, found, "checked on an earlier run and unchanged "
                                                                       "since; --verify hashes it again"), path=found)
        hub_info: HubFileInfo | None = None
        if pin.known:
            expected = Expected(pin.size, pin.sha256, "the pin")
        elif found is None and not self.options.trust_unpinned:
            return Outcome(item, REFUSED, _unpinned_refusal(item))  # before any request
        else:
            try:
                expected, hub_info = self._published(item)
            except FetchError as e:  # offline, or the source is gone: a present file is still usable
                if found is not None:
                    return Outcome(item, PRESENT, self._where(item, found, f"not checked: {e}"), path=found)
                raise
        if found is not None:
            problem = self._problem_with(found, expected)
            if problem is None:
                return Outcome(item, PRESENT, self._where(item, found, f"checked against {expected.basis}"),
                               path=found)
            notes.append(f"{found} is not valid ({problem}): fetching it again into the same place")
            if not self.options.dry_run:
                self.records.forget(found)
        if not pin.known and not self.options.trust_unpinned:
            return Outcome(item, REFUSED, _unpinned_refusal(item), notes=notes)
        if isinstance(item.source, HubSource):
            if hub_info is None:
                hub_info = hub_file_info(item.source)
            _check_published(item, hub_info, expected)
            size = hub_info.size
        else:
            size = expected.size
            if self.options.dry_run or size is None:
                served = remote_size(item.source.url)
                if size is not None and served is not None and served != size:
                    raise VerificationFailed(f"{item.source.url} serves {served} bytes; {expected.basis} says "
                                             f"{size}: not downloaded")
                size = size if size is not None else served
        if self.options.dry_run:
            return Outcome(item, WOULD_DOWNLOAD, f"{item.source.describe()} -> {target} ({human_size(size)})",
                           notes=notes)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if hub_info is not None:
                digest = download_hub_file(item.source, target, hub_info, staging_dir(self.paths.models_dir, item.key),
                                           size=expected.size, sha256=expected.sha256, basis=expected.basis)
            else:
                digest = download(item.source.url, target, expected_size=expected.size,
                                  expected_sha256=expected.sha256, desc=item.name)
        except OSError as e:
            raise FetchError(f"cannot write {target}: {e.strerror or e}") from e
        self.records.put(target, digest, item.source.describe())
        checked = "checked against the pin" if pin.known else f"NOT pinned: checked only against {expected.basis}"
        return Outcome(item, DOWNLOADED, f"{target} ({human_size(target.stat().st_size)}, sha256 {digest[:12]}..., "
                                         f"{checked})", notes=notes, path=target)

    def _published(self, item: ModelItem) -> tuple[Expected, HubFileInfo | None]:
        """What the source itself publishes (for a file without a pin)."""
        if isinstance(item.source, HubSource):
            info = hub_file_info(item.source)
            return Expected(info.size, info.sha256, "what the Hub publishes"), info
        return Expected(remote_size(item.source.url), None, "the size the host sends"), None

    def _problem_with(self, path: Path, expected: Expected) -> str | None:
        """Why a present file is not the expected one, or None when it is (recording it)."""
        actual = path.stat().st_size
        if expected.size is not None and actual != expected.size:
            return f"{actual} bytes, {expected.basis} says {expected.size}"
        record = self.records.get(path)
        reference = expected.sha256 or (record.sha256 if record else None)
        if reference is None:  # nothing to compare with but the size: trust it, remember its hash
            self.records.put(path, sha256_file(path), "found in place")
            return None
        digest = sha256_file(path)
        if digest != reference:
            return f"sha256 {digest[:12]}... instead of {reference[:12]}..."
        self.records.put(path, digest, record.source if record else "found in place")
        return None

    # -- a zip pack (InsightFace) -----------------------------------------------------------------------
    def _fetch_pack(self, item: ModelItem) -> Outcome:
        candidates = self._candidates(item)
        if not self.options.dry_run:
            for folder in candidates:
                try:
                    recover(folder)
                except OSError as e:
                    raise FetchError(f"cannot clean up after an earlier run in {folder.parent}: {e}") from e
        found = next((f for f in candidates if f.is_dir() and any(f.glob("*.onnx"))), None)
        target = found or candidates[0]
        notes: list[str] = []
        if found is not None:
            problem = self._pack_problem(found, item)
            if problem is None:
                return Outcome(item, PRESENT, self._where(item, found, f"{len(item.unzip_members)} files"),
                               path=found)
            notes.append(f"{problem}: fetching the pack again into the same place")
        if item.licence_gate:
            self.say(f"[{item.key}] licence:\n{_indent(item.licence_gate)}")
            if not self.options.accept_insightface_license:
                return Outcome(item, REFUSED, f"not downloaded: accept the licence above with "
                                              f"--accept-{item.key}-license, or leave {item.key} out with --only",
                               notes=notes)
            self.say(f"[{item.key}] licence accepted (--accept-{item.key}-license)")
        pin = item.pin
        if not pin.known and not self.options.trust_unpinned:
            return Outcome(item, REFUSED, _unpinned_refusal(item), notes=notes)
        if self.options.dry_run:
            served = remote_size(item.source.url)
            if pin.size is not None and served is not None and served != pin.size:
                raise VerificationFailed(f"{item.source.url} serves {served} bytes; the pin says {pin.size}: "
                                         f"not downloaded")
            return Outcome(item, WOULD_DOWNLOAD, f"{item.source.describe()} -> unzip into {target} "
                                                 f"({human_size(pin.size if pin.size is not None else served)})",
                           notes=notes)
        staging = staging_dir(self.paths.models_dir, item.key)
        zip_name = item.source.url.rsplit("/", 1)[-1].split("?", 1)[0] or f"{item.key}.zip"
        archive = staging / zip_name
        try:
            if not (pin.known and archive.is_file() and archive.stat().st_size == pin.size
                    and sha256_file(archive) == pin.sha256):  # a zip checked by a run stopped before unzipping
                download(item.source.url, archive, expected_size=pin.size, expected_sha256=pin.sha256,
                         desc=zip_name)  # a stopped run resumes here; checked before it is unzipped
            digests = install(archive, target, item.unzip_members, item.member_pins())
        except VerificationFailed:
            remove_staging(staging)  # a corrupt zip is fetched whole next time
            raise
        except OSError as e:
            raise FetchError(f"cannot write {target}: {e.strerror or e}") from e
        for name, digest in digests.items():
            self.records.put(target / name, digest, item.source.describe())
        remove_staging(staging)
        return Outcome(item, DOWNLOADED, f"{target} ({', '.join(digests)}; zip checked against the pin)"
                       if pin.known else f"{target} ({', '.join(digests)}; NOT pinned)", notes=notes, path=target)

    def _pack_problem(self, folder: Path, item: ModelItem) -> str | None:
        """None when every member is in place and is the pinned file (or, without a member pin, unchanged
        since it was unzipped, or for a pack unzipped by hand a whole ONNX file)."""
        from .._core import model_files  # onnx_problem reads the protobuf's top-level fields: catches truncation

        members, pins = item.unzip_members, item.member_pins()
        missing = [name for name in members if not (folder / name).is_file()]
        if missing:
            return f"{folder} lacks {', '.join(missing)}"
        for name in members:
            path = folder / name
            record = self.records.get(path)
            pinned = pins.get(name)
            if record is not None and self.records.unchanged(path) and not self.options.verify \
                    and (pinned is None or record.sha256 == pinned):
                continue
            if pinned is not None:
                digest = sha256_file(path)
                if digest != pinned:
                    why = model_files.onnx_problem(path)  # say what it is when plain (a web page, a truncated file)
                    return f"{path} {why}" if why else \
                        f"{path} is not the pinned file (sha256 {digest[:12]}... instead of {pinned[:12]}...)"
                self.records.put(path, digest, record.source if record else "found in place")
                continue
            if record is None:
                problem = model_files.onnx_problem(path)
                if problem:
                    return f"{path} {problem}"
                continue
            if path.stat().st_size != record.size or sha256_file(path) != record.sha256:
                return f"{path} differs from the file unzipped earlier"
            self.records.put(path, record.sha256, record.source)
        return None

    def _convert(self, item: ModelItem, outcome: Outcome) -> None:
        """``--convert``: write the half-size safetensors next to mask.bin, again only when mask.bin changed."""
        source = outcome.path or self._candidates(item)[0]
        target = source.with_name(CONVERTED_NAME)
        source_record, target_record = self.records.unchanged(source), self.records.unchanged(target)
        made_from = f"converted from {source.name} sha256 {source_record.sha256}" if source_record else None
        if target_record is not None and target_record.source == made_from:
            outcome.notes.append(f"{target} already converted from this {source.name}")
            return
        if self.options.dry_run:
            outcome.notes.append(f"would convert to {target} (fp16)")
            return
        from .._core import convert, weights  # import torch: only when asked

        try:
            metadata = convert.convert(str(source), str(target), "fp16")
        except weights.StoryMakerWeightsError as e:
            outcome.status, outcome.detail = FAILED, f"converting {source}: {e}"
            return
        made_from = f"converted from {source.name} sha256 {metadata['source_sha256']}"
        self.records.put(target, sha256_file(target), made_from)
        outcome.notes.append(f"converted to {target} (fp16; the Load StoryMaker node reads either file)")


def _check_published(item: ModelItem, info: HubFileInfo, expected: Expected) -> None:
    """Refuse before downloading when the Hub (or the ``HF_ENDPOINT`` mirror) announces other bytes."""
    if expected.basis != "the pin":
        return
    if (info.sha256 is not None and info.sha256 != expected.sha256) or \
            (info.size is not None and info.size != expected.size):
        raise VerificationFailed(
            f"{info.url}: the Hub publishes {info.size} bytes, sha256 {info.sha256}; the pin is {expected.size} "
            f"bytes, sha256 {expected.sha256}: not downloaded (the file changed upstream, or HF_ENDPOINT serves "
            f"other bytes)")


def _unpinned_refusal(item: ModelItem) -> str:
    return (f"not downloaded: no pinned size + sha256 for {item.source.describe()} ({item.pin.origin}), so only "
            f"its own host would vouch for the bytes. Pass --trust-unpinned to accept what the host publishes "
            f"(checked against the host's own size and sha256), or put the file in place by hand")


def human_size(size: int | None) -> str:
    """Bytes in decimal units, as the docs write them: under 1 MB in KB, then MB, then GB."""
    if size is None:
        return "size unknown"
    kb = round(size / 1e3, 1)
    if kb < 1000:
        return f"{kb:.1f} KB"
    mb = round(size / 1e6, 1)
    if mb < 1000:
        return f"{mb:.1f} MB"
    return f"{size / 1e9:.1f} GB"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
