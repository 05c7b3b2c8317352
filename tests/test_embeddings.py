"""/v1/embeddings on a synthetic llama-architecture embedding model: shapes, unit norm,
equality with llama-cpp-python's own `Llama(..., embedding=True).embed`, base64, dimensions,
100 inputs batched into few decodes, token inputs, OpenAI's schema, the official client,
wrong-kind models, usage rows, batches and `llmp embed`."""
from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest

from llmp.models import registry
from llmp.models.synth import synthesize
from llmp.server.state import POOL, WRITER

from schema_check import check

TEXTS = ["Hello, how are you today?", "The quick brown fox jumps over the lazy dog.",
         "def fibonacci(n): return n", "Bonjour 🙂"]


@pytest.fixture(scope="module")
def embed_paths(tmp_path_factory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("embed-models")
    return {p: synthesize("embed", d / f"embed-{p}.gguf", pooling=p) for p in ("mean", "cls", "last")}


@pytest.fixture(scope="module")
def esrv(server, embed_paths):
    """The module's server with the mean-pooling embedding model registered as "embed"."""
    if not server.db["models"].count_where("id = ?", ["embed"]):
        registry.register(server.db, embed_paths["mean"], model_id="embed")
    return server


def llama_embed(path, texts: list[str]) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), embedding=True, n_ctx=512, verbose=False)
    try:
        return np.array(llm.embed(texts, normalize=True), dtype=np.float64)
    finally:
        llm.close()


def post(srv, body: dict, key: str = "admin"):
    return srv.request("POST", "/v1/embeddings", json=body, key=key)


def vectors(body: dict) -> np.ndarray:
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float64)


# --------------------------------------------------------------------------- the model
def test_synth_embed_registers_as_embedding_model(embed_paths):
    from llmp.config import load_settings
    from llmp.db import open_home

    db = open_home(load_settings().ensure_dirs())
    rec = registry.register(db, embed_paths["mean"], model_id="e")
    assert rec["category"] == "embedding" and rec["capabilities"] == ["embeddings"]
    assert not rec["chat_template"]


def test_cli_synth_embed(cli, tmp_path):
    out = tmp_path / "e.gguf"
    r = cli("models", "synth", "--preset", "embed", "--pooling", "last", "-o", out, "--register",
            "--name", "my-embed")
    assert r.exit_code == 0, r.stderr
    r = cli("models", "list", "--json")
    assert r.exit_code == 0
    assert [m["category"] for m in json.loads(r.stdout) if m["id"] == "my-embed"] == \
        ["embedding"]


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_engine_equals_llama_cpp_python(embed_paths, pooling):
    """The engine's pooled vectors equal llama-cpp-python's for each pooling, and several
    inputs go into one decode."""
    from llmp.config import load_settings
    from llmp.engine.embed import EmbeddingEngine

    path = embed_paths[pooling]
    eng = EmbeddingEngine.load("e", str(path), load_settings())
    try:
        assert eng.pooling == pooling and eng.truncatable
        toks = [eng.tokenize(t) for t in TEXTS]
        got = asyncio.run(eng.embed(toks)).astype(np.float64)
        assert eng.stats()["decodes_total"] == 1
    finally:
        eng.close()
    assert got.shape == (len(TEXTS), 256)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    want = llama_embed(path, TEXTS)
    assert np.allclose(got, want, atol=2e-4), np.abs(got - want).max()


# --------------------------------------------------------------------------- the endpoint
def test_shape_norm_schema_and_llama_cpp_equality(esrv, embed_paths):
    st, _, body = post(esrv, {"model": "embed", "input": TEXTS})
    assert st == 200, body
    check(body, "CreateEmbeddingResponse")
    assert body["object"] == "list" and body["model"] == "embed"
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    v = vectors(body)
    assert v.shape == (len(TEXTS), 256)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.allclose(v, llama_embed(embed_paths["mean"], TEXTS), atol=2e-4)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(TEXTS)


