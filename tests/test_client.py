"""The CLI's HTTP client: uploads are streamed from disk (multipart, Content-Length up
front), never held in memory whole."""
from __future__ import annotations

import hashlib
import json
import os
import tracemalloc

from llmp.client import Client

SIZE = 24 << 20


def test_cli_upload_streams_a_large_file(server, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMP_URL", server.url)
    monkeypatch.setenv("LLMP_API_KEY", server.admin_key)
    src = tmp_path / "big.jsonl"
    src.write_bytes(os.urandom(SIZE))
    r = cli("files", "upload", str(src), "--purpose", "fine-tune", "--json")
    assert r.exit_code == 0, r.output
    f = json.loads(r.stdout)
    assert f["bytes"] == SIZE
    got = Client().request("GET", f"/v1/files/{f['id']}/content")
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()
    del got
    # what the upload holds in memory at once is a chunk, not the file (the peak also counts
    # the server's buffers: it runs in this process)
    seen: list[int] = []
    tracemalloc.start()
    try:
        Client().request("POST", "/v1/files", files={"purpose": "fine-tune",
                                                     "file": ("big.jsonl", src)},
                         progress=lambda sent, total: seen.append(sent))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < SIZE / 4, peak
    assert seen == sorted(seen) and len(seen) > 10 and seen[-1] > SIZE  # file + headers


def test_a_malformed_llmp_url_is_one_clear_line(cli, monkeypatch):
    monkeypatch.setenv("LLMP_URL", "notaurl")
    r = cli("files", "list")
    assert r.exit_code != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "LLMP_URL" in r.stderr
