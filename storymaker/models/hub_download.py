"""Hugging Face files through ``huggingface_hub``: its endpoint (``HF_ENDPOINT`` mirrors), token
(``HF_TOKEN`` or ``hf auth login``), cache reuse (a file already in the Hugging Face cache is copied,
not downloaded), Xet transfers and in-run resume of a cut connection.

The file is downloaded into ``ComfyUI/models/.storymaker-download/<key>/`` (``local_dir`` mode: no
second copy in the cache), checked against the expected size and sha256 (the catalog's pin; for a file
without one, what the Hub publishes: its LFS ETag), and only then moved to its final name, so that name
never holds a partial or wrong file.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from .catalog import HubSource
from .errors import FetchError, NetworkUnavailable, VerificationFailed
from .place import move_into_place, remove_staging
from .records import sha256_file

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONNECTION_ERRORS = {"ConnectError", "ConnectTimeout", "ConnectionError", "TimeoutException", "ReadTimeout",
                      "ProxyError", "OfflineModeIsEnabled", "NameResolutionError", "MaxRetryError",
                      "NewConnectionError", "LocalEntryNotFoundError"}


@dataclass(frozen=True)
class HubFileInfo:
    """What the Hub publishes about a file: ``sha256`` is None for small non-LFS files (git blob ETag)."""

    size: int | None
    sha256: str | None
    commit: str | None
    url: str


def _endpoint() -> str | None:
    """Read at call time: huggingface_hub reads ``HF_ENDPOINT`` once, when it is first imported."""
    return os.environ.get("HF_ENDPOINT") or None


def _chain(error: BaseException):
    """The error and the errors it was raised from."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def _is_connection_error(error: BaseException) -> bool:
    return any(type(e).__name__ in _CONNECTION_ERRORS or isinstance(e, (ConnectionError, socket.gaierror))
               for e in _chain(error))


def _explain(error: BaseException, source: HubSource, url: str) -> FetchError:
    """The Hub's exceptions, in words that say what to do."""
    from huggingface_hub.utils import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                       RepositoryNotFoundError, RevisionNotFoundError)

    if isinstance(error, GatedRepoError):
        return FetchError(f"{source.repo_id} is gated: accept its terms on https://huggingface.co/{source.repo_id} "
                          f"and log in (`hf auth login`, or set HF_TOKEN)")
    if isinstance(error, RepositoryNotFoundError):
        return FetchError(f"{url}: repository {source.repo_id} not found (or private: log in with `hf auth login` "
                          f"or set HF_TOKEN)")
    if isinstance(error, RevisionNotFoundError):
        return FetchError(f"{url}: revision {source.revision} not found in {source.repo_id}")
    if isinstance(error, EntryNotFoundError) and not _is_connection_error(error):
        return FetchError(f"{url}: {source.filename} not found in {source.repo_id}")
    if any(type(e).__name__ == "OfflineModeIsEnabled" for e in _chain(error)):
        return NetworkUnavailable("HF_HUB_OFFLINE is set, so huggingface_hub makes no request; unset it to download")
    if _is_connection_error(error):
        where = _endpoint() or "https://huggingface.co"
        return NetworkUnavailable(f"cannot reach the Hugging Face Hub at {where} ({type(error).__name__}); "
                                  f"set HF_ENDPOINT to a mirror, or download by hand")
    if isinstance(error, HfHubHTTPError):
        return FetchError(f"{url}: {error}")
    return FetchError(f"{url}: {type(error).__name__}: {error}")


def hub_file_info(source: HubSource) -> HubFileInfo:
    """Size, sha256 and commit of ``source`` from one HEAD request.

    Raises:
        NetworkUnavailable: the Hub (or ``HF_ENDPOINT``) cannot be reached.
        FetchError: repository, revision or file not found, gated, or another HTTP error.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(source.repo_id, source.filename, revision=source.revision, endpoint=_endpoint())
    try:
        meta = get_hf_file_metadata(url)
    except Exception as e:  # noqa: BLE001 - the Hub client raises many kinds; each becomes a message
        raise _explain(e, source, url) from e
    etag = (meta.etag or "").strip('"').lower()
    return HubFileInfo(size=meta.size, sha256=etag if _SHA256.fullmatch(etag) else None,
                       commit=meta.commit_hash, url=url)


def check_bytes(path: Path, size: int | None, sha256: str | None, what: str, basis: str) -> str:
    """Compare ``path`` with the expected ``size`` and ``sha256`` (``basis`` says whose numbers they are, e.g.
    "the pin"); returns the sha256 (computed).

    Raises:
        VerificationFailed: the size or the sha256 differs.
    """
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise VerificationFailed(f"{what}: {actual} bytes, {basis} says {size}")
    digest = sha256_file(path, desc=f"sha256 {path.name}")
    if sha256 is not None and digest != sha256:
        raise VerificationFailed(f"{what}: sha256 {digest}, {basis} says {sha256}")
    return digest


def download_hub_file(source: HubSource, dest: Path, info: HubFileInfo, staging: Path, *, size: int | None,
                      sha256: str | None, basis: str) -> str:
    """Download ``source`` (pinned to ``info.commit``) into ``staging``, check it against ``size`` and
    ``sha256``, and only then move it to ``dest``.

    Returns:
        the file's sha256.

    Raises:
        NetworkUnavailable, FetchError, VerificationFailed (then nothing is kept).
    """
    from huggingface_hub import hf_hub_download

    try:
        staged = Path(hf_hub_download(source.repo_id, source.filename, revision=info.commit or source.revision,
                                      local_dir=staging, endpoint=_endpoint(),
                                      cache_dir=os.environ.get("HF_HUB_CACHE") or None))
    except Exception as e:  # noqa: BLE001
        remove_staging(staging)  # huggingface_hub keeps no partial file to resume from; only its locks
        raise _explain(e, source, info.url) from e
    try:
        digest = check_bytes(staged, size, sha256, f"downloaded {source.describe()}", basis)
    except VerificationFailed:
        remove_staging(staging)  # never reuse bytes that failed the check
        raise
    try:
        move_into_place(staged, dest)
    except OSError as e:
        raise FetchError(f"cannot write {dest}: {e.strerror or e}") from e
    finally:
        remove_staging(staging)
    return digest
