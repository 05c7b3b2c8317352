"""Synthetic GGUF models: metadata of every preset, tiny loads and generates in llama.cpp,
UTF-8 round-trips through its tokenizer, and `llmp models synth` from the CLI."""
from __future__ import annotations

import llama_cpp
import pytest

from llmp.models import gguf_meta
from llmp.models.synth import PRESETS, parameter_count


def _expected_parameters(name: str) -> int:
    p = PRESETS[name]
    from llmp.models.synth import build_vocab

    n_vocab = len(build_vocab(p)[0])
    d, kv = p.n_embd, p.n_embd // p.n_head * p.n_head_kv
    layer = 2 * d * d + 2 * kv * d + 3 * d * p.n_ff + 2 * d
    return n_vocab * d * (1 if p.tied else 2) + p.n_layer * layer + d


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts(name):
    assert parameter_count(name) == _expected_parameters(name)


def test_real_shapes():
    # Llama-3.2-1B and Llama-3.1-8B have exactly these parameter counts
    assert parameter_count("1b") == 1_235_814_400
    assert parameter_count("8b") == 8_030_261_248
    assert PRESETS["1b"].n_vocab == PRESETS["8b"].n_vocab == 128256


def test_tiny_metadata(tiny_model_path, tiny_model_f32_path):
    info = gguf_meta.read(tiny_model_path)
    assert info.architecture == "llama"
    assert info.parameters == parameter_count("tiny")
    assert info.quantization == "F16" and info.context_length == PRESETS["tiny"].n_ctx
    assert info.tokenizer_model == "gpt2" and info.handles_tools
    assert tiny_model_path.stat().st_size < 2 * 2**20
    assert gguf_meta.read(tiny_model_f32_path).quantization == "F32"


def test_tiny_loads_and_generates(tiny_model_path, tiny_model_f32_path, llama_generate):
    assert llama_generate(tiny_model_path)
    assert llama_generate(tiny_model_f32_path)


@pytest.mark.parametrize("text", [
    "Hello, world!",
    "naïve café résumé — Grüße aus München",
    "日本語のテキスト、中文也可以。Привет, мир! Γειά σου κόσμε",
    "emoji 🙂🚀✨👩‍👩‍👧 and a flag 🇫🇷",
    "  leading spaces\n\ttabs\r\nand \\ backslashes {\"json\": [1, 2]}",
])
def test_utf8_round_trip(tiny_model_path, text):
    llm = llama_cpp.Llama(str(tiny_model_path), n_ctx=64, verbose=False, vocab_only=True)
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    assert ids
    assert llm.detokenize(ids).decode("utf-8") == text


def test_special_tokens(tiny_model_path):
    llm = llama_cpp.Llama(str(tiny_model_path), n_ctx=64, verbose=False, vocab_only=True)
    ids = llm.tokenize(b"<|im_start|>user\nhi<|im_end|>", add_bos=False, special=True)
    assert ids[0] != ids[-1] and ids[-1] == llm.token_eos()


def test_cli_synth_register(cli, tmp_path, llama_generate):
    out = tmp_path / "t.gguf"
    res = cli("models", "synth", "--preset", "tiny", "--output", out, "--dtype", "f32",
              "--seed", "3", "--register", "--name", "t3")
    assert res.exit_code == 0, res.stderr
    assert "Added t3" in res.stdout
    assert gguf_meta.read(out).quantization == "F32"
    llama_generate(out)
    res = cli("models", "synth", "--preset", "huge", "--output", out)
    assert res.exit_code != 0 and "Traceback" not in res.stderr
