"""Shared fixtures: an isolated LLMP_HOME per test, a tiny synthetic model per session,
and an in-process CLI runner that goes through the real entry point (`llmp.cli.main.run`)."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmp.models.synth import synthesize


@pytest.fixture(autouse=True)
def llmp_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own home; no test touches ~/.llmp."""
    for k in list(os.environ):
        if k.startswith("LLMP_"):
            monkeypatch.delenv(k, raising=False)
    home = tmp_path / "llmp-home"
    monkeypatch.setenv("LLMP_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return home


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """The tiny synthetic llama model (f16, ~0.4 MB), built once per test session."""
    return synthesize("tiny", tmp_path_factory.mktemp("models") / "tiny-f16.gguf", dtype="f16")


@pytest.fixture(scope="session")
def tiny_model_f32_path(tmp_path_factory) -> Path:
    return synthesize("tiny", tmp_path_factory.mktemp("models32") / "tiny-f32.gguf", dtype="f32")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """Run `llmp ARGS...` in-process through the real entry point; returns a CliResult."""
    from llmp.cli.main import run

    def invoke(*args: str, input: str | None = None) -> CliResult:
        capsys.readouterr()
        old_stdin = sys.stdin
        if input is not None:
            import io
            sys.stdin = io.StringIO(input)
        try:
            run([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            sys.stdin = old_stdin
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return invoke
