"""`ui`: a local, read-only web dashboard over the bucket (runs, sweeps, live curves and logs,
reports). Flask on 127.0.0.1 only; no JavaScript build step (the page's scripts and styles
are plain files in static/).

- `make_server(settings, port=0)`: a started-on-demand server bound to 127.0.0.1 (port 0: a
  free one); `.url`, `.serve_forever()`, `.shutdown()`. Tests run it in a thread.
- `serve(settings, port=8765, open_browser=False)`: make the server, print its URL, serve
  until Ctrl-C.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from pathlib import Path

HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def cache_dir(settings) -> Path:
    """Where finished runs are pulled for their reports: $FERRY_HOME/dashboard/cache, else a
    temporary folder."""
    home = getattr(settings, "home", None)
    if home:
        return Path(home) / "dashboard" / "cache"
    return Path(tempfile.gettempdir()) / f"ferry-dashboard-{os.getuid()}"


class Server:
    """The dashboard's HTTP server (werkzeug's threaded server on 127.0.0.1)."""

    def __init__(self, settings, port: int = 0, cache: Path | None = None):
        from werkzeug.serving import make_server as werkzeug_server

        from infra.errors import UsageError
        from jobs.common import bucket_of
        from jobs.dashboard.app import create_app
        from jobs.dashboard.data import Reader

        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise UsageError(f"--port {port!r}: not a port", hint="give 1-65535, or 0 for a free one")
        bucket = bucket_of(settings, create=False)
        hosts: set[str] = set()
        self.app = create_app(Reader(bucket, cache or cache_dir(settings)), settings.bucket, hosts)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # ours to bind: werkzeug exits on a busy port
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise UsageError(f"--port {port}: cannot listen on {HOST}:{port} ({exc.strerror or exc})",
                             hint="pick another port, or --port 0 for a free one") from None
        self._sock = sock
        self.httpd = werkzeug_server(HOST, sock.getsockname()[1], self.app, threaded=True, fd=sock.fileno())
        self.port = sock.getsockname()[1]
        hosts.update({f"{HOST}:{self.port}", f"localhost:{self.port}"})
        self.url = f"http://{HOST}:{self.port}/"
        self._thread: threading.Thread | None = None

    def close(self) -> None:
        self.httpd.server_close()
        self._sock.close()

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start(self) -> "Server":
        """Serve in a background thread (tests)."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ferry-dashboard", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()


def make_server(settings, port: int = 0, cache: Path | None = None) -> Server:
    return Server(settings, port=port, cache=cache)


def serve(settings, port: int = DEFAULT_PORT, open_browser: bool = False, on_ready=print) -> None:
    """Serve the dashboard on 127.0.0.1:PORT until interrupted; `on_ready(url)` once listening."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = make_server(settings, port=port)
    on_ready(server.url)
    if open_browser:
        import webbrowser

        threading.Timer(0.3, webbrowser.open, args=(server.url,)).start()
    try:
        server.serve_forever()
    finally:
        server.close()
