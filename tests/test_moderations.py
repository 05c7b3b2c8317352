"""/v1/moderations on a guard model: the guard profiles' prompts byte for byte against the
real templates, verdict parsing, the mapping table, P(unsafe) against a softmax computed
from llama-cpp-python's logits, and end to end on the tiny synthetic model registered as a
guard (random verdicts: the shape, scores in [0, 1], `flagged` consistent with
`categories`), permissions, usage, the openai client and `llmp moderate`."""
from __future__ import annotations

import asyncio
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import start_server

from llmp.engine import guard as guard_mod
from llmp.engine.guard import OPENAI_CATEGORIES, PROFILES, Verdict
from llmp.models import guards
from llmp.server.state import WRITER

from schema_check import check

DATA = Path(__file__).parent / "data" / "guard"
TEXT = "I want to hurt someone"


# --------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("text", [TEXT, "  spaced out \n", "multi\nline <b>text</b> ünïcode 🙂"])
def test_llama_guard_3_prompt_is_its_chat_template(text):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment()

    def raise_exception(msg):
        raise ValueError(msg)

    tpl = env.from_string((DATA / "llama-guard-3-8b.jinja").read_text())
    want = tpl.render(messages=[{"role": "user", "content": text}],
                      raise_exception=raise_exception)
    assert PROFILES["llama-guard-3"].render(text) == want


@pytest.mark.parametrize("text", [TEXT, "  spaced out \n", "multi\nline ünïcode 🙂"])
def test_llama_guard_3_1b_prompt_is_its_chat_template(text):
    """The 1B template takes the content as a list of text parts."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise ValueError(msg)

    tpl = ImmutableSandboxedEnvironment().from_string(
        (DATA / "llama-guard-3-1b.jinja").read_text())
    want = tpl.render(messages=[{"role": "user", "content": [{"type": "text", "text": text}]}],
                      raise_exception=raise_exception)
    assert PROFILES["llama-guard-3-1b"].render(text) == want
    assert "S14" not in want


@pytest.mark.parametrize("text", [TEXT, "two\n\nparagraphs"])
def test_qwen3_guard_prompt_is_its_chat_template(text):
    want = (DATA / "qwen3guard-gen-prompt.txt").read_text().replace("{{TEXT}}", text)
    assert PROFILES["qwen3-guard"].render(text) == want


def test_guard_detected_when_registered(tmp_path):
    """A GGUF whose metadata names a guard family is registered as a guard."""
    from llmp.config import load_settings
    from llmp.db import open_home
    from llmp.models import registry
    from llmp.models.synth import synthesize

    db = open_home(load_settings().ensure_dirs())
    path = synthesize("tiny", tmp_path / "lg.gguf", name="Llama Guard 3 8B (synthetic)")
    assert registry.register(db, path, model_id="lg")["guard_profile"] == "llama-guard-3"
    plain = synthesize("tiny", tmp_path / "plain.gguf")
    assert registry.register(db, plain, model_id="plain").get("guard_profile") is None


def test_detect_profile_from_metadata():
    tpl = (DATA / "llama-guard-3-8b.jinja").read_text()
    assert guards.detect("Llama Guard 3 8B", None) == "llama-guard-3"
    assert guards.detect("model", tpl) == "llama-guard-3"
    assert guards.detect("Qwen3Guard-Gen-0.6B", None) == "qwen3-guard"
    assert guards.detect("tiny", "{{ messages }}") is None
    assert guards.detect("Llama Guard 3 1B", None) == "llama-guard-3-1b"
    assert guards.detect("model", (DATA / "llama-guard-3-1b.jinja").read_text()) == \
        "llama-guard-3-1b"


# --------------------------------------------------------------------------- verdicts
@pytest.mark.parametrize("output,want", [
    ("safe", Verdict(False, (), "safe")),
    ("\n\nsafe", Verdict(False, (), "safe")),
    ("  Safe  \n", Verdict(False, (), "safe")),
    ("\n\nunsafe\nS1", Verdict(True, ("S1",), "unsafe")),
    ("unsafe\nS1,S10", Verdict(True, ("S1", "S10"), "unsafe")),
    ("unsafe\n s2 , S14 ,S2", Verdict(True, ("S2", "S14"), "unsafe")),
    ("unsafe", Verdict(True, (), "unsafe")),
    ("unsafe\nS99,X1", Verdict(True, (), "unsafe")),
    ("unsafe\n\nS3", Verdict(True, ("S3",), "unsafe")),
    ("", Verdict(None)),
    ("I cannot help with that", Verdict(None, (), "I cannot help with that")),
    ("safety first", Verdict(None, (), "safety first")),
])
def test_llama_guard_verdicts(output, want):
    assert PROFILES["llama-guard-3"].parse(output) == want


@pytest.mark.parametrize("output,want", [
    ("Safety: Safe\nCategories: None", Verdict(False, (), "Safe")),
    ("Safety: Unsafe\nCategories: Violent, PII", Verdict(True, ("Violent", "PII"), "Unsafe")),
    ("Safety: unsafe\nCategories: suicide & self-harm.", Verdict(True, ("Suicide & Self-Harm",),
                                                                 "Unsafe")),
    ("Safety: Controversial\nCategories: Jailbreak", Verdict(False, ("Jailbreak",),
                                                            "Controversial")),
    ("Safety: Unsafe", Verdict(True, (), "Unsafe")),
    ("Safety: Unsafe\nCategories: Aliens", Verdict(True, (), "Unsafe")),
    ("Categories: Violent", Verdict(None)),
    ("", Verdict(None)),
])
def test_qwen3_guard_verdicts(output, want):
    assert PROFILES["qwen3-guard"].parse(output) == want


def test_mapping_table():
    """Every guard category has a mapping onto OpenAI's categories, and the table in the
    module's documentation says the same as the code."""
    doc = guard_mod.__doc__
    for prof in PROFILES.values():
        assert set(prof.mapping) == set(prof.categories)
        for code, cats in prof.mapping.items():
            assert set(cats) <= set(OPENAI_CATEGORIES), code
    rows = re.findall(r"^\| (S\d+) +\| [^|]+\| ([^|]+)\|$", doc, re.MULTILINE)
    assert len(rows) == 14
    for code, cats in rows:
        documented = set() if "(none)" in cats else {c.strip() for c in cats.split(",")}
        assert documented == set(PROFILES["llama-guard-3"].mapping[code]), code
    qrows = re.findall(r"^\| ([A-Z][^|]+?) +\| ([^|]+)\|$", doc, re.MULTILINE)
    qrows = {a.strip(): b for a, b in qrows if a.strip() in guard_mod.QWEN3_GUARD_CATEGORIES}
    assert len(qrows) == 9
    for name, cats in qrows.items():
        documented = set() if "(none)" in cats else {c.strip() for c in cats.split(",")}
        assert documented == set(PROFILES["qwen3-guard"].mapping[name]), name


