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
