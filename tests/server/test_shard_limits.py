"""Named limits protect everyone else: full shard, slow readers, floods, oversize frames."""
from __future__ import annotations

import asyncio
import socket

import orjson

from websockets.asyncio.client import connect

from tests.server.wire import SUBPROTOCOL, close_all, join, open_wire, refused, unique_name


async def test_full_shard_refuses_with_4013_but_allows_replacement(start_shard):
    """At max_players a new player gets `busy` then 4013, while the online player may still replace its connection."""
    async with start_shard(max_players=1) as shard:
        name = unique_name("full")
        first = await join(shard.ws_url, name, password="pw-full")
        code, _, seen = await refused(shard.ws_url, {"t": "hello", "v": 1, "name": unique_name(), "id": 7})
        assert code == 4013
        assert seen and seen[0]["t"] == "error" and seen[0]["code"] == "busy" and seen[0]["re"] == 7
        again = await join(shard.ws_url, name, password="pw-full")
        assert again.you == first.you
        assert (await first.closed())[0] == 4002
        await close_all(again)


async def test_client_that_never_reads_is_dropped_without_stalling_others(start_shard):
    """A client that stops reading is skipped, keeps nobody waiting meanwhile, and is dropped after stuck_close_s."""
    async with start_shard(send_buffer_limit=64 * 1024, stuck_close_s=1.0, max_chat=4000,
                           chat_lines=10_000, misc_rate=1e6, misc_burst=1e6) as shard:
        stuck_name = unique_name("stuck")
        stuck_ws = await slow_reader(shard, stuck_name)
        talker = await join(shard.ws_url)
        stuck_id = next(e["id"] for e in talker.first_state["enter"] if e["name"] == stuck_name)
        # Phase 1: the talker's lines fill the stuck client's buffers (kernel first, ~MBs).
        for i in range(2000):
            await talker.send({"t": "chat", "text": "x" * 4000, "id": i})
            await talker.recv_type("chat", re=i)
            if shard.metrics.send_drops.get() >= 1:
                break
        assert shard.metrics.send_drops.get() >= 1, "the stuck client's state was never skipped"
        # Phase 2: while the stuck client is over the limit, the talker is served at once.
        loop = asyncio.get_running_loop()
        served_while_stuck = 0
        deadline = loop.time() + 15
        while shard.metrics.stuck_drops.get() == 0 and loop.time() < deadline:
            await talker.send({"t": "ping", "ct": served_while_stuck})
            await talker.recv_type("pong", ct=served_while_stuck)
            served_while_stuck += 1
        assert shard.metrics.stuck_drops.get() == 1, "the stuck client was never dropped"
        assert served_while_stuck >= 5, "the talker was kept waiting while the other was stuck"
        # Phase 3: the dropped player left the world; the talker is told and still served.
        await talker.send({"t": "move", "seq": 1, "x": 0.5, "y": 0.0, "z": 6.0, "yaw": 0.0})
        await talker.state_where(lambda m: m["ack"] == 1)
        if not any(stuck_id in m.get("leave", ()) for m in talker.seen if m["t"] == "state"):
            await talker.state_where(lambda m: stuck_id in m.get("leave", ()))
        assert list(shard.sessions.online) == [talker.you]
        await close_all(talker)
        stuck_ws.transport.abort()


