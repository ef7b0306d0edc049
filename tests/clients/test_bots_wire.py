"""The bots' own parts: the lean WebSocket codec and the ground-truth checks (no shard needed)."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from clients.bots import wire
from clients.bots.settings import BotSettings
from clients.bots.swarm import Swarm
from clients.bots.truth import Truth


class Recorder:
    """A listener that keeps what the connection hands it."""

    def __init__(self) -> None:
        self.texts: list[bytes] = []
        self.closed: list[int] = []
        self.got = asyncio.Event()

    def on_text(self, payload: bytes, now: float) -> None:
        self.texts.append(payload)
        self.got.set()

    def on_close(self, code: int, why: str) -> None:
        self.closed.append(code)
        self.got.set()


class WriteLog(asyncio.Transport):
    """Stands in for the socket under the codec: keeps the bytes written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """An unmasked frame as a server sends it."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return bytes((b0, 126)) + n.to_bytes(2, "big") + payload
    return bytes((b0, 127)) + n.to_bytes(8, "big") + payload


@pytest.mark.parametrize("size,head", [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_client_frames_use_the_right_length_encoding(size, head):
    """Client frames carry FIN, the mask bit with a zero key, and the length in 7, 16 or 64 bits."""
    frame = wire.encode_frame(wire.OP_TEXT, b"x" * size)
    assert frame[0] == 0x81 and frame[1] & 0x80
    assert len(frame) == head + 4 + size
    assert frame[head:head + 4] == b"\x00\x00\x00\x00"
    n = frame[1] & 0x7F
    assert (n if head == 2 else int.from_bytes(frame[2:head], "big")) == size


async def test_parser_handles_frames_split_at_every_byte():
    """Frames fed one byte at a time come out whole and in order; pings get pongs; close is reported."""
    listener = Recorder()
    conn = wire.WsConnection(listener, "h", 1, "/ws", wire.Counters())
    transport = WriteLog()
    conn.transport, conn.open = transport, True
    conn.opened.set_result(conn)
    msgs = [b'{"t":"state","ack":1}', b"y" * 300, b"z" * 70000]
    stream = b"".join(server_frame(wire.OP_TEXT, m) for m in msgs)
    stream += server_frame(wire.OP_TEXT, b"part1-", fin=False) + server_frame(wire.OP_CONT, b"part2")
    stream += server_frame(wire.OP_PING, b"hi") + server_frame(wire.OP_CLOSE, (1001).to_bytes(2, "big"))
    for i in range(len(stream)):
        conn.data_received(stream[i:i + 1])
    assert listener.texts == msgs + [b"part1-part2"]
    assert conn.counters.msgs_in == 4
    assert wire.encode_frame(wire.OP_PONG, b"hi") in transport.written
    assert transport.written.endswith(wire.encode_frame(wire.OP_CLOSE, (1001).to_bytes(2, "big")))
    conn.connection_lost(None)
    assert listener.closed == [1001]


async def test_real_websockets_server_accepts_our_frames_and_we_read_its_frames():
    """Against the websockets library's server: handshake with world.v1, large frames both ways."""
    from websockets.asyncio.server import serve

    async def handler(ws):
        for size in (10, 300, 70000):
            await ws.send(orjson.dumps({"t": "x", "pad": "p" * size}).decode())
        got = await ws.recv()
        await ws.send(orjson.dumps({"t": "len", "n": len(got)}).decode())
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, subprotocols=["world.v1"], max_size=2 ** 20) as server:
        port = server.sockets[0].getsockname()[1]
        listener = Recorder()
        conn = await wire.connect(listener, "127.0.0.1", port, "/ws", wire.Counters(), timeout=5)
        big = b"q" * 100000
        assert conn.send_text(big)
        while len(listener.texts) < 4:
            listener.got.clear()
            await asyncio.wait_for(listener.got.wait(), 5)
        sizes = [len(orjson.loads(t)["pad"]) for t in listener.texts[:3]]
        assert sizes == [10, 300, 70000]
        assert orjson.loads(listener.texts[3]) == {"t": "len", "n": len(big)}
        conn.close(1000)
        while not listener.closed:
            listener.got.clear()
            await asyncio.wait_for(listener.got.wait(), 5)
    assert listener.closed == [1000]


