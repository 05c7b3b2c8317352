"""Every `llmp` command's help: an Examples section and readable metavars (no server)."""
from __future__ import annotations

import re

import pytest
import typer

from llmp.cli.main import app, readable_metavars, run


def _commands(cmd, path=()):
    subs = getattr(cmd, "commands", None)  # typer's own click copy: duck-typed, not isinstance
    if subs:
        for name, sub in subs.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path


COMMANDS = sorted(_commands(readable_metavars(typer.main.get_command(app))))


def test_the_walk_sees_every_group():
    assert len(COMMANDS) > 40
    assert {p[0] for p in COMMANDS} >= {"models", "keys", "files", "batch", "webhooks",
                                        "finetune", "config", "chat", "serve", "doctor"}


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_has_examples_and_readable_metavars(path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per option: metavars are not wrapped
    with pytest.raises(SystemExit) as exit_:
        run([*path, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "Usage: llmp " + " ".join(path) in out
    assert re.search(r"^\s*Examples?:\s*$", out, re.M), f"llmp {' '.join(path)} --help: no Examples"
    assert out.count(f"llmp {' '.join(path)}") >= 2  # the usage line and an example
    python_types = re.findall(r"<(?:bool|int|float|str|path)>|list\[\w+\]|Optional\[", out)
    assert not python_types, f"llmp {' '.join(path)} --help shows {python_types}"
