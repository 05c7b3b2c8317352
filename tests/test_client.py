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


def test_one_sse_parser():
    """`iter_sse`: events end at a blank line, `data:` lines of one event join, comments
    and other fields are skipped, `[DONE]` ends the stream, an in-band error raises."""
    import pytest

    from llmp.client import iter_sse
    from llmp.errors import ServiceUnavailableError

    lines = [": keep-alive", "", 'data: {"a":', "data: 1}", "", "event: x", 'data: {"b": 2}',
             "", "data: [DONE]", "", 'data: {"never": 1}', ""]
    assert list(iter_sse(lines)) == [{"a": 1}, {"b": 2}]
    assert list(iter_sse([b'data: {"c": 3}'])) == [{"c": 3}]  # no blank line at the end
    err = ['data: {"error": {"message": "cut", "type": "service_unavailable_error"}}', ""]
    with pytest.raises(ServiceUnavailableError, match="cut"):
        list(iter_sse(err))


async def test_async_client_streams(server):
    """The async client (TUI, bench): JSON calls and SSE streams through the same parser."""
    from llmp.client import AsyncClient

    async with AsyncClient(server.url, server.admin_key) as c:
        models = await c.request("GET", "/v1/models")
        assert any(m["id"] == "tiny" for m in models["data"])
        chunks = [e async for e in c.stream("POST", "/v1/completions", json={
            "model": "tiny", "prompt": "hi", "max_tokens": 3, "stream": True})]
    assert chunks and all(e["object"] == "text_completion" for e in chunks)
