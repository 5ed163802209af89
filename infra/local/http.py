"""What the local services' HTTP handlers share: the bearer token of a request, a JSON
answer with its length (keep-alive connections need it), every method through `_handle`."""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler


def bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def snake(name: str) -> str:
    """A discovery document's camelCase field as the client libraries spell it."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def discovery(api: str) -> dict:
    """The v1 discovery document of `api` (compute, batch, ...) shipped with
    google-api-python-client: what a request may hold."""
    from pathlib import Path

    import googleapiclient

    path = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / f"{api}.v1.json"
    return json.loads(path.read_text())


class JsonHandler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        raise NotImplementedError

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_PUT(self):
        self._handle("PUT")

    def log_message(self, format, *args):
        pass