def test_single_string_and_token_inputs(esrv):
    st, _, one = post(esrv, {"model": "embed", "input": TEXTS[0]})
    assert st == 200 and len(one["data"]) == 1
    ids = esrv.run(_tokens(esrv, TEXTS[:2]))
    st, _, flat = post(esrv, {"model": "embed", "input": ids[0]})
    assert st == 200 and len(flat["data"]) == 1
    st, _, nested = post(esrv, {"model": "embed", "input": ids})
    assert st == 200 and len(nested["data"]) == 2
    assert np.allclose(vectors(one)[0], vectors(flat)[0], atol=1e-6)
    assert np.allclose(vectors(nested)[0], vectors(one)[0], atol=1e-6)
    assert flat["usage"]["prompt_tokens"] == len(ids[0])


async def _tokens(srv, texts):
    eng = await srv.app[POOL].get("embed")
    return [eng.tokenize(t) for t in texts]


def test_base64_round_trip(esrv):
    _, _, f = post(esrv, {"model": "embed", "input": TEXTS, "encoding_format": "float"})
    st, _, b = post(esrv, {"model": "embed", "input": TEXTS, "encoding_format": "base64"})
    assert st == 200
    dec = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                    for d in b["data"]])
    assert dec.shape == (len(TEXTS), 256)
    assert np.array_equal(dec.astype(np.float64), vectors(f))


def test_dimensions(esrv):
    _, _, full = post(esrv, {"model": "embed", "input": TEXTS})
    st, _, cut = post(esrv, {"model": "embed", "input": TEXTS, "dimensions": 64})
    assert st == 200, cut
    v = vectors(cut)
    assert v.shape == (len(TEXTS), 64)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    f = vectors(full)[:, :64]
    assert np.allclose(v, f / np.linalg.norm(f, axis=1, keepdims=True), atol=1e-5)
    st, _, same = post(esrv, {"model": "embed", "input": TEXTS, "dimensions": 256})
    assert st == 200 and np.allclose(vectors(same), vectors(full))
    for bad in (257, 0, -1, "8", 1.5):
        st, _, err = post(esrv, {"model": "embed", "input": "x", "dimensions": bad})
        assert st == 400 and err["error"]["param"] == "dimensions", (bad, err)


def test_dimensions_refused_when_model_not_truncatable(esrv, tmp_path):
    path = synthesize("embed", tmp_path / "plain.gguf", truncatable=False)
    registry.register(esrv.db, path, model_id="embed-plain")
    st, _, err = post(esrv, {"model": "embed-plain", "input": "hi", "dimensions": 32})
    assert st == 400 and err["error"]["param"] == "dimensions"
    assert "does not support 'dimensions'" in err["error"]["message"]
    st, _, ok = post(esrv, {"model": "embed-plain", "input": "hi"})
    assert st == 200 and len(ok["data"][0]["embedding"]) == 256


def test_hundred_inputs_share_a_few_decodes(esrv):
    texts = [f"input number {i} about the sea" for i in range(100)]
    before = esrv.run(_stats(esrv))["decodes_total"]
    st, _, body = post(esrv, {"model": "embed", "input": texts})
    assert st == 200 and len(body["data"]) == 100
    assert [d["index"] for d in body["data"]] == list(range(100))
    decodes = esrv.run(_stats(esrv))["decodes_total"] - before
    assert 1 <= decodes <= 2, decodes  # not one call per input
    v = vectors(body)
    _, _, single = post(esrv, {"model": "embed", "input": texts[37]})
    assert np.allclose(v[37], vectors(single)[0], atol=2e-4)


async def _stats(srv):
    return (await srv.app[POOL].get("embed")).stats()


