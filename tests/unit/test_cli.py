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