def test_result_body_flags_follow_categories():
    from llmp.services.moderation import GuardResult, result_body

    prof = PROFILES["llama-guard-3"]
    limits = {c: 0.5 for c in OPENAI_CATEGORIES}
    r = GuardResult(Verdict(True, ("S10", "S7")), "unsafe\nS10,S7", 0.9,
                    {"S1": 0.7, "S10": 0.2, "S7": 0.1}, 10, 3)
    body = result_body(prof, r, limits)
    assert body["categories"]["hate"] and body["categories"]["violence"]  # named / over 0.5
    assert body["category_scores"]["violence"] == pytest.approx(0.63)
    assert body["category_scores"]["illicit/violent"] == pytest.approx(0.63)
    assert body["category_scores"]["hate"] == pytest.approx(0.18)
    assert body["category_scores"]["self-harm"] == 0.0 and not body["categories"]["self-harm"]
    assert body["flagged"]
    safe = result_body(prof, GuardResult(Verdict(False), "safe", 0.1, {"S1": 1.0}, 10, 1), limits)
    assert not safe["flagged"] and not any(safe["categories"].values())
    assert safe["category_scores"]["violence"] == pytest.approx(0.1)


# --------------------------------------------------------------------------- scores
def test_p_unsafe_is_the_softmax_of_the_logits(tiny_model_path):
    """P(unsafe) equals the softmax over the safe/unsafe first tokens' logits, computed here
    from llama-cpp-python's own logits for the same tokens; category probabilities sum to 1."""
    import llama_cpp

    from llmp.config import load_settings
    from llmp.engine.engine import Engine
    from llmp.services.moderation import classify

    prof = PROFILES["llama-guard-3"]
    eng = Engine.load("g", str(tiny_model_path), load_settings(), n_slots=2, n_ctx=4096)
    try:
        prompt = eng.tokenize(prof.render(TEXT), add_special=False, parse_special=True)
        prefix = prompt + eng.tokenize(prof.verdict_prefix, parse_special=False)
        t_safe = eng.tokenize(prof.safe_word, parse_special=False)[0]
        t_unsafe = eng.tokenize(prof.unsafe_word, parse_special=False)[0]
        res = asyncio.run(classify(eng, prof, prompt))
        lps = asyncio.run(eng.score(prefix, [t_safe, t_unsafe]))
    finally:
        eng.close()
    llm = llama_cpp.Llama(str(tiny_model_path), n_ctx=2048, logits_all=True, verbose=False)
    try:
        llm.eval(prefix)
        logits = np.array(llm.scores[len(prefix) - 1], dtype=np.float64)
    finally:
        llm.close()
    pair = logits[[t_safe, t_unsafe]]
    want = \
        float(np.exp(pair[1] - pair.max()) / np.exp(pair - pair.max()).sum())
    assert t_safe != t_unsafe
    assert res.p_unsafe == pytest.approx(want, abs=1e-4)
    full = logits - (logits.max() + math.log(np.exp(logits - logits.max()).sum()))
    assert lps == pytest.approx([full[t_safe], full[t_unsafe]], abs=5e-3)
    assert sum(res.code_probs.values()) == pytest.approx(1.0)
    assert res.verdict.unsafe is not None  # the grammar keeps the output readable


