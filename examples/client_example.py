"""A tour of the Python client: join, look around, walk, chat, build, and talk to an NPC.

Start a shard (`./scripts/run.sh` or `python -m server`), then:

    python examples/client_example.py                      # ws://127.0.0.1:8765/ws
    python examples/client_example.py ws://HOST:PORT/ws --name ada --password s3cret
"""
from __future__ import annotations

import argparse
import asyncio

from clients.client import Closed, ErrorReply, WorldClient


async def main(url: str, name: str = "example", password: str | None = None,
               talk: bool = True) -> None:
    """Run the tour against the shard at `url`."""
    async with WorldClient.connect(url, name=name, password=password) as c:
        print(f"joined {c.welcome.shard} as {c.name} ({c.you}) at "
              f"({c.pose.x:.1f}, {c.pose.z:.1f}); area of interest {c.welcome.aoi} m")
        for e in sorted(c.entities.values(), key=lambda e: e.id):
            print(f"  in view: {e.kind:6} {e.name!r:24} at ({e.x:.1f}, {e.z:.1f})")

        print(f"ping: {await c.ping() * 1000:.1f} ms")
        who = await c.who()
        print(f"online: {who.total} ({', '.join(p.name for p in who.players)})")

        line = await c.say("Hello, world!")
        print(f"said {line.text!r} on {line.channel} at st={line.st}")

        oid = await c.place("box", c.pose.x + 1.0, 0.5, c.pose.z, color="#cc8833", label="Crate")
        print(f"placed {oid}: {c.entities[oid].name}")
        try:
            await c.place("box", c.pose.x, 0.5, c.pose.z, color="orange")
        except ErrorReply as err:
            print(f"as expected, a bad colour is refused: {err.code} on {err.field}")
        await c.remove(oid)
        print(f"removed {oid}")

        npc = c.nearest("npc")
        if talk and npc is not None:
            await c.walk_to(npc.x, npc.z, within=2.0, timeout=60)  # talking range is a few m
            print(f"asking {npc.name}…")
            try:
                answer = await c.talk(npc.id, "Hello! What is there to see around here?",
                                      timeout=30)
            except (ErrorReply, TimeoutError) as exc:
                print(f"{npc.name} did not answer: {exc!r}")
            else:
                async for piece in answer:
                    print(piece, end="", flush=True)
                print(f"\n({answer.end.reason}, {answer.end.tokens} tokens)")


def cli() -> None:
    """Parse arguments and run the tour; exit quietly when the shard goes away."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="ws://127.0.0.1:8765/ws")
    parser.add_argument("--name", default="example")
    parser.add_argument("--password")
    parser.add_argument("--no-talk", action="store_true", help="skip talking to an NPC")
    args = parser.parse_args()
    try:
        asyncio.run(main(args.url, args.name, args.password, talk=not args.no_talk))
    except Closed as closed:
        raise SystemExit(f"connection closed: {closed}") from None


if __name__ == "__main__":
    cli()
