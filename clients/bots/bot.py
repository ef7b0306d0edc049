"""One bot: a protocol-v1 player that walks, chats or asks NPCs, and measures what it gets back.

Bots are plain objects driven by the swarm's pacers (no task per bot). Every bot reads its
own move acks; "observer" bots also match every pose they receive against the movers'
send history (the ground truth, since all bots share one process) to measure staleness
and resolve delivery probes.
"""
from __future__ import annotations

import math
import re
from collections import deque

import orjson

from clients.bots.wire import WsConnection

HISTORY = 64          # moves each bot remembers for matching poses others receive
MAX_UNACKED = 512     # moves waiting for an ack; beyond this the oldest are forgotten
NPC_GIVE_UP_S = 120.0  # an NPC answer still open after this is forgotten (so the bot asks again)
_ACK = re.compile(rb'"ack":\s*(\d+)')
_STATE_PREFIX = b'{"t":"state"'
QUESTIONS = ("Hello! What is this place?", "Any news today?", "Where can I find the well?",
             "What do you sell?", "Tell me a short story.", "How is the weather?")


def pose_key(x: float, z: float) -> tuple[int, int]:
    """A pose's key in the send history: centimetres, so tiny float noise still matches."""
    return (round(x * 100.0), round(z * 100.0))


class Probe:
    """One mover's move that a set of observers should see before a deadline."""

    __slots__ = ("seq", "t_sent", "deadline", "pending", "expected")

    def __init__(self, seq: int, t_sent: float, deadline: float, pending: set) -> None:
        self.seq, self.t_sent, self.deadline = seq, t_sent, deadline
        self.pending = pending
        self.expected = len(pending)