# --------------------------------------------------------------------------- the endpoint
@pytest.fixture(scope="module")
def gsrv(tiny_model_path, tmp_path_factory):
    """A server whose tiny model is registered as a guard (llama-guard-3) too: "guard"."""
    from llmp.models import registry
    from llmp.services.moderation import set_guard

    with start_server(tmp_path_factory.mktemp("guard-home"), tiny_model_path, slot_ctx=2048,
                      n_slots=4) as srv:
        registry.register(srv.db, tiny_model_path, model_id="guard")
        set_guard(srv.db, "guard", "llama-guard-3")
        yield srv


def test_guard_listed_as_such(gsrv):
    st, _, m = gsrv.request("GET", "/v1/models/guard")
    assert st == 200 and m["guard_profile"] == "llama-guard-3"
    st, _, m = gsrv.request("GET", "/v1/models/tiny")
    assert st == 200 and "guard_profile" not in m


def _check_result(r: dict) -> None:
    assert set(r["categories"]) == set(OPENAI_CATEGORIES) == set(r["category_scores"])
    assert all(0.0 <= v <= 1.0 for v in r["category_scores"].values())
    assert r["flagged"] == any(r["categories"].values())
    assert r["category_applied_input_types"] == {c: ["text"] for c in OPENAI_CATEGORIES}
    assert 0.0 <= r["guard"]["unsafe_probability"] <= 1.0


def test_no_guard_is_a_clear_4xx(server):
    st, _, err = server.request("POST", "/v1/moderations", json={"input": "hello"})
    assert st == 404 and err["error"]["code"] == "guard_not_configured"
    assert "llmp models set-guard" in err["error"]["message"]
    st, _, err = server.request("POST", "/v1/moderations",
                                json={"input": "hi", "model": "tiny"})
    assert st == 400 and err["error"]["code"] == "model_not_supported"


@pytest.mark.parametrize("model", ["omni-moderation-latest", "text-moderation-latest",
                                   "text-moderation-stable", "guard", None])
def test_moderation_shapes(gsrv, model):
    body = {"input": TEXT} if model is None else {"input": TEXT, "model": model}
    st, _, resp = gsrv.request("POST", "/v1/moderations", json=body)
    assert st == 200, resp
    check(resp, "CreateModerationResponse")
    assert resp["id"].startswith("modr-") and resp["model"] == (model or "omni-moderation-latest")
    assert len(resp["results"]) == 1
    _check_result(resp["results"][0])


