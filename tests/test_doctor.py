"""`llmp doctor`: the report as JSON and as a table."""
from __future__ import annotations

import json


def test_doctor(cli, tiny_model_path):
    assert cli("models", "add", tiny_model_path, "--name", "tiny").exit_code == 0
    res = cli("doctor", "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["llmp"] and report["python"]
    assert report["llama_cpp"]["version"] == "0.3.36"
    assert isinstance(report["llama_cpp"]["gpu_offload"], bool)
    assert isinstance(report["devices"], list)
    assert report["home"]["models"] == 1
    assert report["home"]["db_schema"].split(":")[0].isdigit()
    assert report["home"]["disk_free"] > 0
    table = cli("doctor")
    assert table.exit_code == 0 and "GPU offload" in table.stdout and "DB schema" in table.stdout
