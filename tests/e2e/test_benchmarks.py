"""Every benchmark in bench/ runs in quick mode (tiny sizes, the same code paths) and prints
its figures: a benchmark that can no longer start or measure fails the suite. Never a speed:
quick mode's figures mean nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench.__main__ import available

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", available())
def test_the_benchmark_runs_in_quick_mode_and_reports_its_figures(
    name: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", name],
        cwd=REPO,
        env={**os.environ, "BENCH_RESULTS": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=540,
    )

    said = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, said
    (written,) = tmp_path.glob("*-quick.json")
    report = json.loads(written.read_text())
    assert report["quick"] is True and report["failed"] == []
    figures = [item for item in report["figures"] if item["bench"] == name]
    assert figures, said
    assert all(math.isfinite(item["value"]) for item in figures)
    summary = result.stdout.split("== summary", 1)[1]
    assert all(item["name"] in summary for item in figures)