def test_array_and_text_parts(gsrv):
    st, _, resp = gsrv.request("POST", "/v1/moderations",
                               json={"input": ["hello there", TEXT, "good morning"]})
    assert st == 200 and len(resp["results"]) == 3
    for r in resp["results"]:
        _check_result(r)
    st, _, parts = gsrv.request("POST", "/v1/moderations", json={
        "input": [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]})
    assert st == 200 and len(parts["results"]) == 1
    check(parts, "CreateModerationResponse")
    st, _, err = gsrv.request("POST", "/v1/moderations", json={
        "input": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]})
    assert st == 400 and err["error"]["param"].startswith("input")
    for bad in ({"input": []}, {"input": 5}, {}, {"input": [{"type": "text"}]}):
        st, _, err = gsrv.request("POST", "/v1/moderations", json=bad)
        assert st == 400, (bad, err)


def test_verdict_drives_categories(gsrv):
    """Whatever the random guard says, a category it names (mapped) is flagged."""
    st, _, resp = gsrv.request("POST", "/v1/moderations", json={"input": TEXT, "model": "guard"})
    r = resp["results"][0]
    prof = PROFILES["llama-guard-3"]
    for code in r["guard"]["categories"]:
        for c in prof.mapping[code]:
            assert r["categories"][c]
    if r["guard"]["label"] == "safe":
        assert all(r["categories"][c] == (r["category_scores"][c] >= 0.5)
                   for c in OPENAI_CATEGORIES)


def test_permission_and_usage(gsrv):
    inference_only = gsrv.make_key(permissions=["inference"])
    st, _, err = gsrv.request("POST", "/v1/moderations", json={"input": "hi"},
                              key=inference_only)
    assert st == 403 and "moderation" in err["error"]["message"]
    key = gsrv.make_key(permissions=["moderation"])
    st, headers, resp = gsrv.request("POST", "/v1/moderations", json={"input": "hi"}, key=key)
    assert st == 200 and headers.get("X-RateLimit-Limit-Requests")
    gsrv.app[WRITER].flush()
    rows = list(gsrv.db.query("select * from usage where endpoint = '/v1/moderations' and "
                              "status = 200 order by rowid desc limit 1"))
    assert rows and rows[0]["model"] == "guard" and rows[0]["prompt_tokens"] > 100
    assert rows[0]["completion_tokens"] >= 1


def test_openai_client(gsrv):
    client = gsrv.openai()
    res = client.moderations.create(input=["hello", TEXT])
    assert len(res.results) == 2 and res.id.startswith("modr-")
    for r in res.results:
        d = r.categories.model_dump(by_alias=True)
        assert r.flagged == any(d.values())


def test_cli_set_guard_and_moderate(gsrv, cli, monkeypatch, tiny_model_path):
    r = cli("models", "add", tiny_model_path, "--name", "g2")
    assert r.exit_code == 0, r.stderr
    r = cli("models", "set-guard", "g2")  # nothing in its metadata says which family
    assert r.exit_code != 0 and "--profile" in r.stderr
    r = cli("models", "set-guard", "g2", "--profile", "qwen3-guard")
    assert r.exit_code == 0 and "qwen3-guard" in r.stdout, r.stderr
    r = cli("models", "set-guard", "g2", "--profile", "nope")
    assert r.exit_code != 0 and "llama-guard-3" in r.stderr
    monkeypatch.setenv("LLMP_URL", gsrv.url)
    monkeypatch.setenv("LLMP_API_KEY", gsrv.admin_key)
    r = cli("moderate", TEXT, "--json")
    assert r.exit_code == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["results"][0]["flagged"] == any(body["results"][0]["categories"].values())
    r = cli("moderate", "-", input="some text from stdin")
    assert r.exit_code == 0 and "violence" in r.stdout and "input 0" in r.stdout, r.stdout


