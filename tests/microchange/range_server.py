"""A static HTTP server for tests that honours ``Range: bytes=a-b`` (206), as GDAL's /vsicurl needs.

Python's :class:`~http.server.SimpleHTTPRequestHandler` ignores ``Range``. Run as a script in its
own process (``python range_server.py FOLDER``): it prints the port it listens on, on
127.0.0.1, then serves until killed. Not in the test process: GDAL holds the GIL during some
HTTP requests (``rasterio.open``), so a server thread there could never answer.
"""

from __future__ import annotations

import re
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_CHUNK = 64 * 1024


class RangeHandler(SimpleHTTPRequestHandler):
    """Files of one folder (``directory=``), whole (200) or by byte range (206); no listings."""

    _remaining = 0

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no line per request."""

    def send_head(self) -> BinaryIO | None:
        """Headers of a GET or HEAD; the open file positioned at the first byte to send."""
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "File not found")
            return None
        size = path.stat().st_size
        start, end = 0, size - 1
        match = _RANGE.match(self.headers.get("Range", "").strip())
        if match and (match[1] or match[2]):
            if match[1]:
                start = int(match[1])
                end = min(int(match[2]), size - 1) if match[2] else size - 1
            else:  # suffix range: the last N bytes
                start = max(0, size - int(match[2]))
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        fh = path.open("rb")
        fh.seek(start)
        self._remaining = end - start + 1
        return fh

    def copyfile(self, source: Any, outputfile: Any) -> None:
        """Send only the requested range."""
        while self._remaining > 0 and (chunk := source.read(min(_CHUNK, self._remaining))):
            outputfile.write(chunk)
            self._remaining -= len(chunk)


def serve(folder: str) -> None:
    """Serve ``folder`` on 127.0.0.1 (a free port, printed first) until the process is killed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=folder))
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1])
