"""`llmp bench` end to end on the tiny preset (small numbers: it checks the plumbing)."""
from __future__ import annotations

import json


def test_bench_json_reports_every_target_and_level(cli):
    r = cli("bench", "--preset", "tiny", "--concurrency", "1,2", "--prompt-tokens", "8",
            "--gen-tokens", "4", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout[r.stdout.index("{"):])
    assert set(data["results"]) == {"llmp", "baseline"}
    for runs in data["results"].values():
        assert set(runs) == {"1", "2"}
        assert all(x["tokens"] >= 4 * 4 and x["tokens_per_s"] > 0 for x in runs.values())


def test_bench_rejects_bad_levels(cli):
    r = cli("bench", "--preset", "tiny", "--concurrency", "a,b")
    assert r.exit_code != 0 and "concurrency" in r.stderr


def test_bench_url_measures_a_running_server(cli, server, tiny_model_path):
    """`--url` loads any OpenAI-compatible server (here a real llmp) in the same run; the
    token count comes from the server's own usage, so it is exact."""
    r = cli("bench", "--model", str(tiny_model_path), "--url", server.url, "--url-model", "tiny",
            "--api-key", server.admin_key, "--concurrency", "1,3", "--prompt-tokens", "8",
            "--gen-tokens", "5", "--requests", "3", "--no-baseline", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout[r.stdout.index("{"):])
    assert set(data["results"]) == {"llmp", "url"}
    for level in ("1", "3"):
        url = data["results"]["url"][level]
        assert url["tokens"] == 3 * 5 and url["tokens_per_s"] > 0 and url["ttft_p50_ms"] > 0