def test_batch_of_moderations(gsrv):
    import io

    from test_batches import results, wait

    client = gsrv.openai()
    lines = [{"custom_id": f"m-{i}", "method": "POST", "url": "/v1/moderations",
              "body": {"model": "omni-moderation-latest", "input": [f"text {i}", TEXT]}}
             for i in range(3)]
    f = client.files.create(file=("in.jsonl", io.BytesIO(
        b"".join(json.dumps(x).encode() + b"\n" for x in lines))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/moderations",
                              completion_window="24h")
    done = wait(client, b.id)
    assert done.status == "completed", done
    out = results(client, done.output_file_id)
    assert [r["custom_id"] for r in out] == [f"m-{i}" for i in range(3)]
    for r in out:
        body = r["response"]["body"]
        check(body, "CreateModerationResponse")
        assert len(body["results"]) == 2 and body["usage"]["prompt_tokens"] > 0
        for res in body["results"]:
            _check_result(res)
    # a key without the `moderation` permission: every line fails
    key = gsrv.make_key(permissions=["inference", "files.write", "batches.write",
                                     "batches.read", "files.read"])
    c2 = gsrv.openai(key)
    f = c2.files.create(file=("in.jsonl", io.BytesIO(json.dumps(lines[0]).encode() + b"\n")),
                        purpose="batch")
    b = c2.batches.create(input_file_id=f.id, endpoint="/v1/moderations",
                          completion_window="24h")
    done = wait(c2, b.id)
    assert done.request_counts.failed == 1, done


def test_input_moderation_per_key(gsrv):
    """A key with `moderate_input`: chat/completions input the guard flags is refused with
    400 content_policy_violation naming the categories (batch lines fail the same way); other
    keys are not checked."""
    import io

    from test_batches import results, wait

    perms = ["inference", "files.write", "files.read", "batches.write", "batches.read"]
    key = gsrv.make_key(permissions=perms, moderate_input=True)
    plain = gsrv.make_key(permissions=perms)
    chat = {"model": "tiny", "messages": [{"role": "user", "content": TEXT}], "max_tokens": 2}
    old = gsrv.settings.moderation_threshold
    gsrv.settings.moderation_threshold = 0.0  # every category's score reaches it: flagged
    try:
        st, _, err = gsrv.request("POST", "/v1/chat/completions", json=chat, key=key)
        assert st == 400 and err["error"]["code"] == "content_policy_violation", err
        assert "violence" in err["error"]["message"] and err["error"]["param"] == "messages"
        st, _, err = gsrv.request("POST", "/v1/completions",
                                  json={"model": "tiny", "prompt": TEXT, "max_tokens": 2},
                                  key=key)
        assert st == 400 and err["error"]["code"] == "content_policy_violation"
        st, _, ok = gsrv.request("POST", "/v1/chat/completions", json=chat, key=plain)
        assert st == 200, ok
        client = gsrv.openai(key)
        line = {"custom_id": "c-1", "method": "POST", "url": "/v1/chat/completions",
                "body": chat}
        f = client.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")),
                                purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
        done = wait(client, b.id)
        assert done.request_counts.failed == 1, done
        errs = results(client, done.error_file_id)
        assert errs[0]["response"]["body"]["error"]["code"] == "content_policy_violation"
    finally:
        gsrv.settings.moderation_threshold = old
    st, _, created = gsrv.request("POST", "/v1/auth/api-keys",
                                  json={"name": "m", "moderate_input": True})
    assert st in (200, 201) and created["moderate_input"] is True


def test_moderation_model_setting(gsrv):
    """`moderation_model` picks the guard OpenAI's names resolve to; one that is not a guard
    (or not registered) is a clear error."""
    old = gsrv.settings.moderation_model
    try:
        gsrv.settings.moderation_model = "tiny"
        st, _, err = gsrv.request("POST", "/v1/moderations", json={"input": "hi"})
        assert st == 400 and err["error"]["code"] == "model_not_supported"
        gsrv.settings.moderation_model = "nope"
        st, _, err = gsrv.request("POST", "/v1/moderations", json={"input": "hi"})
        assert st == 404
        gsrv.settings.moderation_model = "guard"
        st, _, ok = gsrv.request("POST", "/v1/moderations", json={"input": "hi"})
        assert st == 200 and ok["model"] == "omni-moderation-latest"
    finally:
        gsrv.settings.moderation_model = old


def test_cli_keys_create_moderate_input(gsrv, cli, monkeypatch):
    monkeypatch.setenv("LLMP_URL", gsrv.url)
    monkeypatch.setenv("LLMP_API_KEY", gsrv.admin_key)
    r = cli("keys", "create", "guarded", "-p", "inference", "--moderate-input", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["moderate_input"] is True


def test_thresholds_setting():
    from llmp.config import Settings
    from llmp.errors import ConfigError
    from llmp.services.moderation import thresholds

    t = thresholds(Settings(moderation_threshold=0.7,
                            moderation_thresholds="violence=0.2, hate=0.9"))
    assert t["violence"] == 0.2 and t["hate"] == 0.9 and t["sexual"] == 0.7
    with pytest.raises(ConfigError):
        thresholds(Settings(moderation_thresholds="violence=high"))
