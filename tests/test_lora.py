"""HF -> GGUF conversion and LoRA adapters, checked against transformers and PEFT themselves.

Tiny random-init models (2 layers, hidden 64) and tokenizers are built in the tests; the
converted GGUFs run in llama.cpp and their logits are compared with transformers' (and PEFT's,
with an adapter) on the same token ids."""
from __future__ import annotations

import concurrent.futures
import ctypes
import json
from pathlib import Path

import numpy as np
import pytest

import hf_tiny

IDS = [5, 17, 100, 200, 42, 7, 300, 12, 64, 250]
# max |logit difference| (logits are O(5)): f32 weights, f32 KV cache, no flash attention
# (its CPU kernel rounds to f16)
TOL = 1e-3


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> dict[str, Path]:
    """The tiny HF models and PEFT adapters, built once for the module."""
    root = tmp_path_factory.mktemp("hf")
    out = {
        "llama": hf_tiny.make_model(root / "llama", "llama"),
        "qwen2": hf_tiny.make_model(root / "qwen2", "qwen2", seed=5),
    }
    out["llama-lora"] = hf_tiny.make_lora(out["llama"], root / "llama-lora", seed=1)
    # rsLoRA with per-module alpha and rank: scaling llama.cpp does not do, folded into B
    out["llama-lora2"] = hf_tiny.make_lora(
        out["llama"], root / "llama-lora2", seed=3, r=8, alpha=4.0, use_rslora=True,
        targets=("q_proj", "k_proj", "v_proj", "down_proj"),
        rank_pattern={"v_proj": 2}, alpha_pattern={"down_proj": 16.0})
    out["qwen2-lora"] = hf_tiny.make_lora(out["qwen2"], root / "qwen2-lora", seed=2)
    return out


@pytest.fixture(scope="module")
def ggufs(hf, tmp_path_factory) -> dict[str, Path]:
    from llmp.models.convert import convert
    from llmp.models.lora import convert_peft_adapter

    root = tmp_path_factory.mktemp("gguf")
    out = {arch: convert(hf[arch], root / f"{arch}.gguf", outtype="f32")
           for arch in ("llama", "qwen2")}
    out["llama-lora"] = convert_peft_adapter(hf["llama-lora"], out["llama"], root / "l1.gguf")
    out["llama-lora2"] = convert_peft_adapter(hf["llama-lora2"], out["llama"], root / "l2.gguf")
    out["qwen2-lora"] = convert_peft_adapter(hf["qwen2-lora"], out["qwen2"], root / "q1.gguf")
    return out


class LlamaRun:
    """A GGUF in llama.cpp through the low-level API: logits of every position, greedy."""

    def __init__(self, path: Path, adapter: Path | None = None, scale: float = 1.0):
        import llama_cpp as L

        from llmp.engine.native import Model

        self.L = L
        self.model = Model(path, n_gpu_layers=0)
        p = L.llama_context_default_params()
        p.n_ctx = p.n_batch = p.n_ubatch = 256
        p.type_k = p.type_v = L.GGML_TYPE_F32
        p.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.no_perf = True
        self.ctx = L.llama_init_from_model(self.model.ptr, p)
        self.adapter = None
        if adapter is not None:
            self.adapter = L.llama_adapter_lora_init(self.model.ptr, str(adapter).encode())
            assert self.adapter
            arr = (L.llama_adapter_lora_p_ctypes * 1)(self.adapter)
            L.llama_set_adapters_lora(self.ctx, arr, 1, (ctypes.c_float * 1)(scale))

    def logits(self, ids: list[int]) -> np.ndarray:
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        b = L.llama_batch_init(len(ids), 0, 1)
        try:
            for i, t in enumerate(ids):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, i, 1, True
                b.seq_id[i][0] = 0
            b.n_tokens = len(ids)
            assert L.llama_decode(self.ctx, b) == 0
            n = self.model.n_vocab
            return np.array([np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, i), shape=(n,))
                             for i in range(len(ids))], dtype=np.float64)
        finally:
            L.llama_batch_free(b)

    def greedy(self, ids: list[int], n: int) -> list[int]:
        seq = list(ids)
        for _ in range(n):
            seq.append(int(np.argmax(self.logits(seq)[-1])))
        return seq[len(ids):]

    def close(self) -> None:
        self.L.llama_free(self.ctx)
        self.model.free()


