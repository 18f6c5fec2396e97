"""Where the test bed's binaries and run files live; the same layout as hack/lib.sh."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def versions() -> dict[str, str]:
    """The pinned versions in hack/versions.env."""
    pairs = {}
    for line in (REPO_ROOT / "hack" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


@functools.cache
def bin_dir() -> Path:
    """The folder of built test-bed binaries, building what is missing (a no-op when cached)."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "build-testbed.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(result.stdout.strip().splitlines()[-1])


def binary(name: str) -> Path:
    path = bin_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is missing from {path.parent}; run hack/build-testbed.sh")
    return path
