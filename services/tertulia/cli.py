"""The `tertulia` command: one entry point whose subcommands start each component."""

from importlib.metadata import version

import typer

from tertulia.bots.cli import app as bot_app
from tertulia.chat import chat
from tertulia.common.weights import app as model_app
from tertulia.gateway.cli import app as gateway_app
from tertulia.knowledge.cli import app as kb_app
from tertulia.local.up import up
from tertulia.operator.cli import app as operator_app

app = typer.Typer(
    name="tertulia",
    help="Private LLM chatbots on your own Kubernetes cluster.",
    no_args_is_help=True,
    add_completion=False,
)


app.add_typer(bot_app, name="bot")
app.command("chat")(chat)
app.command("up")(up)
app.add_typer(gateway_app, name="gateway")
app.add_typer(kb_app, name="kb")
app.add_typer(model_app, name="model")
app.add_typer(operator_app, name="operator")


@app.callback()
def main() -> None:
    """Private LLM chatbots on your own Kubernetes cluster."""


@app.command("version")
def show_version() -> None:
    """Print the installed Tertulia version."""
    typer.echo(version("tertulia"))
