"""What the shard acknowledged survives a clean restart and a kill -9."""
from __future__ import annotations

import asyncio
import signal

from tests.server.test_shard_process import start_process
from tests.server.wire import close_all, join, refused, walk_to, write_world


def own(w, state=None) -> dict:
    """The player's own entity in its first state."""
    return next(e for e in (state or w.first_state)["enter"] if e["id"] == w.you)


async def place_and_wait(w, label: str) -> dict:
    """Place a box labelled `label` and return it once it enters the placer's state (its ack)."""
    await w.send({"t": "place", "shape": "box", "x": 2.0, "y": 0.0, "z": 2.0, "color": "#12ab34",
                  "label": label})
    state = await w.state_where(lambda m: any(e.get("name") == label for e in m.get("enter", ())))
    return next(e for e in state["enter"] if e["name"] == label)


async def test_restart_keeps_accounts_objects_last_pose_and_tokens(start_shard, tmp_path):
    """After a clean restart: the password still guards the name, the object and last pose are back, old tokens resume."""
    world = write_world(tmp_path / "w.toml")
    async with start_shard(world=world) as shard:
        ria = await join(shard.ws_url, "ria", password="pw-ria")
        await walk_to(ria, 7.0, -3.0)
        obj = await place_and_wait(ria, "ria's box")
        guest = await join(shard.ws_url, "wanderer")
        token = guest.welcome["token"]
        await close_all(ria, guest)
    async with start_shard(world=world) as shard:
        code, _, seen = await refused(shard.ws_url, {"t": "hello", "v": 1, "name": "ria", "password": "nope"})
        assert code == 4001 and seen[0]["code"] == "auth"
        ria = await join(shard.ws_url, "ria", password="pw-ria")
        me = own(ria)
        assert (me["x"], me["z"]) == (7.0, -3.0)
        stored = next(e for e in ria.first_state["enter"] if e["id"] == obj["id"])
        assert stored == obj and stored["props"] == {"shape": "box", "color": "#12ab34",
                                                     "label": "ria's box", "owner": "ria"}
        again = await join(shard.ws_url, token=token)  # the signing secret was kept
        assert again.you == guest.you and again.welcome["name"] == "wanderer"
        await close_all(ria, again)


async def test_kill_9_keeps_acknowledged_account_and_object(start_shard, tmp_path):
    """A shard killed with SIGKILL right after acknowledging an account and an object has both on restart."""
    world = write_world(tmp_path / "w.toml")
    db = f"sqlite:///{tmp_path / 'killed.db'}"
    proc, ready = await start_process(tmp_path, "--db", db, "--world", world)
    try:
        kim = await join(ready["ws"], "kim", password="pw-kim")  # welcome = account acknowledged
        obj = await place_and_wait(kim, "kim's box")           # in state = object acknowledged
        proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
        await close_all(kim)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    async with start_shard(db=db, world=world) as shard:
        code, _, _ = await refused(shard.ws_url, {"t": "hello", "v": 1, "name": "kim"})
        assert code == 4001  # the name is claimed: a guest may not take it
        kim = await join(shard.ws_url, "kim", password="pw-kim")
        assert obj in kim.first_state["enter"]
        await close_all(kim)