class Bot:
    """A connected player and its measurements; the swarm owns it."""

    __slots__ = ("swarm", "index", "name", "observer", "full_parse", "conn", "id", "welcomed",
                 "placed", "t_welcome", "x", "y", "z", "yaw", "seq", "target", "history",
                 "hist_keys", "unacked", "view", "seen", "npcs", "probe", "chat_n", "chat_sent",
                 "npc_ask", "npc_reply", "npc_last", "closed", "upd_tag", "last_acked", "t_moved")

    def __init__(self, swarm, index: int, name: str, *, observer: bool, full_parse: bool) -> None:
        self.swarm = swarm
        self.index = index
        self.name = name
        self.observer = observer
        self.full_parse = full_parse or observer
        self.conn: WsConnection | None = None
        self.id: str | None = None
        self.welcomed = self.placed = self.closed = False
        self.t_welcome = 0.0
        self.x = self.y = self.z = self.yaw = 0.0
        self.seq = 0
        self.target: tuple[float, float] | None = None
        self.history: dict[tuple[int, int], tuple[int, float | None]] = {}
        self.hist_keys: deque = deque()
        self.unacked: deque = deque()
        self.view: set[str] = set()
        self.seen: dict[str, int] = {}
        self.npcs: dict[str, tuple[float, float]] = {}
        self.probe: Probe | None = None
        self.chat_n = 0
        self.chat_sent: dict[int, float] = {}
        self.npc_ask: tuple[str, float] | None = None
        self.npc_reply: str | None = None
        self.npc_last = 0.0
        self.upd_tag = b""
        self.last_acked: tuple[int, float | None] = (0, None)
        self.t_moved = 0.0

    # -- connection callbacks ------------------------------------------------------------
    def hello(self) -> None:
        """Send `hello` as a guest with this bot's name."""
        self.conn.send_text(orjson.dumps({"t": "hello", "v": 1, "name": self.name}))

    def on_text(self, payload: bytes, now: float) -> None:
        """Handle one text frame from the shard."""
        if not self.full_parse and self.placed and payload.startswith(_STATE_PREFIX):
            # Bots that only need their ack (and own pose) skip decoding the whole state.
            m = _ACK.search(payload)
            if m is not None:
                self._acked(int(m.group(1)), now)
                if self.seq:
                    i = payload.find(self.upd_tag)
                    if i >= 0:
                        self._own_entry(payload[i:payload.find(b"]", i) + 1])
                return
        try:
            msg = orjson.loads(payload)
            handler = _HANDLERS.get(msg.get("t"))
        except (orjson.JSONDecodeError, AttributeError):
            self.swarm.count("bad_frames")
            return
        if handler is not None:
            handler(self, msg, now)

    def on_close(self, code: int, why: str) -> None:
        """Record how the connection ended."""
        self.closed = True
        self.welcomed = False
        self.swarm.on_close(self, code)

    # -- inbound messages ------------------------------------------------------------------
    def _on_welcome(self, msg: dict, now: float) -> None:
        self.id = msg["you"]
        self.upd_tag = b'["' + self.id.encode() + b'",'
        spawn = msg.get("spawn") or (0.0, 0.0, 0.0)
        self.x, self.y, self.z = float(spawn[0]), float(spawn[1]), float(spawn[2])
        self.welcomed = True
        self.t_welcome = now
        self.swarm.on_welcome(self, msg, now)

    def _on_state(self, msg: dict, now: float) -> None:
        ack = msg.get("ack")
        if ack:
            self._acked(ack, now)
        me = self.id
        enter = msg.get("enter")
        if enter:
            observer = self.observer
            for e in enter:
                eid = e["id"]
                if observer:  # only observers keep a view: 10,000 idle bots need not
                    self.view.add(eid)
                if eid == me:
                    if not self.placed:
                        self._place(e)
                elif eid[0] == "n":
                    self.npcs[eid] = (e["x"], e["z"])
                elif observer:
                    self._observe(eid, e["x"], e["z"], now)
        upd = msg.get("upd")
        if upd and not self.observer and self.seq:
            for u in upd:
                if u[0] == me:
                    self._own_pose(u[1], u[3])
        elif upd and self.observer:
            for u in upd:
                eid = u[0]
                if eid == me:
                    self._own_pose(u[1], u[3])
                elif eid[0] == "p":
                    self._observe(eid, u[1], u[3], now)
        leave = msg.get("leave")
        if leave:
            for eid in leave:
                self.view.discard(eid)
                self.npcs.pop(eid, None)

    def _place(self, e: dict) -> None:
        """Take the shard's spawn pose as this bot's starting truth."""
        self.x, self.y, self.z, self.yaw = e["x"], e["y"], e["z"], e.get("yaw", 0.0)
        self.placed = True
        key = pose_key(self.x, self.z)
        self.history[key] = (0, None)
        self.hist_keys.append((key, 0))
        self.swarm.on_placed(self)

    def _acked(self, ack: int, now: float) -> None:
        q = self.unacked
        if q and q[0][0] <= ack:
            rec = self.swarm.ack
            while q and q[0][0] <= ack:
                sent = q.popleft()
                rec.add(now - sent[1], now)
            self.last_acked = sent

    def _own_entry(self, raw: bytes) -> None:
        try:
            entry = orjson.loads(raw)
            self._own_pose(entry[1], entry[3])
        except (orjson.JSONDecodeError, IndexError, TypeError):
            self.swarm.count("bad_own_entry")

    def _own_pose(self, x: float, z: float) -> None:
        """The shard's pose for us: when it clamped our move, remember the clamped pose as that move.

        Others then see the clamped pose; knowing it lets their observations still be matched.
        """
        key = pose_key(x, z)
        if key in self.history:
            return
        self.swarm.count("clamped_moves")
        seq, t_sent = self.last_acked
        if seq:
            self._remember(key, seq, t_sent)

    def _observe(self, eid: str, x: float, z: float, now: float) -> None:
        """Match a received pose to the mover's send history: staleness and probe delivery."""
        mover = self.swarm.by_id.get(eid)
        if mover is None or not mover.placed:  # a join race: it has not seen its own spawn yet
            return
        key = pose_key(x, z)
        rec = mover.history.get(key)
        if rec is None:
            # Perhaps a clamped pose the mover has not read back yet: look again at the next sweep.
            self.swarm.unmatched.append((self, mover, key, now))
            return
        self.matched(mover, rec[0], rec[1], now)

    def matched(self, mover: "Bot", seq: int, t_sent: float | None, now: float) -> None:
        """A pose of `mover` matched to its move `seq`: record staleness and probe delivery."""
        eid = mover.id
        if seq <= self.seen.get(eid, -1):
            return
        self.seen[eid] = seq
        if t_sent is not None:
            self.swarm.stale.add(now - t_sent, now)
        probe = mover.probe
        if probe is not None and seq >= probe.seq:
            probe.pending.discard(self.index)

    def _on_chat(self, msg: dict, now: float) -> None:
        t_sent = self.chat_sent.pop(msg.get("re"), None)
        if t_sent is not None:
            self.swarm.chat_echo.add(now - t_sent, now)
        else:
            self.swarm.count("chat_heard")

    def _on_npc_start(self, msg: dict, now: float) -> None:
        ask = self.npc_ask
        if ask is not None and msg.get("re") == ask[0]:
            self.npc_reply = msg.get("reply")
            self.npc_last = 0.0
            self.swarm.count("npc_started")
        else:
            self.swarm.count("npc_overheard")

    def _on_npc_token(self, msg: dict, now: float) -> None:
        if self.npc_reply is None or msg.get("reply") != self.npc_reply:
            return
        if self.npc_last == 0.0:
            self.swarm.ttft.add(now - self.npc_ask[1], now)
        else:
            self.swarm.itl.add(now - self.npc_last, now)
        self.npc_last = now

    def _on_npc_end(self, msg: dict, now: float) -> None:
        if self.npc_reply is None or msg.get("reply") != self.npc_reply:
            return
        self.swarm.count("npc_end_" + str(msg.get("reason")))
        self.swarm.npc_total.add(now - self.npc_ask[1], now)
        self.npc_ask = self.npc_reply = None

    def _on_error(self, msg: dict, now: float) -> None:
        self.swarm.count("error_" + str(msg.get("code")))
        if self.npc_ask is not None and msg.get("re") == self.npc_ask[0]:
            self.npc_ask = None
        self.chat_sent.pop(msg.get("re"), None)

    # -- actions (called by the swarm's pacers) --------------------------------------------
    def move(self, now: float) -> None:
        """Take one step of a random walk between waypoints and send it as a `move`."""
        if not self.placed or self.closed:
            return
        swarm = self.swarm
        if self.target is None:
            self.target = swarm.random_point()
        tx, tz = self.target
        dx, dz = tx - self.x, tz - self.z
        dist = math.hypot(dx, dz)
        # A move sent early (the pacer catching up after our loop lagged) covers only the
        # time since the previous one, so bunched moves stay within the shard's speed check;
        # a late one still takes a single stride, keeping half the limit in reserve.
        period = swarm.move_period
        dt = min(now - self.t_moved, period) if self.t_moved else period
        step = swarm.walk_speed * dt
        if dist <= step:
            x, z = tx, tz
            self.target = swarm.random_point()
        else:
            x, z = self.x + dx / dist * step, self.z + dz / dist * step
        x, z = round(x, 2), round(z, 2)
        yaw = round(math.atan2(dx, dz), 3) if dist > 0 else self.yaw
        seq = self.seq + 1
        if not self.conn.send_text(orjson.dumps(
                {"t": "move", "seq": seq, "x": x, "y": self.y, "z": z, "yaw": yaw})):
            return
        self.seq, self.x, self.z, self.yaw = seq, x, z, yaw
        self.t_moved = now
        self._remember(pose_key(x, z), seq, now)
        q = self.unacked
        q.append((seq, now))
        if len(q) > MAX_UNACKED:
            q.popleft()
            swarm.count("unacked_forgotten")

    def _remember(self, key: tuple[int, int], seq: int, now: float) -> None:
        self.history[key] = (seq, now)
        keys = self.hist_keys
        keys.append((key, seq))
        if len(keys) > HISTORY:
            old, old_seq = keys.popleft()
            if self.history.get(old, (None,))[0] == old_seq:
                del self.history[old]

    def chat(self, now: float) -> None:
        """Say one line in `say` range; its echo back to us times the chat path."""
        if not self.welcomed:
            return
        self.chat_n += 1
        n = self.chat_n
        if self.conn.send_text(orjson.dumps(
                {"t": "chat", "text": f"{self.name} says line {n}", "channel": "say", "id": n})):
            self.chat_sent[n] = now
            if len(self.chat_sent) > 64:  # echoes that never came: stop waiting for the oldest
                self.chat_sent.pop(next(iter(self.chat_sent)))
            self.swarm.count("chat_sent")

    def talk(self, now: float) -> None:
        """Ask the nearest NPC in view a question, unless our previous answer is still open."""
        if not self.welcomed:
            return
        if self.npc_ask is not None:
            if now - self.npc_ask[1] < NPC_GIVE_UP_S:
                self.swarm.count("npc_skipped_in_flight")
                return
            self.swarm.count("npc_gave_up")
        if not self.npcs:
            self.swarm.count("npc_no_target")
            return
        nid = min(self.npcs, key=lambda k: (self.npcs[k][0] - self.x) ** 2 + (self.npcs[k][1] - self.z) ** 2)
        self.chat_n += 1
        rid = f"q{self.chat_n}"
        text = QUESTIONS[self.chat_n % len(QUESTIONS)]
        if self.conn.send_text(orjson.dumps({"t": "chat", "text": text, "to": nid, "id": rid})):
            self.npc_ask = (rid, now)
            self.npc_reply = None
            self.swarm.count("npc_asked")


_HANDLERS = {
    "state": Bot._on_state, "welcome": Bot._on_welcome, "chat": Bot._on_chat,
    "npc_start": Bot._on_npc_start, "npc_token": Bot._on_npc_token, "npc_end": Bot._on_npc_end,
    "error": Bot._on_error,
}
