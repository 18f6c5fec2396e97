"""`tertulia operator run` and `tertulia operator crd`."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="The Kubernetes operator for ChatBot resources.", no_args_is_help=True)


@app.command()
def run(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Watch this namespace (repeatable); all when none."),
    ] = None,
    liveness: Annotated[
        str, typer.Option(help="Where kopf serves its liveness probe.")
    ] = "http://0.0.0.0:8080/healthz",
    verbose: Annotated[bool, typer.Option(help="Debug logging.")] = False,
) -> None:
    """Reconcile ChatBots until stopped."""
    import asyncio
    import logging

    import kopf

    import tertulia.operator.handlers  # noqa: F401 - registers the handlers

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO)
    asyncio.run(
        kopf.operator(
            clusterwide=not namespace,
            namespaces=namespace or [],
            liveness_endpoint=liveness,
        )
    )


@app.command()
def crd() -> None:
    """Print the ChatBot CustomResourceDefinition as YAML."""
    from tertulia.operator.crd import crd_yaml

    typer.echo(crd_yaml(), nl=False)
