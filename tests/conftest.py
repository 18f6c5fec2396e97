"""Session fixtures for the real servers of the test bed, and markers by test folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.testbed.kube import ControlPlane
from tests.testbed.servers import (
    start_embedding_server,
    start_llama_server,
    start_redis,
)

if TYPE_CHECKING:
    from xdist.scheduler import Scheduling

TESTS_ROOT = Path(__file__).parent
# Every llama-server the tests start (the test bed's, local mode's, the benchmarks') takes
# one thread: a worker's servers share 2 cores with the other workers', and llama.cpp's
# threads spin while they wait for each other, so servers that each take every core are many
# times slower (docs/local.md, "Threads"; docs/testbed.md).
os.environ.setdefault("TERTULIA_LLAMA_THREADS", "1")
_MARKER_BY_FOLDER = {
    "unit": "unit",
    "integration": "integration",
    "e2e": "e2e",
    "cluster": "cluster",
}


def tier(path: Path) -> str:
    """The tier of a test module: its folder under tests/, or under tests/security/ (each
    attack runs in the tier of the component it attacks)."""
    parts = path.parts
    return parts[1] if parts[0] == "security" and len(parts) > 2 else parts[0]


# Seconds each tier's tests took (setup, call and teardown), summed over the workers.
_TIER_SECONDS: dict[str, float] = {}
_TIER_TESTS: dict[str, int] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = Path(report.nodeid.split("::", 1)[0])
    found = tier(path.relative_to("tests")) if path.parts[:1] == ("tests",) else "other"
    _TIER_SECONDS[found] = _TIER_SECONDS.get(found, 0.0) + report.duration
    if report.when == "call":
        _TIER_TESTS[found] = _TIER_TESTS.get(found, 0) + 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per tier: its tests' seconds (the tiers run side by side, so they add up to
    more than the run's wall time), for `make test`'s report too."""
    if not _TIER_SECONDS or hasattr(terminalreporter.config, "workerinput"):
        return
    terminalreporter.section("seconds per tier")
    timings = os.environ.get("TERTULIA_TIMINGS")
    for name, seconds in sorted(_TIER_SECONDS.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(
            f"{name:<12} {seconds:8.1f} s  {_TIER_TESTS.get(name, 0)} tests"
        )
        if timings:
            with open(timings, "a") as out:  # noqa: PTH123 - one line appended
                out.write(f"tier:{name} {round(seconds)}\n")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = tier(item.path.relative_to(TESTS_ROOT))
        if folder in _MARKER_BY_FOLDER:
            item.add_marker(_MARKER_BY_FOLDER[folder])


# `make test` runs the tiers side by side (`pytest -n N --dist loadscope`): a module's tests
# run in one worker, in order, so its fixtures (its servers) are made once; the cluster tier
# and the e2e tier are one scope each, sharing one real node and one control plane.
_ONE_SCOPE = ("cluster", "e2e")
# Modules of those tiers whose tests share nothing (each makes what it needs): every test
# is a scope of its own, run beside the others (the benchmarks' quick runs: a third of the
# e2e tier's time).
_EACH_TEST_A_SCOPE = ("tests/e2e/test_benchmarks.py",)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Scheduling | None:
    if config.getvalue("dist") != "loadscope":
        return None

    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist is untyped
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            if module in _EACH_TEST_A_SCOPE:
                return nodeid
            found = tier(Path(module).relative_to("tests"))
            return found if found in _ONE_SCOPE else module

    return TierScheduling(config, log)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A real kube-apiserver with etcd, controllers, scheduler and kwok nodes (2 CPU, 2 GPU)."""
    with ControlPlane(tmp_path_factory.mktemp("control-plane")) as started:
        yield started


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real redis-server that lives for the session."""
    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="session")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The /v1 URL of a real llama.cpp server running SmolLM2-135M-Instruct, the model local
    mode answers with."""
    process, url = start_llama_server(tmp_path_factory.mktemp("llama"))
    try:
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="session")
def instruct_url(llama_url: str) -> str:
    """The same server, for tests that look at what a person would read: one chat model
    server per worker."""
    return llama_url


@pytest.fixture(scope="session")
def embeddings_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The /v1 URL of a real llama.cpp server embedding with all-MiniLM-L6-v2."""
    process, url = start_embedding_server(tmp_path_factory.mktemp("embeddings"))
    try:
        yield url
    finally:
        process.stop()
