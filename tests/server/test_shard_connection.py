"""The lean connection layer (server.wsconn, server.listener): no task per idle player,
message order across awaiting jobs, fragmented messages, keepalive, invalid UTF-8, and
parked cores (server.wscore): a quiet player's connection behaves the same without one."""
from __future__ import annotations

import asyncio
import base64
import gc
import os
import weakref

import orjson
import pytest
from websockets.protocol import State

from server.wsconn import ShardConnection
from server.wscore import PARKED
from tests.server.wire import WAIT_S, SUBPROTOCOL, close_all, join, unique_name


async def test_idle_players_cost_no_task_and_no_instance_dict(shard):
    """Twenty welcomed, silent players add no asyncio task, and each connection object has slots only."""
    players = [await join(shard.ws_url) for _ in range(20)]
    # The test's clients run tasks of their own, so look only at the shard's side.
    listener = shard.listener
    assert len(listener.conns) == 20 and not listener._tasks and not listener.waiting
    server_tasks = [t for t in asyncio.all_tasks() if "wsconn" in repr(t.get_coro())]
    assert server_tasks == []
    conn = next(iter(listener.conns))
    assert not hasattr(conn, "__dict__")
    await close_all(*players)


async def test_messages_after_an_awaiting_place_keep_their_order(shard):
    """Two places then a ping sent back to back: the pong comes only after both objects exist."""
    w = await join(shard.ws_url)
    name = w.welcome["name"]
    await w.send({"t": "place", "shape": "box", "x": 1.0, "y": 0.0, "z": 1.0, "label": "a1"})
    await w.send({"t": "place", "shape": "box", "x": 2.0, "y": 0.0, "z": 2.0, "label": "a2"})
    await w.send({"t": "ping", "ct": "after"})
    await w.recv_until(lambda m: m.get("t") == "pong" and m.get("ct") == "after")
    labels = {(e.props or {}).get("label") for e in shard.world.entities()
              if e.kind == "object" and (e.props or {}).get("owner") == name}
    assert {"a1", "a2"} <= labels
    await close_all(w)


async def test_a_fragmented_hello_is_assembled(shard):
    """A hello split over three WebSocket fragments is welcomed like a whole one."""
    from websockets.asyncio.client import connect

    import orjson
    async with connect(shard.ws_url, subprotocols=[SUBPROTOCOL], proxy=None) as ws:
        text = orjson.dumps({"t": "hello", "v": 1, "name": unique_name("frag")}).decode()
        await ws.send([text[:5], text[5:12], text[12:]])
        welcome = orjson.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        assert welcome["t"] == "welcome"


