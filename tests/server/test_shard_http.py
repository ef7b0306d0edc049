"""Plain HTTP on the shard's port: web client files, path traversal, /healthz, /metrics."""
from __future__ import annotations

import asyncio

import orjson

from tests.server.wire import close_all, join


async def http_get(shard, path: str) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 GET (the path sent exactly as given, no client-side normalising)."""
    reader, writer = await asyncio.open_connection(shard.host, shard.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {shard.host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def make_web_root(tmp_path):
    """A small web client tree with a nested vendor file, and a secret file beside it."""
    root = tmp_path / "web"
    (root / "node_modules" / "three" / "build").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>client</title>")
    (root / "main.js").write_text("export const x = 1;")
    (root / "node_modules" / "three" / "build" / "three.module.js").write_text("// three")
    (root / ".env").write_text("hidden")
    (tmp_path / "secret.txt").write_text("do not serve")
    return root


async def test_web_client_files_are_served_with_types(start_shard, tmp_path):
    """`/` serves index.html and files under the web root, vendor packages included, with content types."""
    root = make_web_root(tmp_path)
    async with start_shard(web_root=str(root)) as shard:
        status, headers, body = await http_get(shard, "/")
        assert status == 200 and body == b"<!doctype html><title>client</title>"
        assert headers["content-type"].startswith("text/html")
        status, headers, body = await http_get(shard, "/main.js")
        assert status == 200 and headers["content-type"].startswith("text/javascript")
        status, _, body = await http_get(shard, "/node_modules/three/build/three.module.js")
        assert status == 200 and body == b"// three"
        status, _, _ = await http_get(shard, "/missing.js")
        assert status == 404


async def test_path_traversal_and_hidden_files_are_refused(start_shard, tmp_path):
    """Paths escaping the web root (plain or percent-encoded) and dotfiles get 404, never the file."""
    root = make_web_root(tmp_path)
    async with start_shard(web_root=str(root)) as shard:
        for path in ("/../secret.txt", "/node_modules/../../secret.txt", "/%2e%2e/secret.txt",
                     "/.env", "/..%2fsecret.txt", "//etc/passwd"):
            status, _, body = await http_get(shard, path)
            assert status == 404, path
            assert b"do not serve" not in body and b"hidden" not in body


async def test_placeholder_page_when_no_web_client(start_shard, tmp_path):
    """Without clients/web/index.html, `/` is a placeholder naming the WebSocket URL."""
    empty = tmp_path / "nothing"
    empty.mkdir()
    async with start_shard(web_root=str(empty)) as shard:
        status, headers, body = await http_get(shard, "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert shard.ws_url.encode() in body


async def test_healthz_reports_players(shard):
    """/healthz answers 200 with small JSON that counts players online."""
    status, headers, body = await http_get(shard, "/healthz")
    assert status == 200 and headers["content-type"] == "application/json"
    assert orjson.loads(body)["players"] == 0 and len(body) < 200
    w = await join(shard.ws_url)
    _, _, body = await http_get(shard, "/healthz")
    assert orjson.loads(body) | {"tick": 0} == {"ok": True, "shard": "test", "players": 1, "tick": 0}
    await close_all(w)


def metric(text: str, series: str) -> float:
    """The value of one exact series line in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_count_players_messages_bytes_errors_and_ticks(shard):
    """/metrics is Prometheus text whose series move with real traffic: players, messages, bytes, errors, ticks."""
    a = await join(shard.ws_url)
    await a.send({"t": "ping", "ct": 1})
    await a.recv_type("pong")
    await a.send("not json")
    await a.error()
    await a.send({"t": "place", "shape": "box", "x": 1.0, "y": 0.0, "z": 1.0})
    await a.state_where(lambda m: any(e["kind"] == "object" and e["name"] == "box" for e in m.get("enter", ())))
    status, headers, body = await http_get(shard, "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert metric(text, "worldsmith_players_online") == 1
    assert metric(text, "worldsmith_connections_open") == 1
    assert metric(text, 'worldsmith_messages_in_total{type="ping"}') == 1
    assert metric(text, 'worldsmith_bytes_in_total{type="ping"}') > 0
    assert metric(text, 'worldsmith_messages_out_total{type="pong"}') == 1
    assert metric(text, 'worldsmith_messages_out_total{type="state"}') >= 2
    assert metric(text, 'worldsmith_errors_total{code="bad_json"}') == 1
    assert metric(text, "worldsmith_tick_seconds_count") >= 1
    # The place was written before it was acknowledged, through the timed DB path.
    assert metric(text, "worldsmith_db_write_seconds_count") >= 1
    assert "# TYPE worldsmith_send_buffer_drops_total counter" in text
    assert metric(text, 'worldsmith_tick_seconds_bucket{le="+Inf"}') == metric(text, "worldsmith_tick_seconds_count")
    await close_all(a)


async def test_websocket_only_at_ws_path(shard):
    """A plain GET of /ws is told to upgrade (426); the game socket lives only at /ws."""
    status, _, _ = await http_get(shard, "/ws")
    assert status == 426
