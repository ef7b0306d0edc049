"""World configuration: TOML loading, defaults, the bundled village, and errors that name the key."""
from __future__ import annotations

import pytest

from worldstate import ConfigError, WorldConfig, default_world, load_world
from worldstate.config import ObjectSpec, Place


def write(tmp_path, text: str):
    p = tmp_path / "w.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_default_world_is_a_village_with_npcs():
    """The bundled village loads, is small, and has places, objects and a guide and a merchant."""
    w = default_world()
    minx, minz, maxx, maxz = w.bounds
    assert maxx - minx <= 500 and maxz - minz <= 500
    assert len(w.places) >= 8 and all(p.description for p in w.places)
    assert len(w.objects) >= 3
    assert len(w.npcs) >= 3
    roles = {n["role"] for n in w.npcs}
    assert {"guide", "merchant"} <= roles
    for n in w.npcs:
        assert {"id", "name", "x", "y", "z", "yaw", "role", "persona", "lore", "greeting",
                "talk_range", "reply_tokens"} <= set(n)
        assert minx <= n["x"] <= maxx and minz <= n["z"] <= maxz
    for p in w.places:
        assert minx <= p.x <= maxx and minz <= p.z <= maxz
    assert w.place("market square").name == "Market Square"
    assert w.path is not None and w.path.name == "village.toml"


def test_minimal_file_gets_defaults(tmp_path):
    """A file with only a name gets sane defaults for everything optional."""
    w = load_world(write(tmp_path, '[world]\nname = "tiny"\n'))
    assert w.name == "tiny" and w.aoi > 0 and w.speed > 0 and w.places == () and w.npcs == ()
    assert w.bounds[0] < w.bounds[2]


def test_full_file_round_trip(tmp_path):
    """Every documented key is read into the right field."""
    w = load_world(write(tmp_path, """
[world]
name = "x"
bounds = [0, 0, 100, 50]
spawn = [10, 1, 20]
spawn_radius = 2
aoi = 30
shout_range = 70
talk_range = 5
speed = 4.5
[[places]]
name = "Hut"
x = 1
y = 0
z = 2
description = "a hut"
[[objects]]
shape = "box"
x = 3
y = 0
z = 4
yaw = 1.5
color = "#00ff00"
label = "crate"
[[npcs]]
id = "bob"
anything = "kept raw"
"""))
    assert w.bounds == (0.0, 0.0, 100.0, 50.0) and w.spawn == (10.0, 1.0, 20.0)
    assert (w.spawn_radius, w.aoi, w.shout_range, w.talk_range, w.speed) == (2, 30, 70, 5, 4.5)
    assert w.places == (Place("Hut", 1, 0, 2, "a hut"),)
    assert w.objects == (ObjectSpec("box", 3, 0, 4, 1.5, "#00ff00", "crate"),)
    assert w.npcs == ({"id": "bob", "anything": "kept raw"},)


@pytest.mark.parametrize("text,key", [
    ('[world]\nnmae = "x"\n', "world.nmae"),
    ('[wrld]\nname = "x"\n', "wrld"),
    ('[world]\naoi = -1\n', "world.aoi"),
    ('[world]\naoi = "far"\n', "world.aoi"),
    ('[world]\nspeed = 0\n', "world.speed"),
    ('[world]\nbounds = [0, 0, 10]\n', "world.bounds"),
    ('[world]\nbounds = [10, 0, 0, 10]\n', "world.bounds"),
    ('[world]\nspawn = [500, 0, 0]\n', "world.spawn"),
    ('[world]\nspawn_radius = -2\n', "world.spawn_radius"),
    ('[world]\nname = ""\n', "world.name"),
    ('[[places]]\nname = "a"\nx = 0\ny = 0\n', "places[0].z"),
    ('[[places]]\nname = "a"\nx = 0\ny = 0\nz = 0\nfoo = 1\n', "places[0].foo"),
    ('[[objects]]\nshape = "box"\nx = 0\ny = 0\nz = 0\ncolor = "red"\n', "objects[0].color"),
    ('[[objects]]\nshape = "box"\nx = "a"\ny = 0\nz = 0\n', "objects[0].x"),
    ('npcs = 3\n', "npcs"),
    ('[[places]]\nname = "a"\nx = 9000\ny = 0\nz = 0\n', "places[0].x"),
    ('[[places]]\nname = "a"\nx = 0\ny = 0\nz = 0\n[[places]]\nname = "A "\nx = 1\ny = 0\nz = 0\n',
     "places[1].name"),
    ('[[objects]]\nshape = "box"\nx = 0\ny = 0\nz = -9000\n', "objects[0].z"),
    ('[world]\naoi = nan\n', "world.aoi"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    """Unknown keys and bad values raise ConfigError whose key names the culprit."""
    with pytest.raises(ConfigError) as err:
        load_world(write(tmp_path, text))
    assert err.value.key == key
    assert key in str(err.value)


def test_bad_toml_and_missing_file(tmp_path):
    """Unparseable TOML and unreadable files are ConfigErrors too (and ValueErrors)."""
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_world(write(tmp_path, "[world\n"))
    with pytest.raises(ValueError):
        load_world(tmp_path / "nope.toml")


def test_dataclass_validates_directly():
    """WorldConfig built in code is validated in __post_init__ like a loaded file."""
    with pytest.raises(ConfigError, match="world.talk_range"):
        WorldConfig(talk_range=0)
