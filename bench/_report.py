"""What the benchmarks share: the headline figures each reports against its target, gathered
for `python -m bench`'s summary table and JSON; and quick mode.

In quick mode (`python -m bench --quick`, which `make test` runs) every benchmark runs
through the same code paths with tiny sizes and durations: it proves the benchmark still
starts and measures, and its figures say nothing about speed.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[1]
# Where each run's figures are written, one JSON file a run.
RESULTS = Path(os.environ.get("BENCH_RESULTS", REPO / "bench" / "results"))

T = TypeVar("T")


def quick() -> bool:
    return os.environ.get("BENCH_QUICK", "") == "1"


def sized(full: T, small: T) -> T:
    """`full` in a real run, `small` in quick mode."""
    return small if quick() else full


@dataclass(frozen=True)
class Figure:
    """One headline figure: what it measures, its value, and its target where it has one
    (`met` is None for a figure without a target)."""

    bench: str
    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None


FIGURES: list[Figure] = []


def figure(
    bench: str, name: str, value: float, unit: str, target: str = "", met: bool | None = None
) -> None:
    FIGURES.append(Figure(bench, name, value, unit, target, met))


def table(figures: list[Figure]) -> str:
    """The figures as a plain-text table, one line each."""
    header = f"{'benchmark':<10} {'figure':<44} {'value':>12}  {'target':<16} result"
    lines = [header, "-" * len(header)]
    for item in figures:
        value = f"{item.value:.3g} {item.unit}".strip()
        result = {True: "met", False: "MISSED", None: ""}[item.met]
        lines.append(
            f"{item.bench:<10} {item.name:<44} {value:>12}  {item.target:<16} {result}".rstrip()
        )
    return "\n".join(lines)


def write(figures: list[Figure], failed: list[str]) -> Path:
    """The run's figures as JSON under RESULTS, named by when it ran, so two runs compare."""
    when = datetime.now(UTC)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{when:%Y%m%dT%H%M%SZ}{'-quick' if quick() else ''}.json"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    path.write_text(
        json.dumps(
            {
                "when": when.isoformat(),
                "commit": commit,
                "quick": quick(),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "failed": failed,
                "figures": [asdict(item) for item in figures],
            },
            indent=2,
        )
        + "\n"
    )
    return path
