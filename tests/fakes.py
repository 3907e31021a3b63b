"""Test doubles that stand in for the network: a loopback HTTP server that answers Range.

GDAL reads Cloud-Optimized GeoTIFFs over HTTP with `Range: bytes=a-b` requests. The stdlib
`http.server` ignores Range and answers 200 with the whole file, which GDAL rejects for large
files ("Range downloading not supported by this server!"), so this handler answers 206.
"""

import io
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Literal

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass(frozen=True)
class Request:
    """One request the server received, as the request log records it."""

    method: str
    path: str  # the path and query, also of a request made through this server as a proxy
    range: str | None  # the Range header as sent, or None
    host: str | None = None  # the Host header as sent


# What a fault hook answers for a request: None serves it normally, an int answers that HTTP
# status (503, 429, 404, ...) with no body, "drop" closes the connection without a reply,
# "short" serves the first half of the body (with a Content-Length that says so, as a proxy
# that cut it would), "flip" the whole body with 8 bytes in its middle inverted.
Fault = int | Literal["drop", "short", "flip"] | None
FaultHook = Callable[[Request], Fault]


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves a directory, answering Range with 206; every request is logged and offered to
    the fault hook first. Subclasses serve more (an API) by overriding serve_get/serve_post."""

    def __init__(
        self, *args: Any, log: list[Request], fault: FaultHook | None, **kwargs: Any
    ) -> None:
        self._log = log
        self._fault = fault
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log replaces the stderr access log."""

    def parse_request(self) -> bool:
        """A request sent to this server as an HTTP proxy names the whole URL
        (`GET http://host/path HTTP/1.1`): it is served as its path, from this directory."""
        parsed = super().parse_request()
        if parsed and self.path.lower().startswith(("http://", "https://")):
            rest = self.path.split("://", 1)[1]
            self.path = "/" + rest.partition("/")[2]
        return parsed

    def do_GET(self) -> None:
        if self._serve_fault():
            self.serve_get()

    def do_HEAD(self) -> None:
        if self._serve_fault():
            self.serve_head()

    def do_POST(self) -> None:
        if self._serve_fault():
            self.serve_post()

    def serve_get(self) -> None:
        super().do_GET()

    def serve_head(self) -> None:
        super().do_HEAD()

    def serve_post(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED)

    def _serve_fault(self) -> bool:
        """Record the request and apply the fault hook; True when it is to be served."""
        request = Request(
            self.command, self.path, self.headers.get("Range"), self.headers.get("Host")
        )
        self._log.append(request)  # list.append is atomic under the GIL
        fault = self._fault(request) if self._fault is not None else None
        alters = fault in ("short", "flip") and self.command == "GET"
        self._alter: str | None = str(fault) if alters else None
        if fault is None or fault in ("short", "flip"):
            return True
        self.close_connection = True
        if isinstance(fault, int):
            self.send_response(fault)
            self.send_header("Content-Length", "0")
            self.end_headers()
        return False

    def send_head(self) -> BinaryIO | None:
        body = self._send_head()
        how = getattr(self, "_alter", None)
        if body is None or how is None:
            return body
        return io.BytesIO(altered(body.read(), how))  # the headers say the altered length

    def send_header(self, keyword: str, value: str) -> None:
        if keyword == "Content-Length" and getattr(self, "_alter", None) == "short":
            value = str(int(value) // 2)
        super().send_header(keyword, value)

    def _send_head(self) -> BinaryIO | None:
        header = self.headers.get("Range")
        match = _RANGE.fullmatch(header.strip()) if header else None
        path = self.translate_path(self.path)
        if match is None or not os.path.isfile(path):
            # no Range, several ranges or a directory: the stock behaviour (200 or 404)
            return super().send_head()
        size = os.path.getsize(path)
        first, last = match.groups()
        if first:
            start, end = int(first), min(int(last) if last else size - 1, size - 1)
        else:  # suffix range "bytes=-n": the last n bytes
            start, end = max(size - int(last or 0), 0), size - 1
        if start > end or start >= size:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(body)


def altered(data: bytes, how: str) -> bytes:
    """`data` cut to its first half ("short"), or with 8 bytes in its middle inverted."""
    if how == "short":
        return data[: len(data) // 2]
    flipped = bytearray(data)
    for i in range(max(0, len(data) // 2 - 4), min(len(data), len(data) // 2 + 4)):
        flipped[i] ^= 0xFF
    return bytes(flipped)


@contextmanager
def serve_directory(
    root: Path,
    *,
    log: list[Request] | None = None,
    fault: FaultHook | None = None,
    handler_class: type[RangeHandler] = RangeHandler,
    **handler_kwargs: Any,
) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 (a free port) and yield its base URL, "http://127.0.0.1:<port>".

    Every request is appended to `log` when one is given. `fault`, when given, is asked about
    every request before it is served and may answer an HTTP status or drop the connection.
    `handler_class` (a RangeHandler) is built with `handler_kwargs` besides.
    """
    handler = partial(
        handler_class,
        directory=str(root),
        log=log if log is not None else [],
        fault=fault,
        **handler_kwargs,
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="serve_directory", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
