"""The images' Dockerfiles, checked without a Docker engine: a linter, every path they copy
exists in the build context, pinned bases, a non-root final stage with no build tools."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.testbed.paths import dockerfilelint

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = [REPO / "operator" / "Dockerfile", REPO / "services" / "Dockerfile"]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, rest))
    return result


def lint(path: Path) -> list[dict[str, str]]:
    output = subprocess.run(
        [str(dockerfilelint()), "-o", "json", str(path)], capture_output=True, text=True
    ).stdout
    issues: list[dict[str, str]] = json.loads(output)["files"][0]["issues"]
    return issues


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_the_linter_finds_nothing(dockerfile: Path) -> None:
    assert lint(dockerfile) == []


def test_the_linter_does_find_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\nADD . /app\n")
    assert len(lint(bad)) >= 2


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_every_copied_path_exists_in_the_build_context(dockerfile: Path) -> None:
    ignored = (REPO / ".dockerignore").read_text()
    for keyword, rest in instructions(dockerfile):
        if keyword != "COPY" or rest.startswith("--from="):
            continue
        *sources, _destination = rest.split()
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name} copies missing {source}"
            assert f"!{source}" in ignored, f".dockerignore leaves {source} out of the context"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_bases_are_pinned_and_the_final_stage_runs_unprivileged_without_build_tools(
    dockerfile: Path,
) -> None:
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2, "multi-stage"
    for stage in all_stages:
        image = stage[0][1].split()[0]
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", image), f"{image} is not pinned"
    final = all_stages[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    run_lines = " ".join(rest for keyword, rest in final if keyword == "RUN")
    for tool in ("gcc", "build-essential", "uv ", "pip install"):
        assert tool not in run_lines, f"the final stage installs {tool}"
    # The one package it installs: the init that runs as PID 1.
    installed = re.findall(
        r"apt-get install -y --no-install-recommends ([\w .-]+?)(?: &&|$)", run_lines
    )
    assert run_lines.count("apt-get install") == len(installed)
    assert {package for found in installed for package in found.split()} <= {"tini"}
    copied_from = [rest for keyword, rest in final if keyword == "COPY"]
    assert all(rest.startswith("--from=build") for rest in copied_from)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_pid_1_is_an_init_that_passes_signals_on(dockerfile: Path) -> None:
    """The kernel ignores a signal that PID 1 has no handler for: tertulia as PID 1, stopped
    while Python starts, would wait out its pod's whole grace period (the cluster tier's
    gateway roll waited 310 s so)."""
    final = stages(dockerfile)[-1]
    entrypoint = json.loads([rest for keyword, rest in final if keyword == "ENTRYPOINT"][-1])
    assert entrypoint[:3] == ["tini", "--", "tertulia"]
    assert "tini" in " ".join(rest for keyword, rest in final if keyword == "RUN")