async def slow_reader(shard, name: str):
    """A client that reads nothing until told: tiny receive buffer, one frame of client queue."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (shard.host, shard.port))
    ws = await connect(shard.ws_url, sock=sock, subprotocols=[SUBPROTOCOL], max_queue=1)
    await ws.send('{"t":"hello","v":1,"name":"%s"}' % name)
    return ws


async def test_stale_client_gets_a_full_view_when_it_drains(start_shard):
    """A client skipped for a full send buffer later gets one state entering its whole view and leaving what went meanwhile."""
    async with start_shard(send_buffer_limit=64 * 1024, send_buffer_max=64 * 1024 * 1024,
                           stuck_close_s=60, max_chat=4000, chat_lines=10_000) as shard:
        slow = await slow_reader(shard, unique_name("slow"))
        talker = await join(shard.ws_url)
        leaver = await join(shard.ws_url)
        for i in range(2000):
            await talker.send({"t": "chat", "text": "z" * 4000, "id": i})
            await talker.recv_type("chat", re=i)
            if shard.metrics.send_drops.get() >= 1:
                break
        assert shard.metrics.send_drops.get() >= 1, "the slow client never went stale"
        await close_all(leaver)
        await talker.state_where(lambda m: leaver.you in m.get("leave", ()))
        joiner = await join(shard.ws_url)
        # Now read: everything queued drains, then the refresh arrives.
        async def refresh():
            while True:
                msg = orjson.loads(await slow.recv())
                if msg["t"] == "state" and joiner.you in {e["id"] for e in msg.get("enter", ())}:
                    return msg
        state = await asyncio.wait_for(refresh(), 20)
        entered = {e["id"] for e in state["enter"]}
        assert {talker.you, joiner.you} <= entered and "n:guide" in entered
        assert state.get("leave") == [leaver.you]
        assert shard.metrics.stuck_drops.get() == 0
        await close_all(talker, joiner)
        await slow.close()


async def test_flood_gets_rate_limited_then_4008_while_others_are_served(start_shard):
    """A move flood gets `rate_limited` errors, then 4008; another player's pings are answered throughout."""
    async with start_shard(abuse_burst=40, abuse_rate=5) as shard:
        flooder = await join(shard.ws_url)
        bystander = await join(shard.ws_url)
        for seq in range(1, 301):
            await flooder.send({"t": "move", "seq": seq, "x": 0.0, "y": 0.0, "z": 6.0})
        code, _ = await flooder.closed(timeout=5)
        assert code == 4008
        codes = [m["code"] for m in flooder.seen if m["t"] == "error"]
        assert codes and set(codes) == {"rate_limited"}
        assert len(codes) <= 300 - 30, "moves within the burst were not rate limited"
        await bystander.send({"t": "ping", "ct": "still here"})
        assert (await bystander.recv_type("pong"))["ct"] == "still here"
        if not any(flooder.you in m.get("leave", ()) for m in bystander.seen if m["t"] == "state"):
            await bystander.state_where(lambda m: flooder.you in m.get("leave", ()))
        await close_all(bystander)


async def test_bad_input_flood_closes_4008_and_changes_nothing(start_shard):
    """Malformed frames each get an error and change nothing; sustained, they close 4008 and other players see no effect."""
    async with start_shard(abuse_burst=20, abuse_rate=1) as shard:
        objects_before = sum(1 for e in shard.world.entities() if e.kind == "object")
        bad = await join(shard.ws_url)
        other = await join(shard.ws_url)
        junk = ["{", "[]", '{"t":"nope"}', '{"t":"place","shape":"box","x":"a","y":0,"z":0}',
                '{"t":"place","shape":"box","x":0,"y":0,"z":0,"color":"red"}']
        for i in range(60):
            await bad.send(junk[i % len(junk)])
        assert (await bad.closed(timeout=5))[0] == 4008
        assert {m["code"] for m in bad.seen if m["t"] == "error"} == {"bad_json", "unknown_type", "invalid"}
        assert sum(1 for e in shard.world.entities() if e.kind == "object") == objects_before
        await other.send({"t": "who", "id": "w"})
        who = await other.recv_type("who")
        assert who["total"] == 1 and who["re"] == "w"
        await close_all(other)


async def test_oversize_frame_closes_1009_and_others_continue(start_shard):
    """A frame over max_frame closes that connection with 1009; another player is unaffected."""
    async with start_shard(max_frame=4096) as shard:
        big = await join(shard.ws_url)
        other = await join(shard.ws_url)
        await big.send({"t": "chat", "text": "y" * 5000})
        assert (await big.closed())[0] == 1009
        await other.send({"t": "ping", "ct": 5})
        assert (await other.recv_type("pong"))["ct"] == 5
        await close_all(other)


async def test_no_hello_in_time_closes_4000(start_shard):
    """A connection that never says hello is closed 4000 after hello_timeout_s."""
    async with start_shard(hello_timeout_s=0.3) as shard:
        silent = await open_wire(shard.ws_url)
        assert (await silent.closed(timeout=5))[0] == 4000


async def test_connections_beyond_max_pending_are_refused_before_the_handshake(start_shard):
    """Past max_players + max_pending open connections, an upgrade gets HTTP 503 and costs the shard no handler."""
    from websockets.exceptions import InvalidStatus

    async with start_shard(max_players=1, max_pending=1, hello_timeout_s=30) as shard:
        waiting = [await open_wire(shard.ws_url) for _ in range(2)]  # no hello: they just wait
        try:
            await open_wire(shard.ws_url)
        except InvalidStatus as exc:
            assert exc.response.status_code == 503
        else:
            raise AssertionError("a third connection was accepted")
        assert shard.connections == 2
        await close_all(*waiting)
