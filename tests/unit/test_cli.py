"""The `tertulia` console script."""

from __future__ import annotations

import re
from importlib.metadata import version

from typer.testing import CliRunner

from tertulia.cli import app

# Redis 7.4.11-alpine's Docker Hub index digest, as public deployments pin it.
DIGEST = "sha256:ff02b58f971e7d7d156a1267e283fcbbeee91773b6aa36c49dac28ecfe28eadf"


def test_version_prints_the_installed_distribution_version() -> None:
    result = CliRunner().invoke(app, ["version"])

    assert result.exit_code == 0
    assert result.stdout.strip() == version("tertulia")


def test_no_arguments_shows_help_listing_the_subcommands() -> None:
    result = CliRunner().invoke(app, [])

    assert "version" in result.output


def test_operator_images_lists_each_image_its_name_in_a_mirror_and_why_it_exists() -> None:
    plain = CliRunner().invoke(app, ["operator", "images"])
    mirrored = CliRunner().invoke(app, ["operator", "images", "--registry", "mirror.corp/hub"])

    assert plain.exit_code == mirrored.exit_code == 0
    # ROLE IMAGE [MIRRORED]  # EVIDENCE: a shell's `read -r role image _` takes the first two.
    rows = {}
    for line in plain.stdout.splitlines():
        row = re.fullmatch(r"(\S+) (\S+)  # (.+)", line)
        assert row is not None, line
        rows[row[1]] = (row[2], row[3])
    assert rows["memory"][0] == f"redis:7.4.11-alpine@{DIGEST}"
    assert rows["model-vllm"][0].startswith("vllm/vllm-openai:v0.30.0-cu129@sha256:")
    for image, evidence in rows.values():
        # The evidence names the registry's repository the image is published in.
        repository = image.split("@")[0].rsplit(":", 1)[0].removeprefix("cr.weaviate.io/")
        assert repository.removeprefix("ghcr.io/").split("/")[-1] in evidence, (image, evidence)
    mirror_rows = {
        line.split()[0]: line.split("  # ")[0].split()[1:] for line in mirrored.stdout.splitlines()
    }
    assert mirror_rows["memory"] == [
        f"redis:7.4.11-alpine@{DIGEST}",
        f"mirror.corp/hub/library/redis:7.4.11-alpine@{DIGEST}",
    ]
    assert mirror_rows.keys() == rows.keys()
