"""`llmp models quantize` through llama.cpp's llama_model_quantize."""
from __future__ import annotations

import json

import llama_cpp
import pytest

from llmp.config import load_settings
from llmp.db import models as db_models
from llmp.db import open_home
from llmp.models import quantize


@pytest.fixture
def tiny(cli, tiny_model_path):
    assert cli("models", "add", tiny_model_path, "--name", "tiny").exit_code == 0
    return tiny_model_path


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M"])
def test_quantize_f16(cli, tiny, qtype, llmp_home, llama_generate):
    res = cli("models", "quantize", "tiny", "--type", qtype.lower())
    assert res.exit_code == 0, res.stderr
    assert f"-> tiny:{qtype.lower()}" in res.stdout
    rec = db_models.get(open_home(load_settings()), f"tiny:{qtype.lower()}")
    assert rec["quantization"] == qtype
    assert rec["source"] == "quantize:tiny"
    assert rec["path"].startswith(str(llmp_home / "models" / "quantized"))
    assert rec["size_bytes"] < tiny.stat().st_size
    assert rec["parameters"] == 183232
    llama_generate(rec["path"])
    assert not list((llmp_home / "models" / "quantized").glob("*.part"))


def test_quantize_named_and_requantize_rules(cli, tiny, llama_generate):
    assert cli("models", "quantize", "tiny", "--type", "Q4_0", "--name", "tiny-small").exit_code == 0
    shown = json.loads(cli("models", "show", "tiny-small", "--json").stdout)
    assert shown["details"]["quantization"] == "Q4_0"
    # a quantized source to a higher precision: refused, unless asked for
    res = cli("models", "quantize", "tiny-small", "--type", "Q8_0")
    assert res.exit_code != 0 and "--allow-requantize" in res.stderr and "Traceback" not in res.stderr
    res = cli("models", "quantize", "tiny-small", "--type", "Q8_0", "--allow-requantize")
    assert res.exit_code == 0, res.stderr
    # downwards from a quantized source is allowed
    res = cli("models", "quantize", "tiny-small", "--type", "Q3_K_S", "--name", "tiny-q3")
    assert res.exit_code == 0, res.stderr
    llama_generate(db_models.get(open_home(load_settings()), "tiny-q3")["path"])
    # an existing result id is not overwritten
    res = cli("models", "quantize", "tiny", "--type", "Q4_0", "--name", "tiny-small")
    assert res.exit_code != 0 and "already exists" in res.stderr


def test_quantize_bad_input(cli, tiny):
    res = cli("models", "quantize", "tiny", "--type", "Q9_Z")
    assert res.exit_code != 0 and "unknown quantization type" in res.stderr
    assert "Q4_K_M" in res.stderr and "Traceback" not in res.stderr
    res = cli("models", "quantize", "tiny", "--type", "IQ2_XXS")
    assert res.exit_code != 0 and "importance matrix" in res.stderr
    res = cli("models", "quantize", "nope", "--type", "Q8_0")
    assert res.exit_code != 0 and "not found" in res.stderr
    assert [r["id"] for r in db_models.list_all(open_home(load_settings()))] == ["tiny"]


def test_every_llama_cpp_type_is_known():
    """The precision table and `--help` cover exactly what this llama.cpp build offers."""
    assert set(quantize.BITS_PER_WEIGHT) == set(quantize.quant_types())
    assert quantize.parse_type("q4_k_m") == ("Q4_K_M", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)
    assert quantize.NEEDS_IMATRIX <= set(quantize.quant_types())


def test_precheck_run_register_are_separate_steps(tiny, llmp_home):
    """precheck refuses before anything is written; run writes only the file; register adds
    the registry row."""
    from llmp.errors import InvalidRequestError

    settings = load_settings()
    db = open_home(settings)
    with pytest.raises(InvalidRequestError):
        quantize.precheck(db, settings, "tiny", "Q9_X")
    plan = quantize.precheck(db, settings, "tiny", "q8_0", model_id="tiny:steps")
    assert (plan.type, plan.new_id) == ("Q8_0", "tiny:steps")
    assert 0 < plan.estimate < plan.size_before and not plan.out.exists()
    seconds = quantize.run(plan, threads=1)
    assert plan.out.is_file() and not plan.tmp.exists() and seconds >= 0
    assert db_models.get(db, "tiny:steps") is None  # not registered yet
    res = quantize.register(db, plan, seconds)
    assert res.record["id"] == "tiny:steps" and res.record["quantization"] == "Q8_0"