def test_bad_inputs(esrv):
    for body, param in (({"model": "embed", "input": ""}, "input"),
                        ({"model": "embed", "input": []}, "input"),
                        ({"model": "embed", "input": [""]}, "input"),
                        ({"model": "embed", "input": [[]]}, "input"),
                        ({"model": "embed", "input": [10 ** 9]}, "input"),
                        ({"model": "embed", "input": "x", "encoding_format": "f16"},
                         "encoding_format"),
                        ({"input": "x"}, "model")):
        st, _, err = post(esrv, body)
        assert st == 400 and err["error"]["param"].startswith(param), (body, err)


def test_wrong_kind_of_model_is_a_clear_400(esrv):
    st, _, err = post(esrv, {"model": "tiny", "input": "hi"})
    assert st == 400 and err["error"]["code"] == "model_not_supported"
    assert "not an embedding model" in err["error"]["message"]
    for path, body in (("/v1/chat/completions",
                        {"model": "embed", "messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"model": "embed", "prompt": "hi"})):
        st, _, err = esrv.request("POST", path, json=body)
        assert st == 400 and err["error"]["code"] == "model_not_supported", err
        assert "/v1/embeddings" in err["error"]["message"]


def test_permission_rate_limit_headers_and_usage(esrv):
    no = esrv.make_key(permissions=["models.read"])
    st, _, err = post(esrv, {"model": "embed", "input": "hi"}, key=no)
    assert st == 403
    key = esrv.make_key(permissions=["inference"])
    st, headers, body = post(esrv, {"model": "embed", "input": ["a b c", "d e"]}, key=key)
    assert st == 200 and headers.get("X-RateLimit-Limit-Requests")
    esrv.app[WRITER].flush()
    rows = list(esrv.db.query("select * from usage where endpoint = '/v1/embeddings' and "
                              "model = 'embed' and status = 200 order by rowid desc limit 1"))
    assert rows and rows[0]["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert rows[0]["completion_tokens"] == 0


def test_openai_client(esrv):
    client = esrv.openai()
    res = client.embeddings.create(model="embed", input=TEXTS[:3])  # base64 by default
    assert len(res.data) == 3 and len(res.data[0].embedding) == 256
    _, _, f = post(esrv, {"model": "embed", "input": TEXTS[:3]})
    assert np.allclose(np.array([d.embedding for d in res.data]), vectors(f), atol=1e-6)
    res = client.embeddings.create(model="embed", input="hi", encoding_format="float",
                                   dimensions=32)
    assert len(res.data[0].embedding) == 32 and res.usage.prompt_tokens > 0


def test_batch_of_embeddings(esrv):
    from test_batches import results, wait

    client = esrv.openai()
    lines = [{"custom_id": f"e-{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "embed", "input": [f"text {i}", "more"]}} for i in range(5)]
    f = client.files.create(file=("in.jsonl", io.BytesIO(
        b"".join(json.dumps(x).encode() + b"\n" for x in lines))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings",
                              completion_window="24h")
    done = wait(client, b.id)
    assert done.status == "completed", done
    out = results(client, done.output_file_id)
    assert [r["custom_id"] for r in out] == [f"e-{i}" for i in range(5)]
    for r in out:
        body = r["response"]["body"]
        assert r["response"]["status_code"] == 200
        check(body, "CreateEmbeddingResponse")
        assert len(body["data"]) == 2


def test_cli_embed(esrv, cli, monkeypatch):
    monkeypatch.setenv("LLMP_URL", esrv.url)
    monkeypatch.setenv("LLMP_API_KEY", esrv.admin_key)
    r = cli("embed", "hello", "world", "--model", "embed", "--json")
    assert r.exit_code == 0, r.stderr
    body = json.loads(r.stdout)
    assert len(body["data"]) == 2 and len(body["data"][0]["embedding"]) == 256
    r = cli("embed", "-", "--model", "embed", "--dimensions", "16", input="from stdin")
    assert r.exit_code == 0 and "16 dims" in r.stdout, r.stdout + r.stderr
    r = cli("embed", "hi", "--model", "tiny")
    assert r.exit_code != 0 and "not an embedding model" in r.stderr
