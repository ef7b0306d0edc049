"""Property tests: World.tick() diffs match the brute-force oracle over random worlds and commands."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worldstate import Entity, Pose, World, WorldConfig
from worldstate.oracle import Oracle

KINDS = ("player", "npc", "object")
# Integer coordinates and radii make exact-boundary distances (d == aoi) common.
coord = st.integers(-60, 60).map(float)
small = st.integers(-4, 4).map(float)

op = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(KINDS), coord, coord),
    st.tuples(st.just("remove"), st.integers(0, 40)),
    st.tuples(st.just("step"), st.integers(0, 40), small, small, st.integers(0, 400)),
    st.tuples(st.just("move"), st.integers(0, 40), coord, coord, st.integers(0, 2000)),
    st.tuples(st.just("teleport"), st.integers(0, 40), coord, coord),
    st.tuples(st.just("turn"), st.integers(0, 40), st.integers(-3, 3).map(float)),
    st.tuples(st.just("watch"), st.integers(0, 40)),
    st.tuples(st.just("unwatch"), st.integers(0, 40)),
    st.tuples(st.just("reset"), st.integers(0, 40)),
    st.tuples(st.just("readd"), st.integers(0, 40), coord, coord),
    st.just(("tick",)),
)
world_params = st.fixed_dictionaries({
    "half": st.integers(20, 70).map(float),
    "aoi": st.integers(3, 40).map(float),
    "speed": st.integers(1, 30).map(float),
    "skin": st.sampled_from([None, 0.5, 2.0, 8.0]),
    # 0 rebuilds the band whenever anything is loose, so the band path does most of the work.
    "rebuild_limit": st.sampled_from([None, 0, 3]),
})


class Client:
    """What a client would know after applying the diffs it was sent."""

    def __init__(self) -> None:
        self.view: dict[str, tuple[str, Pose]] = {}

    def apply_full(self, entities) -> None:
        self.view = {e.id: (e.name, e.pose) for e in entities}

    def apply(self, diff) -> None:
        for i in diff.leave:
            del self.view[i]
        for e in diff.enter:
            self.view[e.id] = (e.name, e.pose)
        for e in diff.upd:
            assert e.id in self.view, "upd for an entity the client never saw"
            self.view[e.id] = (e.name, e.pose)


def run(params, ops) -> None:
    half = params["half"]
    cfg = WorldConfig(bounds=(-half, -half, half, half), aoi=params["aoi"], speed=params["speed"],
                      spawn=(0.0, 0.0, 0.0))
    kw = {k: params[k] for k in ("skin", "rebuild_limit") if params[k] is not None}
    world = World(cfg, **kw)
    oracle = Oracle(cfg.aoi)
    clients: dict[str, Client] = {}
    reset_since_tick: set[str] = set()
    ids: list[str] = []
    now = 0
    serial = 0

    def pick(i):
        live = [x for x in ids if x in world]
        return live[i % len(live)] if live else None

    for o in ops + [("tick",)]:
        kind = o[0]
        if kind == "add":
            serial += 1
            eid = f"{o[1][0]}:{serial}"
            world.add(Entity(eid, o[1], f"e{serial}", Pose(o[2], 0.0, o[3])))
            ids.append(eid)
        elif kind == "readd":
            eid = pick(o[1])
            if eid:
                was = world.remove(eid)
                world.add(Entity(eid, was.kind, was.name + "'", Pose(o[2], 1.0, o[3])))
                if eid in clients:
                    # The old entity's view ended with it; the new one starts without a view.
                    del clients[eid]
                    oracle.forget(eid)
        elif kind == "remove":
            eid = pick(o[1])
            if eid:
                world.remove(eid)
                clients.pop(eid, None)
                oracle.forget(eid)
        elif kind in ("step", "move"):
            eid = pick(o[1])
            if eid:
                now += o[4]
                p = world.get(eid).pose
                target = Pose(p.x + o[2], p.y, p.z + o[3], p.yaw) if kind == "step" else Pose(o[2], 0.0, o[3], 1.0)
                got = world.move(eid, target, now)
                assert world.get(eid).pose == got
                assert -half <= got.x <= half and -half <= got.z <= half
        elif kind == "teleport":
            eid = pick(o[1])
            if eid:
                world.teleport(eid, Pose(o[2], 0.0, o[3]))
        elif kind == "turn":
            eid = pick(o[1])
            if eid:
                p = world.get(eid).pose
                world.teleport(eid, Pose(p.x, p.y, p.z, o[2]))
        elif kind == "watch":
            eid = pick(o[1])
            if eid and eid not in clients:
                world.watch(eid)
                clients[eid] = Client()
                oracle.reset(eid, [])
        elif kind == "unwatch":
            eid = pick(o[1])
            if eid:
                world.unwatch(eid)
                clients.pop(eid, None)
                oracle.forget(eid)
        elif kind == "reset":
            eid = pick(o[1])
            if eid:
                full = world.reset_view(eid)
                assert len({e.id for e in full}) == len(full)
                clients.setdefault(eid, Client()).apply_full(full)
                oracle.reset(eid, full)
                reset_since_tick.add(eid)
        else:
            check_tick(world, oracle, clients, reset_since_tick)
            reset_since_tick.clear()


def check_tick(world, oracle, clients, reset_since_tick) -> None:
    diffs = world.tick()
    expected = oracle.tick(world.entities(), list(clients))
    for oid, d in diffs.items():
        assert oid in clients, f"diff for {oid}, which is not watching"
        assert d, "empty diffs must be left out"
        ids = [e.id for e in d.enter] + [e.id for e in d.upd] + list(d.leave)
        assert len(ids) == len(set(ids)), f"an id appears twice in {oid}'s diff"
    for oid in set(diffs) | set(expected):
        got = diffs.get(oid)
        exp = expected.get(oid)
        g_enter = {e.id for e in got.enter} if got else set()
        g_upd = {e.id for e in got.upd} if got else set()
        g_leave = set(got.leave) if got else set()
        e_enter, e_upd, e_leave = (exp.enter, exp.upd, exp.leave) if exp else (set(), set(), set())
        assert g_enter == e_enter, (oid, g_enter, e_enter)
        assert g_leave == e_leave, (oid, g_leave, e_leave)
        extra = g_upd - e_upd
        assert e_upd <= g_upd, (oid, g_upd, e_upd)
        # A reset between ticks may leave a harmless repeat of a pose the client already has.
        assert not extra or oid in reset_since_tick, (oid, extra)
        if got:
            clients[oid].apply(got)
    truth = oracle.views(world.entities(), list(clients))
    for oid, client in clients.items():
        assert client.view == {i: (e.name, e.pose) for i, e in truth[oid].items()}, oid
        assert world.view_ids(oid) == set(truth[oid])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world_params, st.lists(op, min_size=1, max_size=80))
def test_tick_diffs_match_oracle(params, ops):
    """Random command sequences: every tick's diffs equal the oracle's and rebuild the true view."""
    run(params, ops)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world_params, st.lists(st.one_of(
    st.tuples(st.just("add"), st.sampled_from(KINDS), coord, coord),
    st.tuples(st.just("watch"), st.integers(0, 40)),
    st.tuples(st.just("step"), st.integers(0, 40), small, small, st.integers(0, 400)),
    st.just(("tick",))), min_size=30, max_size=200))
def test_crowds_walking_match_oracle(params, ops):
    """Many small walking steps over many ticks (the common case) keep diffs equal to the oracle's."""
    run(params, ops)
