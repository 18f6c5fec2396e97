"""Test-bed processes start in their own group and leave nothing behind when stopped."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.testbed.process import (
    ManagedProcess,
    ProcessFailedError,
    free_port,
    live_group_members,
    port_open,
)


def group_alive(pgid: int) -> bool:
    return bool(live_group_members(pgid))


def test_stop_kills_the_process_and_its_children(tmp_path: Path) -> None:
    process = ManagedProcess("sleepers", ["bash", "-c", "sleep 300 & sleep 300 & wait"], tmp_path)
    process.start()
    time.sleep(0.3)
    assert group_alive(process.pid)

    process.stop(grace=5)

    assert not group_alive(process.pid)


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    process = ManagedProcess("stubborn", ["bash", "-c", "trap '' TERM; sleep 300"], tmp_path)
    process.start()
    time.sleep(0.3)

    process.stop(grace=0.5)

    assert not group_alive(process.pid)


def test_wait_until_reports_an_early_exit_with_the_log(tmp_path: Path) -> None:
    process = ManagedProcess("broken", ["bash", "-c", "echo bad flag >&2; exit 3"], tmp_path)
    process.start()

    with pytest.raises(ProcessFailedError, match=r"exited with 3[\s\S]*bad flag"):
        process.wait_until(lambda: False, timeout=10)


def test_wait_until_times_out_with_the_log(tmp_path: Path) -> None:
    process = ManagedProcess("slow", ["bash", "-c", "echo starting; sleep 300"], tmp_path)
    process.start()
    try:
        with pytest.raises(ProcessFailedError, match=r"not ready after[\s\S]*starting"):
            process.wait_until(lambda: False, timeout=0.5)
    finally:
        process.stop()


def test_free_port_is_not_listening() -> None:
    assert not port_open(free_port())