async def _raw_upgrade(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made WebSocket handshake on a raw socket (a client that never answers pings)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def _masked_text(payload: bytes, opcode: int = 0x1) -> bytes:
    """One client frame (FIN set, masked), payload under 126 bytes."""
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_keepalive_pings_the_silent_then_closes_1011(shard):
    """The sweep pings a client silent for one round and closes it 1011 when it stays silent, while a ponging client stays."""
    listener = shard.listener
    alive = await join(shard.ws_url)  # websockets' client answers pings
    reader, writer = await _raw_upgrade(shard.port)
    listener._keepalive()  # both were heard (handshake, hello): marks reset
    listener._keepalive()  # silent since: each gets a ping
    ping = await asyncio.wait_for(reader.readexactly(2), WAIT_S)
    assert ping == b"\x89\x00"  # the raw client never answers it
    await alive.send({"t": "ping", "ct": 1})  # barrier: alive's pong to the shard came before this
    await alive.recv_until(lambda m: m.get("t") == "pong")
    listener._keepalive()
    close = await asyncio.wait_for(reader.readexactly(4), WAIT_S)
    assert close[0] == 0x88 and close[2:4] == (1011).to_bytes(2, "big")
    await alive.send({"t": "ping", "ct": 2})
    assert (await alive.recv_until(lambda m: m.get("t") == "pong"))["ct"] == 2
    writer.close()
    await close_all(alive)


async def test_invalid_utf8_text_closes_1007_and_others_continue(shard):
    """A text frame that is not UTF-8 fails that connection with 1007; another player is unaffected."""
    other = await join(shard.ws_url)
    reader, writer = await _raw_upgrade(shard.port)
    writer.write(_masked_text(b'{"t":"hello","v":1,"name":"\xff"}'))
    close = await asyncio.wait_for(reader.readexactly(4), WAIT_S)
    assert close[0] == 0x88 and close[2:4] == (1007).to_bytes(2, "big")
    assert await asyncio.wait_for(reader.read(), WAIT_S) is not None  # the shard ends the socket
    await other.send({"t": "ping", "ct": 3})
    assert (await other.recv_until(lambda m: m.get("t") == "pong"))["ct"] == 3
    writer.close()
    await close_all(other)


async def test_shutdown_closes_every_player_1001_and_leaves_nobody_online(start_shard):
    """Shutting down while players are online closes each 1001 and leaves nobody in the world."""
    async with start_shard() as shard:
        players = [await join(shard.ws_url) for _ in range(3)]
        listener = shard.listener
    codes = [await p.closed() for p in players]
    assert all(code == 1001 for code, _ in codes)
    assert not shard.sessions.online and not listener.conns



async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""
    b0, b1 = await asyncio.wait_for(reader.readexactly(2), WAIT_S)
    n = b1 & 0x7F
    if n >= 126:
        n = int.from_bytes(await reader.readexactly(2 if n == 126 else 8), "big")
    return b0 & 0x0F, await asyncio.wait_for(reader.readexactly(n), WAIT_S)


async def test_frames_sent_with_the_upgrade_request_are_handled_in_order(shard):
    """A hello pipelined with the upgrade request, then a ping cut mid-frame, get welcome then pong."""
    import orjson

    reader, writer = await asyncio.open_connection("127.0.0.1", shard.port)
    key = base64.b64encode(os.urandom(16)).decode()
    hello = _masked_text(orjson.dumps({"t": "hello", "v": 1, "name": unique_name("pipe")}))
    ping = _masked_text(orjson.dumps({"t": "ping", "ct": 7}))
    writer.write((f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n").encode() + hello + ping[:3])
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
    assert head.startswith(b"HTTP/1.1 101"), head
    opcode, payload = await _read_frame(reader)
    assert opcode == 0x1 and orjson.loads(payload)["t"] == "welcome"
    writer.write(ping[3:])
    while True:
        opcode, payload = await _read_frame(reader)
        msg = orjson.loads(payload)
        if msg["t"] == "pong":
            break
    assert msg["ct"] == 7
    writer.close()


async def test_frames_during_admission_wait_and_keep_their_order(shard):
    """Thirty pings sent right behind the hello (more than the backlog holds) are all answered, after the welcome, in order."""
    import orjson
    from websockets.asyncio.client import connect

    async with connect(shard.ws_url, subprotocols=[SUBPROTOCOL], proxy=None) as ws:
        await ws.send(orjson.dumps({"t": "hello", "v": 1, "name": unique_name("burst")}).decode())
        for i in range(30):
            await ws.send(orjson.dumps({"t": "ping", "ct": i}).decode())
        got = []
        while len(got) < 30:
            msg = orjson.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
            if msg["t"] == "welcome":
                assert got == []
            elif msg["t"] == "pong":
                got.append(msg["ct"])
        assert got == list(range(30))


async def test_a_failing_route_answers_500_and_the_shard_keeps_serving(shard):
    """An HTTP route that raises gets that request a 500; the next request and players are served."""
    routes = shard.listener.routes

    def broken(conn, request):
        if request.path == "/boom":
            raise RuntimeError("a bug in a route")
        return routes(conn, request)

    shard.listener.routes = broken
    reader, writer = await asyncio.open_connection("127.0.0.1", shard.port)
    writer.write(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.read(), WAIT_S)
    assert head.startswith(b"HTTP/1.1 500"), head
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", shard.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), WAIT_S)).startswith(b"HTTP/1.1 200")
    writer.close()
    w = await join(shard.ws_url)
    await close_all(w)


def _masked(payload: bytes, first: int, mask: bytes | None = None) -> bytes:
    """One masked client frame with first byte `first` (FIN/opcode), any payload under 64 KiB."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return bytes([first]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_mixed_frames_in_one_read_are_handled_in_order(shard):
    """Whole text frames (short and 16-bit length), a control ping, a frame cut across writes and a
    fragmented message, read together after admission, are each answered once, messages in order."""
    import orjson

    reader, writer = await _raw_upgrade(shard.port)
    writer.write(_masked(orjson.dumps({"t": "hello", "v": 1, "name": unique_name("mix")}), 0x81))
    assert orjson.loads((await _read_frame(reader))[1])["t"] == "welcome"

    def ping(ct) -> bytes:
        return orjson.dumps({"t": "ping", "ct": ct})

    long_ct = "x" * 200
    fragmented = ping(4)
    cut = _masked(ping(5), 0x81)
    writer.write(_masked(ping(1), 0x81) + _masked(ping(long_ct), 0x81) + _masked(b"hi", 0x89)
                 + _masked(ping(3), 0x81) + cut[:4])
    await writer.drain()
    writer.write(cut[4:] + _masked(fragmented[:6], 0x01) + _masked(fragmented[6:], 0x80)
                 + _masked(ping(6), 0x81))
    got = []
    while len(got) < 7:
        opcode, payload = await _read_frame(reader)
        if opcode == 0xA:
            got.append(("pong frame", payload))
        elif opcode == 0x1 and (msg := orjson.loads(payload))["t"] == "pong":
            got.append(msg["ct"])
    # The core's control replies go out when the read is done, after the messages' replies.
    assert [g for g in got if not isinstance(g, tuple)] == [1, long_ct, 3, 5, 4, 6]
    assert ("pong frame", b"hi") in got
    writer.close()


async def test_a_frame_cut_after_its_mask_goes_to_the_core_even_if_its_rest_looks_like_a_frame(shard):
    """Once the core holds part of a frame, the next read goes to the core, not the connection's
    own whole-frame path, even when the rest's first bytes read as a masked text frame's header."""
    import orjson

    reader, writer = await _raw_upgrade(shard.port)
    writer.write(_masked(orjson.dumps({"t": "hello", "v": 1, "name": unique_name("cut")}), 0x81))
    assert orjson.loads((await _read_frame(reader))[1])["t"] == "welcome"
    payload = orjson.dumps({"t": "ping", "ct": 5})
    # Masked, the payload starts 0x81 0x82: "a whole masked text frame of 2 bytes".
    cut = _masked(payload, 0x81, bytes([payload[0] ^ 0x81, payload[1] ^ 0x82, 7, 9]))
    assert cut[6:8] == b"\x81\x82"
    writer.write(_masked(orjson.dumps({"t": "ping", "ct": 1}), 0x81) + cut[:6])
    await writer.drain()

    async def pong() -> dict:
        while True:
            opcode, got = await _read_frame(reader)
            if opcode == 0x1 and (msg := orjson.loads(got))["t"] != "state":
                return msg

    assert (await pong())["ct"] == 1
    writer.write(cut[6:])
    assert (await pong())["ct"] == 5
    writer.close()


# -- parked cores: an admitted, quiet player's connection holds no websockets core ----------

async def _frames_until_pong(reader: asyncio.StreamReader, ct) -> list[tuple[int, bytes]]:
    """Read until the `pong` message for `ct`; return the frames before it, `state`s left out."""
    seen = []
    while True:
        opcode, payload = await _read_frame(reader)
        if opcode == 0x1:
            msg = orjson.loads(payload)
            if msg["t"] == "pong" and msg.get("ct") == ct:
                return seen
            if msg["t"] == "state":
                continue
        seen.append((opcode, payload))


async def _barrier(reader, writer, ct) -> list[tuple[int, bytes]]:
    """Ping (the message) and wait for its pong: the shard has handled all sent before."""
    writer.write(_masked(orjson.dumps({"t": "ping", "ct": ct}), 0x81))
    return await _frames_until_pong(reader, ct)


async def _parked_player(shard) -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                         ShardConnection]:
    """A raw-socket player, admitted, whose connection has parked its core since."""
    reader, writer = await _raw_upgrade(shard.port)
    writer.write(_masked(orjson.dumps({"t": "hello", "v": 1, "name": unique_name("park")}), 0x81))
    opcode, payload = await _read_frame(reader)
    welcome = orjson.loads(payload)
    assert opcode == 0x1 and welcome["t"] == "welcome", welcome
    conn = shard.sessions.online[welcome["you"]].conn
    await _barrier(reader, writer, "settled")
    assert conn.protocol is PARKED and conn.protocol.state is State.OPEN
    return reader, writer, conn


async def test_an_admitted_quiet_player_holds_no_websocket_core(shard):
    """Once a player's hello is answered and its traffic handled, its connection's core is gone
    (freed, not just unreferenced by the connection) and writes to it still go out."""
    reader, writer = await _raw_upgrade(shard.port)
    conn = next(iter(shard.listener.conns))
    core = weakref.ref(conn.protocol)
    writer.write(_masked(orjson.dumps({"t": "hello", "v": 1, "name": unique_name("q")}), 0x81))
    assert orjson.loads((await _read_frame(reader))[1])["t"] == "welcome"
    await _barrier(reader, writer, 1)
    gc.collect()
    assert conn.protocol is PARKED and core() is None
    assert shard.write(conn.session, b'{"t":"hi"}', "hi")  # a parked connection is OPEN
    while orjson.loads((await _read_frame(reader))[1])["t"] != "hi":
        pass
    writer.close()


async def test_a_parked_player_gets_each_ping_answered_with_its_payload(shard):
    """Client pings (empty, 125 bytes) get pongs with their payloads, in order, and the
    connection stays parked."""
    reader, writer, conn = await _parked_player(shard)
    writer.write(_masked(b"", 0x89) + _masked(b"p" * 125, 0x89))
    assert await _barrier(reader, writer, 2) == [(0xA, b""), (0xA, b"p" * 125)]
    assert conn.protocol is PARKED
    writer.close()


async def test_a_parked_player_that_answers_keepalive_pings_stays(shard):
    """The sweep's ping reaches a parked player as an empty ping frame; answered with a pong,
    the player is pinged again next round rather than closed, and stays parked."""
    listener = shard.listener
    reader, writer, conn = await _parked_player(shard)
    for round_ in range(2):
        listener._keepalive()  # heard since the last round: marks reset
        listener._keepalive()  # silent since: pinged
        assert await _barrier(reader, writer, f"ping{round_}") == [(0x9, b"")]
        writer.write(_masked(b"", 0x8A))
        await _barrier(reader, writer, f"pong{round_}")
        assert conn.protocol is PARKED and not conn.closing
    listener._keepalive()
    listener._keepalive()
    assert await _barrier(reader, writer, "end") == [(0x9, b"")]
    writer.close()


async def test_a_parked_player_can_send_a_fragmented_message(shard):
    """A message in three fragments, and a ping between two of them, are handled as by a core
    that never parked; the connection parks again after."""
    reader, writer, conn = await _parked_player(shard)
    text = orjson.dumps({"t": "ping", "ct": "frag"})
    writer.write(_masked(text[:4], 0x01) + _masked(text[4:9], 0x00) + _masked(b"mid", 0x89))
    await writer.drain()
    writer.write(_masked(text[9:], 0x80))
    # The core's pong goes out when the read is done: before or after the message's reply.
    seen = await _frames_until_pong(reader, "frag") + await _barrier(reader, writer, 3)
    assert seen == [(0xA, b"mid")]
    assert conn.protocol is PARKED
    writer.close()


async def test_a_parked_player_gets_error_replies_and_stays_parked(shard):
    """Messages the shard refuses (unknown type, bad JSON) get their error replies, and the
    connection stays parked."""
    reader, writer, conn = await _parked_player(shard)
    writer.write(_masked(b'{"t":"nope","id":1}', 0x81) + _masked(b"{", 0x81))
    got = [orjson.loads(p) for _, p in await _barrier(reader, writer, 4)]
    assert [(m["t"], m["code"]) for m in got] == [("error", "unknown_type"), ("error", "bad_json")]
    assert conn.protocol is PARKED
    writer.close()


_CLOSE_4100 = (4100).to_bytes(2, "big") + b"bye"


@pytest.mark.parametrize("frame,code,echo", [
    (_masked(_CLOSE_4100, 0x88), 4100, _CLOSE_4100),        # client-initiated: echoed as sent
    (_masked(b"x" * (16 * 1024 + 1), 0x81), 1009, None),     # over max_frame (16 KiB)
    (_masked(b'{"t":"ping","ct":"\xff"}', 0x81), 1007, None),  # not UTF-8
    (_masked(b"p" * 126, 0x89), 1002, None),                  # a control frame over 125 bytes
    (bytes([0x81, 2]) + b"hi", 1002, None),                   # unmasked
], ids=["client-close", "oversize", "invalid-utf8", "long-ping", "unmasked"])
async def test_a_parked_player_is_closed_as_before(shard, frame, code, echo):
    """A close frame or a frame that fails the connection, sent to a parked one, gets the close
    a core gives (a client's close echoed as sent), then the socket ends and the player has left."""
    reader, writer, conn = await _parked_player(shard)
    session = conn.session
    writer.write(frame)
    while (got := await _read_frame(reader))[0] != 0x8:
        assert got[0] == 0x1
    assert int.from_bytes(got[1][:2], "big") == code
    assert echo is None or got[1] == echo
    assert await asyncio.wait_for(reader.read(), WAIT_S) == b""
    assert conn.protocol.state is not State.OPEN and session.pid not in shard.sessions.online
    assert not shard.write(session, b'{"t":"hi"}', "hi")
    writer.close()
