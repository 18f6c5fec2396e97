"""Where the test bed's binaries and run files live; the same layout as hack/lib.sh."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Where one-time builds and tools live, outside the repository; as in hack/lib.sh."""
    if "TERTULIA_CACHE" in os.environ:
        return Path(os.environ["TERTULIA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tertulia"


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


@functools.cache
def go_module(path: str, version: str) -> Path:
    """A Go module's source from the module proxy, kept in Go's module cache."""
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"{path}@{version}"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT / "hack" / "kube",
    )
    return Path(json.loads(result.stdout)["Dir"])


def service_monitor_crd() -> Path:
    """Prometheus Operator's ServiceMonitor CRD, at the version hack/versions.env pins."""
    module = go_module(
        "github.com/prometheus-operator/prometheus-operator",
        versions()["PROMETHEUS_OPERATOR_VERSION"],
    )
    return (
        module
        / "example"
        / "prometheus-operator-crd"
        / "monitoring.coreos.com_servicemonitors.yaml"
    )


def dockerfilelint() -> Path:
    """The Dockerfile linter hack/bootstrap.sh installs, keyed by its lock file's hash."""
    lock = REPO_ROOT / "hack" / "dockerfilelint" / "package-lock.json"
    key = hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    path = (
        cache_dir() / "tools" / f"dockerfilelint-{key}" / "node_modules" / ".bin" / "dockerfilelint"
    )
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run hack/bootstrap.sh (make install)")
    return path
