"""HTTPS download with resume: ``dest.part`` grows (HTTP Range) until complete, is checked against the
expected size and sha256, and only then takes its final name with ``os.replace``.

Used for the release hosts (GitHub releases, Meta's CDN); Hugging Face files go through huggingface_hub.
A cut connection is resumed in the same run (a few tries); a run that was stopped leaves ``dest.part``
behind and the next run continues from its end, with ``If-Range`` (the ETag or Last-Modified of the first
response, kept in ``dest.part.version``) so that a file changed on the server in between is fetched
whole instead of glued onto the old part. The final name only ever holds a complete, checked file: bytes
whose sha256 differs from the expected one are deleted, and a response that gives no size
(no Content-Length) for a file whose sha256 is not known is refused before its body is read.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .errors import FetchError, NetworkUnavailable, VerificationFailed
from .records import sha256_file

logger = logging.getLogger(__name__)
USER_AGENT = "ComfyUI-StoryMaker model fetch (python urllib)"
RETRY_WAIT_S = 1.0  # pause before resuming a cut connection
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _is_unreachable(error: BaseException) -> bool:
    """urllib wraps failures to connect (refused, DNS, connect timeout) in URLError; cut bodies are not."""
    return isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError)


def remote_size(url: str, timeout: float = 20.0) -> int | None:
    """The file's size, or None when the host does not say: HEAD, else (hosts whose signed redirect URLs
    refuse HEAD) a GET of its first byte, whose Content-Range carries the total.

    Raises:
        NetworkUnavailable: the host cannot be reached.
        FetchError: the host answers with an HTTP error (404, 403...).
    """
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT}),
                                    timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            return int(length) if length and length.isdigit() else None
    except urllib.error.HTTPError as e:
        if e.code not in (403, 405, 501):
            raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise NetworkUnavailable(f"cannot reach {url}: {getattr(e, 'reason', e)}") from e
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return _total_from(response, 0)[1]
    except urllib.error.HTTPError as e:
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise NetworkUnavailable(f"cannot reach {url}: {getattr(e, 'reason', e)}") from e


def _open(url: str, start: int, timeout: float, validator: str | None):
    """GET from ``start``; with ``If-Range`` the server sends the whole file instead if it has changed since."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
        if validator:
            headers["If-Range"] = validator
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _validator(response) -> str | None:
    """The response's strong ETag, else its Last-Modified: what identifies this version of the file."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _total_from(response, start: int) -> tuple[int, int | None]:
    """(offset the body starts at, total size) from a 200 or 206 response."""
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if not match or int(match.group(1)) != start:
            raise FetchError(f"{response.url}: the server answered the resume request with a wrong "
                             f"Content-Range ({response.headers.get('Content-Range')!r})")
        return start, None if match.group(3) == "*" else int(match.group(3))
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None  # 200: the server ignored Range


def download(url: str, dest: str | Path, *, expected_size: int | None = None, expected_sha256: str | None = None,
             tries: int = 4, timeout: float = 60.0, desc: str | None = None) -> str:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed when present); returns the file's sha256.

    Args:
        expected_size: bytes the file must have (else the server's Content-Length is used).
        expected_sha256: the sha256 the file must have; checked before the file takes its final name.
        tries: connection attempts in this run; each resumes where the last one stopped.

    Raises:
        NetworkUnavailable: the host could not be reached (before any byte arrived).
        VerificationFailed: the finished file has the wrong size or sha256 (then it is deleted).
        FetchError: an HTTP error, every try was cut off, or neither a size nor a sha256 to check against.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    version = dest.with_name(dest.name + ".part.version")  # which file version .part holds (for If-Range)
    total = expected_size
    last_error: BaseException | None = None
    bar = None
    try:
        for attempt in range(1, tries + 1):
            start = part.stat().st_size if part.exists() else 0
            validator = version.read_text(encoding="utf-8").strip() if start and version.is_file() else None
            if total is not None and start == total:
                break
            if total is not None and start > total:  # a .part from another version of the file
                part.unlink()
                start = 0
            try:
                with _open(url, start, timeout, validator) as response:
                    offset, server_total = _total_from(response, start)
                    if total is not None and server_total is not None and server_total != total:
                        raise VerificationFailed(f"{url}: the server says {server_total} bytes, expected {total}")
                    total = total if total is not None else server_total
                    if total is None and expected_sha256 is None:
                        raise FetchError(f"{url}: the server gives no size (no Content-Length) and no sha256 is "
                                         f"known for this file: there is nothing to check the download against, "
                                         f"so it is refused")
                    if offset == 0 and _validator(response):
                        version.write_text(_validator(response), encoding="utf-8")
                    elif offset == 0:
                        version.unlink(missing_ok=True)
                    if bar is None:
                        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1000,
                                   desc=desc or dest.name)
                    else:
                        bar.reset(total=total)
                        bar.update(offset)
                    with open(part, "ab" if offset else "wb") as f:
                        while chunk := response.read(1 << 20):
                            f.write(chunk)
                            bar.update(len(chunk))
                got = part.stat().st_size
                if total is None or got == total:
                    break
                last_error = FetchError(f"connection closed after {got} of {total} bytes")
            except urllib.error.HTTPError as e:
                if e.code == 416 and start:  # our .part is not a prefix of this file: start over
                    part.unlink()
                    last_error = e
                    continue
                raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from e
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                if _is_unreachable(e) and not part.exists():
                    raise NetworkUnavailable(f"cannot reach {url}: {getattr(e, 'reason', e)}") from e
                last_error = e
            if attempt < tries:
                logger.warning("download of %s interrupted (%s); resuming (try %d of %d)",
                               url, last_error, attempt + 1, tries)
                time.sleep(RETRY_WAIT_S)
        else:
            raise FetchError(f"{url}: download interrupted {tries} times ({last_error}); run the command "
                             f"again to resume from {part}")
    finally:
        if bar is not None:
            bar.close()
    size = part.stat().st_size
    if total is not None and size != total:
        raise VerificationFailed(f"{url}: got {size} bytes, expected {total}; run again to resume")
    digest = sha256_file(part, desc=f"sha256 {dest.name}")
    if expected_sha256 is not None and digest != expected_sha256:
        part.unlink(missing_ok=True)
        version.unlink(missing_ok=True)
        raise VerificationFailed(f"{url}: sha256 {digest}, expected {expected_sha256}: these bytes are not the "
                                 f"file, so they were deleted, not placed")
    os.replace(part, dest)
    version.unlink(missing_ok=True)
    return digest
