"""`llmp config show|path`: the settings in effect and where they come from."""
from __future__ import annotations

import dataclasses
import os
import tomllib
from typing import Any

import typer

from llmp.cli.ui import JsonOpt, console, print_json, table
from llmp.config import load_settings

app = typer.Typer(help="Show the settings in effect (environment, then llmp.toml, then "
                  "defaults) and where the config file is.", no_args_is_help=True)

#: settings never printed in clear
SECRET = ("admin_key",)


def _names(settings: Any) -> list[str]:
    if dataclasses.is_dataclass(settings):
        return [f.name for f in dataclasses.fields(settings)]
    return list(getattr(type(settings), "model_fields", {}))  # pydantic settings


def _toml(path) -> dict:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}
    return data.get("llmp", data) if isinstance(data, dict) else {}


@app.command()
def show(json_out: JsonOpt = False) -> None:
    """Every setting, its value and its source (env LLMP_*, llmp.toml or default).

    Examples:

      llmp config show

      llmp config show --json | jq .port.value
    """
    settings = load_settings()
    in_toml = _toml(settings.config_path)
    rows: dict[str, dict[str, Any]] = {}
    for name in _names(settings):
        value = getattr(settings, name)
        env = f"LLMP_{name.upper()}"
        source = ("env " + env) if env in os.environ else \
            "llmp.toml" if name in in_toml else "default"
        if name in SECRET and value:
            value = "(set, hidden)"
        rows[name] = {"value": str(value) if not isinstance(value, (int, float, bool, type(None)))
                      else value, "source": source}
    if json_out:
        print_json(rows)
        return
    t = table("SETTING", "VALUE", "SOURCE")
    for name, r in rows.items():
        t.add_row(name, "-" if r["value"] is None else str(r["value"]), r["source"])
    console.print(t)
    console.print(f"config file: {settings.config_path}"
                  + ("" if settings.config_path.exists() else " (none yet)"))


@app.command()
def path() -> None:
    """Print the config file's path ($LLMP_HOME/llmp.toml), whether or not it exists.

    Examples:

      llmp config path

      $EDITOR "$(llmp config path)"
    """
    typer.echo(str(load_settings().config_path))
