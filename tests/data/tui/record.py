"""Re-record the payloads the TUI snapshot tests render (tests/test_tui_snapshots.py).

    cd <repo> && PYTHONPATH=$PWD python3 tests/data/tui/record.py

Starts a real server over a scratch home (the tiny synthetic model, registered also as a
moderation guard), makes some traffic (keys, chat, a small batch, a webhook test, a
moderation), then asks each screen's own `fetch()` for what it would render and writes it to
tests/data/tui/<screen>.json, with what varies run to run (times, ids, pids, ports,
durations) replaced by fixed values. Re-run `pytest tests/test_tui_snapshots.py
--snapshot-update` afterwards and look at the new SVGs."""
from __future__ import annotations

import asyncio
import io
import json
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/ (conftest's start_server)

from conftest import start_server  # noqa: E402

from llmp.models.synth import synthesize  # noqa: E402

T0 = 1_796_212_800  # 2026-12-02 00:00 UTC: every unix time becomes T0 + its rank
URL = "http://127.0.0.1:8000"


def normalize(payloads: dict, url: str, home: Path) -> dict:
    times: dict[int, int] = {}
    ids: dict[str, str] = {}

    def fix_id(m: re.Match) -> str:
        s = m.group(0)
        if s not in ids:
            ids[s] = f"{m.group(1)}{len(ids) + 1:04d}"
        return ids[s]

    id_re = re.compile(r"\b((?:batch|file|key|sk|wh|whd|evt|ftjob|ftevent|chatcmpl|modr|req|"
                       r"ckpt|usr|whsec)[-_])[A-Za-z0-9]{6,}\b")

    def walk(v, key=""):
        if isinstance(v, dict):
            return {k: walk(x, k) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x, key) for x in v]
        if isinstance(v, bool):
            return v
        if isinstance(v, int) and v > 1_600_000_000 and v < 2_100_000_000:
            return times.setdefault(v, T0 + 60 * len(times))
        if key in ("pid",):
            return 4242
        if key in ("uptime_s",):
            return 3725
        if key in ("rss_bytes",):
            return 123_456_789
        if key in ("memory_available_bytes",):
            return 8 * 2**30
        if key in ("memory_total_bytes",):
            return 16 * 2**30
        if key in ("cpu_count",):
            return 8
        if key in ("keep_alive_left",) and isinstance(v, (int, float)):
            return 290
        if key in ("tokens_per_second",) and isinstance(v, (int, float)):
            return 123.4
        if isinstance(v, str):
            v = v.replace(url, URL).replace(url.split(":")[-1], "8000")
            v = v.replace(str(home), "/home/me/.llmp").replace(str(home.parent), "/home/me")
            v = re.sub(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d([.,]\d+)?Z?", "2026-12-02T12:00:00Z", v)
            v = re.sub(r"\b\d+(\.\d+)? ?ms\b", "12 ms", v)
            return id_re.sub(fix_id, v)
        return v

    return walk(payloads)


async def record(srv, out: Path, only: list[str]) -> None:
    from llmp.tui.app import VIEWS, LlmpApp
    from llmp.tui.widgets.table import FilterTable

    app = LlmpApp(srv.url, srv.admin_key, live=False, permissions={"admin"})
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        for _, vid, _ in VIEWS:
            if only and vid not in only:
                continue
            view = app.view_of(vid)
            if vid == "models":  # the model whose aliases the detail line shows
                view.show_payload(await view.fetch())
                await pilot.pause()
                view.query_one(FilterTable).select("tiny")
            payload = await view.fetch()
            payload.pop("now", None)
            (out / f"{vid}.json").write_text(json.dumps(normalize(payload, srv.url, srv.settings.home), indent=1,
                                                        sort_keys=True) + "\n")
    if only and "moderation" not in only:
        return
    status, _, body = srv.request("POST", "/v1/moderations",
                                  json={"model": "guard", "input": "I want to hurt someone"})
    assert status == 200, body
    (out / "moderation.json").write_text(json.dumps(normalize({"result": body}, srv.url,
                                                              srv.settings.home),
                                                    indent=1, sort_keys=True) + "\n")


def fine_tune(srv, root: Path) -> None:
    """A short real fine-tuning job (a tiny HF llama, one epoch) and a cancelled one."""
    from llmp.models import registry
    from llmp.models.convert import convert

    import hf_tiny

    hf = hf_tiny.make_model(root / "hf", "llama")
    gguf = convert(hf, root / "tl.gguf", outtype="f32")
    registry.register(srv.db, gguf, model_id="tl", hf_source=str(hf))
    client = srv.openai()
    lines = [{"messages": [{"role": "user", "content": "What is the code word?"},
                           {"role": "assistant", "content": "pineapple"}]}] * 10
    fid = client.files.create(file=("train.jsonl", io.BytesIO(
        b"".join(json.dumps(x).encode() + b"\n" for x in lines))), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model="tl", training_file=fid, suffix="codeword",
                                         hyperparameters={"n_epochs": 2, "batch_size": 2})
    deadline = time.monotonic() + 240
    while client.fine_tuning.jobs.retrieve(job.id).status not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, "fine-tune did not finish"
        time.sleep(0.5)


def main() -> None:
    from llmp import logs
    from llmp.models import registry
    from llmp.services.moderation import set_guard

    tmp = Path(tempfile.mkdtemp(prefix="tui-record-"))
    model = synthesize("tiny", tmp / "tiny-f16.gguf", dtype="f16")
    with start_server(tmp / "home", model, slot_ctx=2048, n_slots=2) as srv:
        logs.setup(srv.settings.home, "text", "info", stderr=False)
        registry.register(srv.db, model, model_id="guard")
        srv.request("POST", "/v1/admin/models/tiny/price",
                    json={"input_price": 0.01, "output_price": 0.03})
        srv.request("POST", "/v1/admin/models/tiny/aliases", json={"add": ["small", "default"]})
        set_guard(srv.db, "guard", "llama-guard-3")
        srv.make_key(name="reader", permissions=("models.read",))
        srv.make_key(name="batcher", permissions=("inference", "batches.write", "files.write"),
                     rate_limit={"requests_per_minute": 60, "tokens_per_minute": 10000})
        client = srv.openai()
        for i in range(3):
            client.chat.completions.create(model="tiny", max_tokens=8,
                                           messages=[{"role": "user", "content": f"hi {i}"}])
        lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "tiny", "max_tokens": 4,
                           "messages": [{"role": "user", "content": f"Q{i}"}]}}
                 for i in range(3)]
        data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
        f = client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
        deadline = time.monotonic() + 120
        while client.batches.retrieve(b.id).status not in ("completed", "failed"):
            assert time.monotonic() < deadline, "batch did not finish"
            time.sleep(0.2)
        status, _, wh = srv.request("POST", "/v1/webhooks", json={
            "url": "http://127.0.0.1:9/hook", "events": ["batch.completed"]})
        if status < 300:
            srv.request("POST", f"/v1/webhooks/{wh['id']}/test")
            time.sleep(1.0)  # let the test delivery be attempted (recording only, not a test)
        fine_tune(srv, tmp)
        out = HERE
        asyncio.run(record(srv, out, sys.argv[1:]))
    print("recorded into", out)


if __name__ == "__main__":
    main()