async def test_handshake_rejects_a_plain_http_answer():
    """A server that answers HTTP 200 instead of 101 raises HandshakeError, not a hang."""

    async def http(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()  # until the bot drops the connection
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(wire.HandshakeError, match="status"):
            await wire.connect(Recorder(), "127.0.0.1", port, "/ws", wire.Counters(), timeout=5)


def placed_swarm(positions: list[tuple[float, float]]) -> Swarm:
    """A swarm whose bots are welcomed long ago and stand at `positions` (no network)."""
    swarm = Swarm(BotSettings(url="ws://127.0.0.1:9/ws", bots=len(positions), observers=len(positions),
                              progress=False))
    for i, (b, (x, z)) in enumerate(zip(swarm.bots, positions)):
        b.id, b.x, b.z = f"p:{i}", x, z
        b.welcomed = b.placed = True
        b.t_welcome = -100.0
        swarm.by_id[b.id] = b
    return swarm


def walk(bot, seq: int, t: float) -> None:
    """Record that `bot` sent move `seq` to its current pose at time `t`."""
    bot.seq = seq
    bot._remember((round(bot.x * 100), round(bot.z * 100)), seq, t)


@pytest.mark.parametrize("delivered,observer_leaves,later_acked,missed,undecided", [
    (True, False, True, 0, 0), (False, False, True, 1, 0), (False, True, True, 0, 0), (False, False, False, 0, 1)])
def test_probe_counts_a_move_never_seen_as_missed(delivered, observer_leaves, later_acked, missed, undecided):
    """A probed move not seen by an observer inside the aoi is missed; seen, walked away, or unprovable is not."""
    swarm = placed_swarm([(0.0, 0.0), (50.0, 0.0), (150.0, 0.0)])
    mover, near, far = swarm.bots
    truth = Truth(aoi=100.0, slack_m=1.0, probe_timeout=1.0)
    walk(mover, 5, t=10.0)
    truth.rebuild(swarm.bots, now=10.0)
    truth.open_probe(mover, now=10.0)
    assert mover.probe.pending == {near.index}  # the far bot is not owed the move
    if delivered:
        near.matched(mover, 5, 10.0, now=10.05)
    if observer_leaves:
        near.x = 500.0
    # Two later moves applied by the shard prove what the observer should have seen by now.
    mover.last_acked = (7, 10.2) if later_acked else (5, 10.0)
    truth.close_probes(swarm.bots, now=11.5, final=not later_acked)
    report = truth.report()["missed_updates"]
    assert report["missed"] == missed and report["undecided"] == undecided
    assert report["probes"] == 1 - undecided
    assert mover.probe is None


def test_view_check_counts_missing_and_extra_entities():
    """An observer's view lacking a bot inside its aoi is incomplete; one holding a far bot has an extra."""
    swarm = placed_swarm([(0.0, 0.0), (50.0, 0.0), (300.0, 0.0)])
    obs, near, far = swarm.bots
    truth = Truth(aoi=100.0, slack_m=1.0, probe_timeout=1.0)
    truth.rebuild(swarm.bots, now=0.0)
    obs.view = {obs.id, far.id}
    truth.check_view(obs, now=0.0)
    cp = truth.report()["completeness"]
    assert cp["expected"] == 1 and cp["missing"] == 1 and cp["extra"] == 1 and cp["ratio"] == 0.0
    obs.view = {obs.id, near.id}
    truth.check_view(obs, now=0.0)
    cp = truth.report()["completeness"]
    assert cp["missing"] == 1 and cp["expected"] == 2 and cp["ratio"] == 0.5


def test_settings_reject_bad_values():
    """Bad URLs, scenarios and rates are ValueErrors naming the problem."""
    with pytest.raises(ValueError, match="url"):
        BotSettings(url="http://127.0.0.1:1/ws")
    with pytest.raises(ValueError, match="scenario"):
        BotSettings(url="ws://127.0.0.1:1/ws", scenario="dance")
    with pytest.raises(ValueError, match="rate"):
        BotSettings(url="ws://127.0.0.1:1/ws", rate=31)
    with pytest.raises(ValueError, match="area"):
        BotSettings(url="ws://127.0.0.1:1/ws", area=(10, 0, 0, 10))
    with pytest.raises(ValueError, match="name_prefix"):
        BotSettings(url="ws://127.0.0.1:1/ws", name_prefix="much-too-long-prefix")


def test_percentiles_are_nearest_rank_and_summaries_in_ms():
    """Percentiles pick the nearest-rank sample; summaries report milliseconds; empty input gives None."""
    from clients.bots.stats import Recorder, percentile, summary_ms

    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile(values, 50) == 0.050 and percentile(values, 99) == 0.099 and percentile(values, 100) == 0.1
    s = summary_ms(values)
    assert (s["n"], s["p50"], s["p99"], s["max"]) == (100, 50.0, 99.0, 100.0)
    assert summary_ms([])["p99"] is None
    rec = Recorder()
    for t, v in ((0.2, 0.01), (0.7, 0.03), (1.5, 0.02)):
        rec.add(v, t)
    assert rec.since(0.5, 2.0) == [0.03, 0.02]
    assert [(b[0], b[3]) for b in rec.series(0.0)] == [(0.0, 2), (1.0, 1)]


def test_ack_only_bot_reads_its_ack_and_learns_a_clamped_pose_without_decoding_the_state():
    """A bot on the fast path times its acks and, when the shard clamped its move, maps the clamped pose to that move."""
    swarm = placed_swarm([(10.0, 10.0)])
    bot = swarm.bots[0]
    bot.observer = bot.full_parse = False
    bot.upd_tag = b'["p:0",'
    bot.seq = 3
    bot.unacked.extend([(2, 1.0), (3, 1.1)])
    bot._remember((1000, 1000), 3, 1.1)
    state = b'{"t":"state","tick":9,"st":1,"ack":3,"upd":[["p:7",1.0,0.0,2.0,0.0],["p:0",9.5,0.0,9.75,0.1]]}'
    bot.on_text(state, now=1.15)
    assert sorted(round(v, 3) for v in swarm.ack.values) == [0.05, 0.15]
    assert not bot.unacked
    assert bot.history[(950, 975)] == (3, 1.1)  # the clamped pose now stands for move 3
    assert swarm.events["clamped_moves"] == 1
