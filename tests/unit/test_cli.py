"""The `tertulia` console script."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

from tertulia.cli import app


def test_version_prints_the_installed_distribution_version() -> None:
    result = CliRunner().invoke(app, ["version"])

    assert result.exit_code == 0
    assert result.stdout.strip() == version("tertulia")


def test_no_arguments_shows_help_listing_the_subcommands() -> None:
    result = CliRunner().invoke(app, [])

    assert "version" in result.output


def test_operator_images_lists_each_image_and_its_name_in_a_mirror() -> None:
    plain = CliRunner().invoke(app, ["operator", "images"])
    mirrored = CliRunner().invoke(app, ["operator", "images", "--registry", "mirror.corp/hub"])

    assert plain.exit_code == mirrored.exit_code == 0
    rows = dict(line.split(" ", 1) for line in plain.stdout.splitlines())
    assert rows["memory"] == "redis:7.4.6-alpine"
    mirror_rows = {line.split()[0]: line.split()[1:] for line in mirrored.stdout.splitlines()}
    assert mirror_rows["memory"] == [
        "redis:7.4.6-alpine",
        "mirror.corp/hub/library/redis:7.4.6-alpine",
    ]
    assert mirror_rows.keys() == rows.keys()
