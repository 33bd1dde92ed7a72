"""A loopback HTTP server standing in for the Hugging Face Hub and a release host (GitHub, Meta's CDN).

Hub: ``HEAD/GET /{repo_id}/resolve/{revision}/{filename}`` with the headers huggingface_hub reads
(``X-Repo-Commit``, ``ETag``/``X-Linked-Etag`` = the LFS sha256, ``X-Linked-Size``, ``Content-Length``)
and Range support. Release host: ``HEAD/GET /releases/{name}`` with Range, ETag and If-Range support. ``cut_next(path)``
makes the next GET of ``path`` send half the body and drop the connection; ``ignore_range`` makes the
server answer every Range request with the whole file (200), as some hosts do; ``refuse_head`` answers
HEAD on the release host with 403, as signed download URLs do; ``omit_length`` makes the release host send
no Content-Length (the body then ends when the connection closes).
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHosts:
    def __init__(self):
        self.hub: dict[str, bytes] = {}            # "repo_id/filename" -> bytes
        self.hub_sha256: dict[str, str] = {}       # override of the published sha256 (a lying mirror)
        self.releases: dict[str, bytes] = {}       # "name" -> bytes
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.authorization: list[str | None] = []  # the Authorization header of each request
        self.statuses: list[tuple[str, int]] = []  # (path, status) of each GET that found its file
        self.cut: set[str] = set()
        self.ignore_range = False
        self.refuse_head = False  # release host: 403 to HEAD, like signed redirect URLs that allow GET only
        self.omit_length = False  # release host: no Content-Length header (body delimited by closing)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> "FakeHosts":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def release_url(self, name: str) -> str:
        return f"{self.url}/releases/{name}"

    def cut_next(self, path: str) -> None:
        self.cut.add(path)

    def gets(self, fragment: str = "") -> list[tuple[str, str, str | None]]:
        return [entry for entry in self.log if entry[0] == "GET" and fragment in entry[1]]

    def _lookup(self, path: str):
        """(bytes, extra headers) for a path, or None."""
        match = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", path)
        if match:
            repo_id, revision, filename = match.groups()
            key = f"{repo_id}/{filename}"
            if key not in self.hub or revision not in ("main", COMMIT):
                return None
            data = self.hub[key]
            sha = self.hub_sha256.get(key, hashlib.sha256(data).hexdigest())
            return data, {"X-Repo-Commit": COMMIT, "ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"',
                          "X-Linked-Size": str(len(data)), "Accept-Ranges": "bytes"}
        match = re.fullmatch(r"/releases/(.+)", path)
        if match and match.group(1) in self.releases:
            data = self.releases[match.group(1)]
            return data, {"Accept-Ranges": "bytes", "ETag": f'"{hashlib.sha256(data).hexdigest()[:16]}"'}
        return None

    def _handler(self):
        hosts = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10  # a stuck client never holds a thread for long

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                path = self.path.split("?", 1)[0]
                requested_range = self.headers.get("Range")
                with hosts._lock:
                    hosts.log.append((self.command, path, requested_range))
                    hosts.authorization.append(self.headers.get("Authorization"))
                    found = hosts._lookup(path)
                    cut = body and path in hosts.cut
                    if cut:
                        hosts.cut.discard(path)
                if not body and hosts.refuse_head and path.startswith("/releases/"):
                    self.send_response(403)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if found is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data, headers = found
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", requested_range or "")
                if_range = self.headers.get("If-Range")
                if match and not hosts.ignore_range and if_range in (None, headers.get("ETag")):
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    if body:
                        hosts.statuses.append((path, 206))
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                    if body:
                        hosts.statuses.append((path, 200))
                for name, value in headers.items():
                    self.send_header(name, value)
                if hosts.omit_length and path.startswith("/releases/"):
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if not body:
                    return
                payload = data[start:]
                if cut:  # half the body, then drop the connection
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        return Handler
