"""The `llmp` command: assembles one typer sub-app per command group.

Errors: commands raise typed `LlmpError`s; `run()` maps them, once, to one red line on stderr
and the error's exit code (no traceback).
"""
from __future__ import annotations

import sys
from typing import Any, Optional

import click
import typer
from rich.markup import escape

from llmp import __version__
from llmp.cli import batch as batch_cmd
from llmp.cli import bench as bench_cmd
from llmp.cli import chat as chat_cmd
from llmp.cli import config as config_cmd
from llmp.cli import doctor as doctor_cmd
from llmp.cli import embed as embed_cmd
from llmp.cli import files as files_cmd
from llmp.cli import finetune as finetune_cmd
from llmp.cli import keys as keys_cmd
from llmp.cli import models as models_cmd
from llmp.cli import moderate as moderate_cmd
from llmp.cli import ps as ps_cmd
from llmp.cli import run as run_cmd
from llmp.cli import serve as serve_cmd
from llmp.cli import tui as tui_cmd
from llmp.cli import usage as usage_cmd
from llmp.cli import webhooks as webhooks_cmd
from llmp.cli.ui import CONN, err_console
from llmp.errors import LlmpError

app = typer.Typer(
    name="llmp",
    help="llmp: serve open LLMs locally with an OpenAI-style /v1 API, API keys, limits, "
    "usage, files and batches.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish)
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
    url: Optional[str] = typer.Option(
        None, "--url", metavar="URL", help="The server for client commands (default: LLMP_URL, "
        "else the `llmp serve` running on this home, else http://127.0.0.1:8000)."),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", metavar="KEY",
        help="API key for client commands (default: LLMP_API_KEY, else the home's admin key)."),
) -> None:
    """llmp: serve open LLMs locally."""
    CONN.update(url=url, api_key=api_key)  # a command's own --url / --api-key win


app.add_typer(models_cmd.app, name="models")
app.command("doctor")(doctor_cmd.doctor)
app.command("bench")(bench_cmd.bench)
app.command("serve")(serve_cmd.serve)
app.command("chat")(chat_cmd.chat)
app.add_typer(keys_cmd.app, name="keys")
app.command("usage")(usage_cmd.usage)
app.add_typer(files_cmd.app, name="files")
app.add_typer(batch_cmd.app, name="batch")
app.add_typer(finetune_cmd.app, name="finetune")
app.add_typer(webhooks_cmd.app, name="webhooks")
app.command("embed")(embed_cmd.embed)
app.command("moderate")(moderate_cmd.moderate)
app.command("ps")(ps_cmd.ps)
app.command("stop")(ps_cmd.stop)
app.command("logs")(ps_cmd.logs)
app.command("run")(run_cmd.run)
app.add_typer(config_cmd.app, name="config")
app.command("tui")(tui_cmd.tui)


#: readable metavars for options that set none, by Python type (flags get none)
_METAVARS = {"int": "N", "float": "NUMBER", "str": "TEXT", "Path": "PATH", "bool": ""}


def _label(param: object) -> str:
    desc = getattr(param, "type_descriptor", None)
    if desc is None:  # a plain click parameter
        ptype = getattr(param, "type", None)
        return {"integer": "N", "float": "NUMBER", "path": "PATH"}.get(
            getattr(ptype, "name", ""), "TEXT")
    if desc.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
    if desc.is_path:
        return "PATH"
    annotation = desc.annotation
    args = getattr(annotation, "__args__", None)
    if desc.is_list and args:
        annotation = args[0]
    return _METAVARS.get(getattr(annotation, "__name__", ""), "VALUE")


def readable_metavars(cmd: Any) -> Any:
    # Any: typer builds its commands on its own copy of click (typer._click), not `click`
    """Help shows `--port N`, `--model TEXT`, `MODEL`, not typer's Python types
    (`<int>`, `<list[str]>`, `<bool>`); flags show no metavar."""
    for param in getattr(cmd, "params", []):
        if getattr(param, "param_type_name", "") == "argument":
            if hasattr(param, "display_type_rich"):  # the name says it: no `<str>` beside it
                param.display_type_rich = lambda ctx: None
            if param.metavar is None:
                param.metavar = (param.name or "ARG").upper()
            continue
        if param.metavar is not None:
            continue
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
        else:
            param.metavar = _label(param)
    help_option = cmd.get_help_option

    def get_help_option(ctx: click.Context):  # made per call: no metavar on --help either
        opt = help_option(ctx)
        if opt is not None and opt.metavar is None:
            opt.metavar = ""
        return opt

    cmd.get_help_option = get_help_option  # type: ignore[method-assign]
    for sub in (getattr(cmd, "commands", None) or {}).values():
        readable_metavars(sub)
    return cmd


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cmd = readable_metavars(typer.main.get_command(app))
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
