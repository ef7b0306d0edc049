"""Plain HTTP on the WebSocket port: the web client's files, /healthz and /metrics.

The connection (`server.wsconn`) calls the routes with every request; returning None lets
a WebSocket upgrade at /ws proceed, anything else is answered here.
"""
from __future__ import annotations

import mimetypes
from pathlib import Path
from urllib.parse import unquote

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Response

import clients

WEB_ROOT = Path(clients.__file__).resolve().parent / "web"

PLACEHOLDER = """<!doctype html>
<html><head><meta charset="utf-8"><title>Worldsmith shard {name}</title></head>
<body><h1>Worldsmith shard {name}</h1>
<p>This shard is running. The web client is not installed here yet;
connect a client to <code>{ws}</code> (subprotocol <code>world.v1</code>).</p>
</body></html>
"""

_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
          ".html": "text/html", ".json": "application/json", ".wasm": "application/wasm",
          ".svg": "image/svg+xml", ".png": "image/png", ".glb": "model/gltf-binary"}


def _response(status: int, reason: str, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-cache"), ("Connection", "close")])
    return Response(status, reason, headers, body)


def _text(status: int, reason: str, text: str) -> Response:
    return _response(status, reason, text.encode(), "text/plain; charset=utf-8")


def resolve_static(root: Path, url_path: str) -> Path | None:
    """The file under `root` that `url_path` names, or None (missing, hidden or outside)."""
    rel = unquote(url_path).lstrip("/") or "index.html"
    if "\\" in rel or "\x00" in rel or any(part.startswith(".") for part in rel.split("/")):
        return None
    try:
        target = (root / rel).resolve()
    except (OSError, ValueError):
        return None
    if not target.is_relative_to(root.resolve()):
        return None
    if target.is_dir():
        target = target / "index.html"
    return target if target.is_file() else None


class HttpRoutes:
    """Answers the shard's plain HTTP requests."""

    def __init__(self, shard, web_root: Path = WEB_ROOT) -> None:
        self.shard = shard
        self.web_root = web_root

    def __call__(self, conn, request) -> Response | None:
        """The response to `request`, or None to accept the WebSocket upgrade."""
        path = request.path.split("?", 1)[0]
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if path == "/ws":
            if upgrade:
                s = self.shard.settings
                if self.shard.connections >= s.max_players + s.max_pending:
                    # Refused before the handshake: a connection flood costs no tasks.
                    return _text(503, "Service Unavailable", "the shard is full\n")
                return None  # the connection counts itself once the upgrade is accepted
            return _text(426, "Upgrade Required", "WebSocket endpoint: connect with world.v1\n")
        if upgrade:
            return _text(404, "Not Found", "the WebSocket endpoint is /ws\n")
        if path == "/healthz":
            body = {"ok": True, "shard": self.shard.settings.shard, "players": len(self.shard.sessions),
                    "tick": self.shard.tick_no}
            return _response(200, "OK", orjson.dumps(body), "application/json")
        if path == "/metrics":
            text = self.shard.metrics.render() + self.shard.npcs.metrics_text()
            return _response(200, "OK", text.encode(),
                             "text/plain; version=0.0.4; charset=utf-8")
        return self.static(path)

    def static(self, path: str) -> Response:
        """A file of the web client, or the placeholder page when none is installed."""
        target = resolve_static(self.web_root, path)
        if target is None:
            if path in ("/", "/index.html"):
                page = PLACEHOLDER.format(name=self.shard.settings.shard, ws=self.shard.ws_url)
                return _response(200, "OK", page.encode(), "text/html; charset=utf-8")
            return _text(404, "Not Found", "not found\n")
        try:
            body = target.read_bytes()
        except OSError:
            return _text(404, "Not Found", "not found\n")
        ctype = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") and "charset" not in ctype:
            ctype += "; charset=utf-8"
        return _response(200, "OK", body, ctype)
