"""The `llmp` command: assembles one typer sub-app per command group.

Errors: commands raise typed `LlmpError`s; `run()` maps them, once, to one red line on stderr
and the error's exit code (no traceback).
"""
from __future__ import annotations

import sys

import click
import typer
from rich.markup import escape

from llmp import __version__
from llmp.cli import bench as bench_cmd
from llmp.cli import doctor as doctor_cmd
from llmp.cli import models as models_cmd
from llmp.cli import chat as chat_cmd
from llmp.cli import keys as keys_cmd
from llmp.cli import serve as serve_cmd
from llmp.cli import usage as usage_cmd
from llmp.cli import batch as batch_cmd
from llmp.cli import files as files_cmd
from llmp.cli import webhooks as webhooks_cmd
from llmp.cli import embed as embed_cmd
from llmp.cli import moderate as moderate_cmd
from llmp.cli.ui import err_console
from llmp.errors import LlmpError

app = typer.Typer(
    name="llmp",
    help="llmp: serve open LLMs locally with an OpenAI-style /v1 API, API keys, limits, "
    "usage, files and batches.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmp {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """llmp: serve open LLMs locally."""


app.add_typer(models_cmd.app, name="models")
app.command("doctor")(doctor_cmd.doctor)
app.command("bench")(bench_cmd.bench)
app.command("serve")(serve_cmd.serve)
app.command("chat")(chat_cmd.chat)
app.add_typer(keys_cmd.app, name="keys")
app.command("usage")(usage_cmd.usage)
app.add_typer(files_cmd.app, name="files")
app.add_typer(batch_cmd.app, name="batch")
app.add_typer(webhooks_cmd.app, name="webhooks")
app.command("embed")(embed_cmd.embed)
app.command("moderate")(moderate_cmd.moderate)


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=argv, prog_name="llmp", standalone_mode=False)
    except (click.exceptions.Exit, typer.Exit) as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # typer >= 0.2x raises its own vendored click's errors
        if hasattr(e, "show"):
            e.show()
        else:
            err_console.print(f"[red]Error:[/red] {escape(e.format_message())}")
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        err_console.print("[red]Aborted.[/red]")
        sys.exit(130)
    except LlmpError as e:
        err_console.print(f"[red]Error:[/red] {escape(e.message)}")
        sys.exit(e.exit_code)
    except OSError as e:
        err_console.print("[red]Error:[/red] " + escape(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")))
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    run()
