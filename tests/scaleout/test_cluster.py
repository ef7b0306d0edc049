"""server.cluster without I/O: broker URLs, topic prefixes, topics, object events, the remote roster."""
from __future__ import annotations

import pytest

from server import cluster
from server.settings import Settings
from worldstate.records import ObjectRecord


def test_broker_url_parsing():
    """Host, default port 1883, and percent-encoded credentials come out of an mqtt:// URL."""
    assert cluster.parse_broker_url("mqtt://broker") == cluster.BrokerAddress("broker", 1883)
    a = cluster.parse_broker_url("mqtt://u%40x:p%3Aw@10.0.0.5:1884")
    assert (a.host, a.port, a.username, a.password) == ("10.0.0.5", 1884, "u@x", "p:w")


@pytest.mark.parametrize("url", ["http://h:1883", "mqtt://", "mqtt://h:99999", "mqtt://h/path", "h:1883"])
def test_bad_broker_urls_are_refused(url):
    """Anything but mqtt://host[:port] is a ValueError, so a typo fails at start-up."""
    with pytest.raises(ValueError):
        cluster.parse_broker_url(url)


@pytest.mark.parametrize("prefix", ["", "a/+/b", "a/#", "/abs", "trail/", "$SYS"])
def test_bad_prefixes_are_refused(prefix):
    """A world prefix with wildcards, an edge slash or a leading $ is a ValueError."""
    with pytest.raises(ValueError):
        cluster.check_prefix(prefix)


def test_settings_validate_scale_out_fields():
    """Settings reject a bad --mqtt URL or --world-prefix and accept good ones."""
    ok = Settings(mqtt="mqtt://127.0.0.1:1883", world_prefix="acme/world-1")
    assert ok.world_prefix == "acme/world-1"
    with pytest.raises(ValueError):
        Settings(mqtt="tcp://127.0.0.1:1883")
    with pytest.raises(ValueError):
        Settings(world_prefix="w/#")


def test_topics_and_tail():
    """Topics sit under the prefix, and `tail` extracts exactly one level after a wildcard head."""
    t = cluster.Topics("acme/w", "east")
    assert t.private("west", "p:1a") == "acme/w/private/west/p:1a"
    assert t.tail("acme/w/private/east/p:1a", t.my_private) == "p:1a"
    assert t.tail("acme/w/private/east/p:1a/x", t.my_private) is None
    assert t.tail("acme/w/presence/west", t.presence_all) == "west"
    assert t.tail("other/presence/west", t.presence_all) is None


def test_object_events_round_trip_and_reject_garbage():
    """An add event carries the whole record; a remove carries the id; garbage is a ValueError."""
    rec = ObjectRecord("o:ab", "ann", "box", "#112233", "crate", 1.0, 0.5, -2.0, 0.1, 123)
    assert cluster.parse_object_event(cluster.object_added(rec)) == ("add", rec)
    assert cluster.parse_object_event(cluster.object_removed("o:ab")) == ("remove", "o:ab")
    for bad in (b"", b"{}", b'{"op":"add","obj":{"id":"o:1"}}', b'{"op":"zap","id":"x"}'):
        with pytest.raises(ValueError):
            cluster.parse_object_event(bad)


def test_remote_roster_follows_presence_and_last_will():
    """Presence messages fill the roster (found by id or any-case name); an empty one (last will) clears that shard."""
    r = cluster.RemoteRoster()
    r.update("west", cluster.presence_payload("west", [("p:1", "Ann"), ("p:2", "bo")], 1))
    r.update("north", cluster.presence_payload("north", [("p:3", "cy")], 1))
    assert r.find("ann") == ("p:1", "Ann", "west") and r.find("p:3") == ("p:3", "cy", "north")
    assert {p["name"] for p in r.players()} == {"Ann", "bo", "cy"}
    r.update("west", b"")
    assert r.find("Ann") is None and [p["name"] for p in r.players()] == ["cy"]
    r.clear()
    assert r.players() == []


def test_topic_kinds_for_metrics():
    """Every topic maps to the kind its metrics are counted under."""
    t = cluster.Topics("w", "east")
    assert [t.kind(x) for x in (t.chat_global, t.objects, t.private("west", "p:1"),
                                t.my_presence, t.my_beat, "w/elsewhere", "other/chat/global")] == \
        ["global", "objects", "private", "presence", "beat", "other", "other"]
