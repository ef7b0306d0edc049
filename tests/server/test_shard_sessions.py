"""Where a returning player stands, by the grace period and the write-behind poses."""
from __future__ import annotations

import math

from tests.server.wire import close_all, join, unique_name, walk_to, write_world


def own(w) -> dict:
    """The player's own entity in its first state."""
    return next(e for e in w.first_state["enter"] if e["id"] == w.you)


async def test_without_grace_a_guest_token_resumes_at_spawn(start_shard, tmp_path):
    """With grace_s=0 a guest's token still names the same player, but its pose is not kept."""
    async with start_shard(world=write_world(tmp_path / "w.toml"), grace_s=0) as shard:
        guest = await join(shard.ws_url)
        watcher = await join(shard.ws_url)
        await walk_to(guest, 30.0, 40.0)
        await walk_to(watcher, 31.0, 40.0)
        await close_all(guest)
        await watcher.state_where(lambda m: guest.you in m.get("leave", ()))  # it is gone
        again = await join(shard.ws_url, token=guest.welcome["token"])
        assert again.you == guest.you
        me = own(again)
        assert math.hypot(me["x"], me["z"]) < 1e-9  # the test world's spawn: the origin, radius 0
        await close_all(again, watcher)


async def test_claimed_player_after_grace_returns_to_its_saved_pose(start_shard, tmp_path):
    """After the grace period a claimed player comes back where it left, even before the pose flush timer fires."""
    async with start_shard(world=write_world(tmp_path / "w.toml"), grace_s=0, pose_flush_s=600) as shard:
        name = unique_name("back")
        first = await join(shard.ws_url, name, password="pw-back")
        watcher = await join(shard.ws_url)
        await walk_to(first, -25.0, 12.0, yaw=0.5)
        await walk_to(watcher, -24.0, 12.0)
        await close_all(first)
        await watcher.state_where(lambda m: first.you in m.get("leave", ()))  # it is gone
        assert shard.db.pending == 1  # its pose waits in the write-behind queue
        again = await join(shard.ws_url, name, password="pw-back")
        me = own(again)
        assert (me["x"], me["z"], me["yaw"]) == (-25.0, 12.0, 0.5)
        await close_all(again, watcher)


async def test_claimed_names_are_one_name_in_any_letter_case(start_shard):
    """A claimed name in another letter case is the same claimed player: password required, same id."""
    from tests.server.wire import refused

    async with start_shard() as shard:
        name = unique_name("Case")
        first = await join(shard.ws_url, name, password="pw-case")
        await close_all(first)
        code, _, seen = await refused(shard.ws_url, {"t": "hello", "v": 1, "name": name.lower()})
        assert code == 4001 and seen[0]["code"] == "auth"
        again = await join(shard.ws_url, name.upper(), password="pw-case")
        assert again.you == first.you
        await close_all(again)


def test_the_name_table_keeps_one_string_for_a_lower_case_name():
    """by_name is keyed by the lower-cased name, which is the name itself when it already was."""
    from server.sessions import Session, SessionTable
    table = SessionTable(grace_s=0)
    low = Session("p:ada.1", "ada", False, False, None, None)
    mixed = Session("p:Bo.2", "Bo", False, False, None, None)
    table.add(low)
    table.add(mixed)
    (k1, k2) = table.by_name
    assert k1 is low.name and k2 == "bo"
    assert table.find("ADA") is low and table.find("bo") is mixed
    table.drop(low, None)
    assert table.find("ada") is None
