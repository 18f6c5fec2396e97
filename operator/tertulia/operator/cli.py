"""`tertulia operator run`, `check` and `crd`."""

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

    import kopf

    import tertulia.operator.handlers  # noqa: F401 - registers the handlers
    from tertulia.common.logging import configure_logging

    # JSON lines, as the services log: kopf's records carry the object they are about.
    configure_logging("debug" if verbose else "info")
    asyncio.run(
        kopf.operator(
            clusterwide=not namespace,
            namespaces=namespace or [],
            liveness_endpoint=liveness,
        )
    )


@app.command()
def check(
    liveness: Annotated[
        str, typer.Option(help="The operator's liveness URL, as served by its Service.")
    ],
) -> None:
    """Exit 0 when the ChatBot API is served and the operator answers its liveness probe;
    the chart's `helm test` runs this."""
    import urllib.request

    from tertulia.operator.api import GROUP, PLURAL, VERSION
    from tertulia.operator.kube import Cluster

    Cluster().request("GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}", query=[("limit", "1")])
    typer.echo(f"{PLURAL}.{GROUP}/{VERSION} is served")
    with urllib.request.urlopen(liveness, timeout=10) as response:  # noqa: S310 - our own URL
        typer.echo(f"operator liveness: HTTP {response.status}")


@app.command()
def crd() -> None:
    """Print the ChatBot CustomResourceDefinition as YAML."""
    from tertulia.operator.crd import crd_yaml

    typer.echo(crd_yaml(), nl=False)


@app.command()
def reference() -> None:
    """Print the ChatBot field reference (docs/configuration.md) as Markdown."""
    from tertulia.operator.reference import reference_markdown

    typer.echo(reference_markdown(), nl=False)


@app.command("images")
def list_images(
    registry: Annotated[
        str,
        typer.Option(
            help="A mirror (HOST or HOST/PATH): print each image's name there too, as the "
            "operator renders it with the chart's imageRegistry."
        ),
    ] = "",
) -> None:
    """Print the third-party images ChatBots run, by role, one per line: what to mirror into
    a private registry for a cluster without internet access, and after a `#` the evidence
    that each is published."""
    from tertulia.operator.render.images import EVIDENCE, THIRD_PARTY, mirrored

    for role, image in THIRD_PARTY.items():
        line = f"{role} {image}"
        if registry:
            line += f" {mirrored(image, registry)}"
        typer.echo(f"{line}  # {EVIDENCE[role]}")
