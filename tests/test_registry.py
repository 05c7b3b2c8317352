"""The model registry through the CLI: add, list, show, rm, alias, set-price, bad files."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from llmp.config import load_settings
from llmp.db import models as db_models
from llmp.db import open_home
from llmp.errors import NotFoundError
from llmp.models import registry


def _db():
    return open_home(load_settings())


def _error(res) -> str:
    assert res.exit_code != 0
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("Error:"), res.stderr
    return " ".join(res.stderr.split())


def test_add_list_show(cli, tiny_model_path):
    res = cli("models", "add", tiny_model_path, "--name", "tiny")
    assert res.exit_code == 0, res.stderr
    assert "Added tiny" in res.stdout
    rec = db_models.get(_db(), "tiny")
    assert rec["path"] == str(tiny_model_path.resolve())
    assert rec["architecture"] == "llama"
    assert rec["parameters"] == 183232
    assert rec["context_length"] == 4096
    assert rec["quantization"] == "F16" and rec["file_type"] == 1
    assert rec["sha256"] == hashlib.sha256(tiny_model_path.read_bytes()).hexdigest()
    assert rec["size_bytes"] == tiny_model_path.stat().st_size
    assert "<|im_start|>" in rec["chat_template"]

    listing = json.loads(cli("models", "list", "--json").stdout)
    [m] = listing
    # the spec's GET /models fields and OpenAI's model object side by side
    assert m["id"] == "tiny" and m["object"] == "model" and m["owned_by"] == "llmp"
    assert isinstance(m["created"], int) and m["created"] > 0
    assert m["category"] == "chat" and m["size"] == "small" and m["provider"] == "llmp"
    assert m["capabilities"] == ["text-generation", "chat", "function-calling"]
    assert m["pricing"] == {"input_tokens": 0.0, "output_tokens": 0.0, "currency": "USD",
                            "per_tokens": 1000}
    assert m["context_length"] == 4096 and m["max_output_tokens"] == 4096
    assert m["created_at"].endswith("Z") and m["updated_at"].endswith("Z")

    table = cli("models", "list")
    assert "tiny" in table.stdout and "F16" in table.stdout
    shown = json.loads(cli("models", "show", "tiny", "--json").stdout)
    assert shown["details"]["parameters"] == 183232
    assert "details.architecture" in cli("models", "show", "tiny").stdout


def test_filters(cli, tiny_model_path, tiny_model_f32_path):
    assert cli("models", "add", tiny_model_path, "--name", "a").exit_code == 0
    assert cli("models", "add", tiny_model_f32_path, "--name", "b", "--provider", "Meta").exit_code == 0
    ids = lambda *args: [m["id"] for m in json.loads(cli("models", "list", "--json", *args).stdout)]
    assert ids() == ["a", "b"]
    assert ids("--provider", "meta") == ["b"]
    assert ids("--category", "chat", "--size", "small") == ["a", "b"]
    assert ids("--category", "embedding") == []
    assert ids("--size", "xl") == []
    assert "unknown size" in _error(cli("models", "list", "--size", "huge"))
    assert "unknown category" in _error(cli("models", "list", "--category", "vision"))


def test_alias_set_price_rm(cli, tiny_model_path, llmp_home):
    # a copy inside the home's models/ folder is llmp's to delete; an outside file is kept
    inside = llmp_home / "models" / "mine" / "tiny.gguf"
    inside.parent.mkdir(parents=True)
    shutil.copy(tiny_model_path, inside)
    assert cli("models", "add", inside).exit_code == 0  # id from the file name
    assert cli("models", "add", tiny_model_path, "--name", "outside").exit_code == 0

    assert cli("models", "alias", "tiny", "my-model").exit_code == 0
    assert json.loads(cli("models", "show", "my-model", "--json").stdout)["id"] == "tiny"
    assert "already a model id" in _error(cli("models", "alias", "tiny", "outside"))

    res = cli("models", "set-price", "my-model", "--input", "0.5", "--output", "1.5")
    assert res.exit_code == 0, res.stderr
    pricing = json.loads(cli("models", "show", "tiny", "--json").stdout)["pricing"]
    assert pricing["input_tokens"] == 0.5 and pricing["output_tokens"] == 1.5
    assert "negative" in _error(cli("models", "set-price", "tiny", "--input", "-1"))
    # re-adding the same file refreshes the metadata but keeps the prices
    assert cli("models", "add", inside, "--name", "tiny").exit_code == 0
    assert db_models.get(_db(), "tiny")["price_input"] == 0.5

    # rm asks first; "n" keeps it
    res = cli("models", "rm", "tiny", input="n\n")
    assert res.exit_code != 0 and db_models.exists(_db(), "tiny")
    res = cli("models", "rm", "my-model", input="y\n")
    assert res.exit_code == 0, res.stderr
    assert not db_models.exists(_db(), "tiny") and not inside.exists()
    assert db_models.get(_db(), "my-model") is None  # the alias went with it
    assert cli("models", "rm", "outside", "--yes").exit_code == 0
    assert tiny_model_path.exists()
    assert "not found" in _error(cli("models", "rm", "outside", "--yes"))


def test_bad_files_register_nothing(cli, tiny_model_path, tmp_path):
    data = tiny_model_path.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(data[:3000])
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"definitely not a gguf file" * 100)
    for path in (truncated, header_only, junk):
        err = _error(cli("models", "add", path))
        assert path.name in err and "GGUF" in err
    assert "no such file" in _error(cli("models", "add", tmp_path / "missing.gguf"))
    assert "invalid model id" in _error(cli("models", "add", tiny_model_path, "--name", "a/b"))
    assert cli("models", "add", tiny_model_path, "--name", "tiny").exit_code == 0
    other = tmp_path / "other.gguf"
    shutil.copy(tiny_model_path, other)
    assert "already registered" in _error(cli("models", "add", other, "--name", "tiny"))
    assert [r["id"] for r in db_models.list_all(_db())] == ["tiny"]
    assert "not found" in _error(cli("models", "show", "nope"))


def test_resolve_path_registers_on_the_fly(tiny_model_path, tmp_path):
    settings = load_settings()
    db = _db()
    rec = registry.resolve_path(settings, str(tiny_model_path), db=db)
    assert rec["id"] == "tiny-f16" and rec["path"] == str(tiny_model_path.resolve())
    # the same path again: the same record; by id: the same record
    assert registry.resolve_path(settings, str(tiny_model_path), db=db)["id"] == "tiny-f16"
    assert registry.resolve_path(settings, "tiny-f16", db=db)["path"] == rec["path"]
    # another file with the same stem gets a distinct id
    other = tmp_path / "x" / "tiny-f16.gguf"
    other.parent.mkdir()
    shutil.copy(tiny_model_path, other)
    rec2 = registry.resolve_path(settings, str(other), db=db)
    assert rec2["id"].startswith("tiny-f16-") and rec2["id"] != "tiny-f16"
    with pytest.raises(NotFoundError):
        registry.resolve_path(settings, "no-such-model", db=db)


def test_size_classes():
    assert registry.size_class(183_232) == "small"
    assert registry.size_class(1_235_814_400) == "small"
    assert registry.size_class(8_030_261_248) == "medium"
    assert registry.size_class(70_553_706_496) == "large"
    assert registry.size_class(405_000_000_000) == "xl"