# --------------------------------------------------------------------------- converter
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_converted_model_matches_transformers(arch, hf, ggufs):
    ref = hf_tiny.hf_logits(hf[arch], IDS)
    run = LlamaRun(ggufs[arch])
    try:
        got = run.logits(IDS)
        assert got.shape == ref.shape  # vocabulary padded to the config's vocab_size
        assert np.abs(got - ref).max() < TOL, np.abs(got - ref).max()
        assert run.greedy(IDS[:4], 6) == hf_tiny.hf_greedy(hf[arch], IDS[:4], 6)
        # the tokenizer: same ids as transformers' for text with spaces, digits, UTF-8
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(hf[arch])
        for text in ("Hello, how are you today? 1234 5678", "café naïve 🦙 def main():\n  x"):
            assert run.model.tokenize(text) == tok(text, add_special_tokens=False)["input_ids"]
        assert run.model.tokenize("<|im_start|>user") == tok("<|im_start|>user",
                                                             add_special_tokens=False)["input_ids"]
        assert run.model.add_bos is (arch == "llama")
        assert "<|im_start|>" in (run.model.chat_template() or "")
    finally:
        run.close()


def test_convert_types_and_metadata(hf, ggufs, tmp_path):
    """f16 and q8_0 outputs: norms stay F32, weights have the type asked for and the values
    of the f32 conversion; the hub source is recorded."""
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from llmp.models.convert import convert

    f32 = {t.name: np.array(t.data) for t in GGUFReader(ggufs["llama"]).tensors}
    for outtype, qtype, tol in (("f16", Q.F16, 1e-3), ("q8_0", Q.Q8_0, 0.02)):
        path = convert(hf["llama"], tmp_path / f"m-{outtype}.gguf", outtype=outtype,
                       source="acme/tiny-llama")
        r = GGUFReader(path)
        tensors = {t.name: t for t in r.tensors}
        assert set(tensors) == set(f32)
        assert tensors["blk.0.attn_norm.weight"].tensor_type == Q.F32
        assert tensors["output_norm.weight"].tensor_type == Q.F32
        for name in ("blk.0.attn_q.weight", "blk.1.attn_k.weight", "token_embd.weight"):
            t = tensors[name]
            assert t.tensor_type == qtype
            values = dequantize(np.array(t.data), qtype).reshape(f32[name].shape)
            assert np.abs(values - f32[name]).max() < tol
        assert r.fields["tokenizer.ggml.pre"].contents() == "llama-bpe"
        assert r.fields["general.source.repo_url"].contents() == \
            "https://huggingface.co/acme/tiny-llama"
    run = LlamaRun(tmp_path / "m-f16.gguf")  # (Q8_0 matmuls crash this machine's llama.cpp)
    try:
        assert np.abs(run.logits(IDS) - hf_tiny.hf_logits(hf["llama"], IDS)).max() < 0.05
    finally:
        run.close()
    assert not list(tmp_path.glob("*.part"))


def test_unsupported_architecture_is_refused_by_name(tmp_path):
    from llmp.errors import InvalidRequestError
    from llmp.models.convert import convert

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(InvalidRequestError) as e:
        convert(tmp_path, tmp_path / "out.gguf")
    assert "GPT2LMHeadModel" in e.value.message and "Qwen2ForCausalLM" in e.value.message
    assert not (tmp_path / "out.gguf").exists()


def test_llama3_rope_freqs(hf, tmp_path):
    """Llama 3.1-style rope scaling becomes a rope_freqs tensor, and still matches."""
    import shutil

    from gguf import GGUFReader

    from llmp.models.convert import convert

    folder = tmp_path / "llama31"
    shutil.copytree(hf["llama"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    cfg["rope_parameters"] = rope
    cfg.pop("rope_scaling", None)
    (folder / "config.json").write_text(json.dumps(cfg))
    path = convert(folder, tmp_path / "l31.gguf", outtype="f32")
    assert "rope_freqs.weight" in {t.name for t in GGUFReader(path).tensors}
    run = LlamaRun(path)
    try:
        assert np.abs(run.logits(IDS) - hf_tiny.hf_logits(folder, IDS)).max() < TOL
    finally:
        run.close()


# --------------------------------------------------------------------------- adapters
@pytest.mark.parametrize("arch,lora", [("llama", "llama-lora"), ("llama", "llama-lora2"),
                                       ("qwen2", "qwen2-lora")])
def test_adapter_matches_peft(arch, lora, hf, ggufs):
    ref = hf_tiny.hf_logits(hf[arch], IDS, adapter=hf[lora])
    base = hf_tiny.hf_logits(hf[arch], IDS)
    assert np.abs(ref - base).max() > 0.5  # the adapter changes the output a lot
    run = LlamaRun(ggufs[arch], ggufs[lora])
    try:
        got = run.logits(IDS)
        assert np.abs(got - ref).max() < TOL, np.abs(got - ref).max()
    finally:
        run.close()
    run = LlamaRun(ggufs[arch], ggufs[lora], scale=0.0)
    try:
        assert np.abs(run.logits(IDS) - base).max() < TOL
    finally:
        run.close()


@pytest.fixture(scope="module")
def refused(hf, tmp_path_factory) -> dict[str, Path]:
    """PEFT folders llama.cpp cannot serve (made by PEFT itself) and mismatched ones."""
    root = tmp_path_factory.mktemp("refused")
    base = hf["llama"]
    out = {
        "dora": hf_tiny.make_lora(base, root / "dora", use_dora=True),
        "embeddings": hf_tiny.make_lora(base, root / "emb", targets=("q_proj", "embed_tokens")),
        "lm_head": hf_tiny.make_lora(base, root / "head", targets=("q_proj", "lm_head")),
        "modules_to_save": hf_tiny.make_lora(base, root / "mts", modules_to_save=["lm_head"]),
        "bias": hf_tiny.make_lora(base, root / "bias", bias="lora_only"),
        "architecture": hf["qwen2-lora"],
    }
    narrow = hf_tiny.make_model(root / "narrow", "llama", hidden=32)
    out["shape"] = hf_tiny.make_lora(narrow, root / "narrow-lora")
    return out


@pytest.mark.parametrize("kind,message", [
    ("dora", "DoRA"), ("embeddings", "embeddings"), ("lm_head", "lm_head"),
    ("modules_to_save", "modules_to_save"), ("bias", "bias"),
    ("architecture", "Qwen2ForCausalLM"), ("shape", "another model")])
def test_refused_adapters_register_nothing(kind, message, refused, ggufs, cli):
    assert cli("models", "add", ggufs["llama"], "--name", "base").exit_code == 0
    r = cli("models", "add-adapter", refused[kind], "--base", "base", "--name", "bad")
    assert r.exit_code != 0 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    listed = json.loads(cli("models", "list", "--json").stdout)
    assert [m["id"] for m in listed] == ["base"]


def test_cli_convert_add_adapter_and_remove(hf, ggufs, cli, llmp_home):
    r = cli("models", "convert", hf["llama"], "--outtype", "f32", "--name", "tl")
    assert r.exit_code == 0, r.stderr
    show = json.loads(cli("models", "show", "tl", "--json").stdout)
    assert show["details"]["hf_source"] == str(hf["llama"].resolve())
    assert show["details"]["architecture"] == "llama"
    # a PEFT folder (converted) and a GGUF adapter (checked, left in place)
    assert cli("models", "add-adapter", hf["llama-lora"], "--base", "tl", "--name", "tl-a1").exit_code == 0
    r = cli("models", "add-adapter", ggufs["llama-lora2"], "--base", "tl", "--name", "tl-a2",
            "--scale", "0.5")
    assert r.exit_code == 0, r.stderr
    a1 = json.loads(cli("models", "show", "tl-a1", "--json").stdout)
    assert a1["parent"] == a1["owned_by"] == "tl" and a1["lora_scale"] == 1.0
    assert Path(a1["details"]["path"]).parent == llmp_home / "adapters"
    assert json.loads(cli("models", "show", "tl-a2", "--json").stdout)["lora_scale"] == 0.5
    # an adapter cannot be a base; a GGUF adapter for another architecture is refused
    assert "is an adapter" in cli("models", "add-adapter", hf["llama-lora"], "--base", "tl-a1").stderr
    r = cli("models", "add-adapter", ggufs["qwen2-lora"], "--base", "tl", "--name", "x")
    assert r.exit_code != 0 and "qwen2" in r.stderr
    # the base cannot go while adapters need it; adapters can
    r = cli("models", "rm", "tl", "--yes")
    assert r.exit_code != 0 and "tl-a1" in r.stderr
    assert cli("models", "rm", "tl-a1", "--yes").exit_code == 0
    assert not Path(a1["details"]["path"]).exists()  # converted into the home: deleted
    assert cli("models", "rm", "tl-a2", "--yes").exit_code == 0
    assert ggufs["llama-lora2"].exists()  # outside the home: kept
    assert cli("models", "rm", "tl", "--yes").exit_code == 0


# --------------------------------------------------------------------------- serving
@pytest.fixture(scope="module")
def lora_server(hf, ggufs, tmp_path_factory):
    from conftest import start_server

    from llmp.models import registry

    with start_server(tmp_path_factory.mktemp("lora-home"), ggufs["llama"], n_slots=8) as srv:
        registry.register_adapter(srv.db, srv.settings, hf["llama-lora"], "tiny", model_id="a1")
        registry.register_adapter(srv.db, srv.settings, ggufs["llama-lora2"], "tiny",
                                  model_id="a2")
        yield srv


def _complete(client, model: str, prompt: list[int], n: int = 12) -> list[int]:
    r = client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0,
                                  logprobs=0, extra_body={"ignore_eos": True})
    return r.choices[0].logprobs.tokens  # type: ignore[union-attr]


def test_models_list_shows_adapters_with_their_base(lora_server):
    client = lora_server.openai()
    models = {m.id: m for m in client.models.list()}
    assert models["a1"].owned_by == "tiny" and models["a1"].model_extra["parent"] == "tiny"
    assert "parent" not in (models["tiny"].model_extra or {})


def test_base_and_two_adapters_at_once_match_each_alone(lora_server, ggufs):
    client = lora_server.openai()
    prompts = [[5, 17, 100, 200], [42, 7, 300], [12, 64, 250, 9, 33]]
    jobs = [(m, p) for m in ("tiny", "a1", "a2") for p in prompts]
    alone = {(m, tuple(p)): _complete(client, m, p) for m, p in jobs}
    # the adapters change the output (else this test would prove nothing)
    assert alone[("a1", tuple(prompts[0]))] != alone[("tiny", tuple(prompts[0]))]
    assert alone[("a2", tuple(prompts[0]))] != alone[("tiny", tuple(prompts[0]))]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
        together = list(ex.map(lambda j: _complete(client, j[0], j[1]), jobs * 2))
    for (m, p), got in zip(jobs * 2, together):
        assert got == alone[(m, tuple(p))], (m, p)
    # one base engine, the adapters loaded once each, the set switched between steps
    pool = lora_server.app[__import__("llmp.server.state", fromlist=["POOL"]).POOL]
    assert pool.loaded == ["tiny"]
    stats = pool.status()[0]
    assert stats["adapters_loaded"] == 2 and stats["adapter_switches_total"] >= 2
    # and llama.cpp alone with the adapter agrees with the server's greedy tokens
    run = LlamaRun(ggufs["llama"], ggufs["llama-lora"])
    try:
        ids = run.greedy(prompts[0], 12)
    finally:
        run.close()
    assert lora_server.run(_detok(pool, ids)) == "".join(alone[("a1", tuple(prompts[0]))])


async def _detok(pool, ids):
    eng = await pool.get("tiny")
    return eng.detokenize(ids)


def test_prefix_cache_is_keyed_by_adapter(lora_server):
    client = lora_server.openai()
    prompt = list(range(20, 60))
    client.completions.create(model="tiny", prompt=prompt, max_tokens=1, temperature=0)
    again = client.completions.create(model="tiny", prompt=prompt, max_tokens=1, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens > 0
    other = client.completions.create(model="a1", prompt=prompt, max_tokens=1, temperature=0)
    assert not (other.usage.prompt_tokens_details and other.usage.prompt_tokens_details.cached_tokens)


def test_removing_an_adapter_in_use(lora_server, hf):
    from llmp.models import registry

    registry.register_adapter(lora_server.db, lora_server.settings, hf["llama-lora"], "tiny",
                              model_id="a3")
    client = lora_server.openai()
    stream = client.completions.create(model="a3", prompt=[5, 17, 100], max_tokens=60,
                                       temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    chunks = iter(stream)
    first = next(chunks)
    assert first.model == "a3"
    rec, deleted = registry.remove(lora_server.db, lora_server.settings, "a3")
    assert deleted  # its GGUF was converted into the home
    rest = list(chunks)  # the running request finishes with the adapter it started with
    assert [c.choices[0].finish_reason for c in rest if c.choices][-1] == "length"
    import openai

    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="a3", prompt="hi", max_tokens=2)
    assert e.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert _complete(client, "a1", [5, 17]) and _complete(client, "tiny", [5, 17])


def test_serve_lora_option(hf, ggufs, llmp_home):
    """`llmp serve --lora NAME=PATH`: adapters outside the registry, on the --model base."""
    import os
    import re
    import signal
    import subprocess
    import sys

    import openai

    env = {**os.environ, "LLMP_HOME": str(llmp_home), "LLMP_N_SLOTS": "2", "LLMP_SLOT_CTX": "256"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from llmp.cli.main import run; run()", "serve", "--port", "0",
         "--model", str(ggufs["llama"]), "--lora", f"x={ggufs['llama-lora']}",
         "--lora", f"y={hf['llama-lora2']}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        lines, url, key = [], None, None
        while url is None or key is None:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, "".join(lines)
            lines.append(line)
            if m := re.search(r"(http://127\.0\.0\.1:\d+)/v1", line):
                url = m.group(1)
            if m := re.search(r"(sk-\w{32,})", line):
                key = m.group(1)
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        models = {m.id: m for m in client.models.list()}
        base = ggufs["llama"].stem
        assert models["x"].owned_by == base and models["y"].model_extra["parent"] == base
        assert client.models.retrieve("x").model_extra["parent"] == base
        run = LlamaRun(ggufs["llama"], ggufs["llama-lora"])
        try:
            want = run.model.detokenize(run.greedy([5, 17, 100], 8))
        finally:
            run.close()
        r = client.completions.create(model="x", prompt=[5, 17, 100], max_tokens=8,
                                      temperature=0, extra_body={"ignore_eos": True})
        assert r.model == "x" and r.choices[0].text == want
        assert client.completions.create(model="y", prompt="Hello", max_tokens=4).model == "y"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
