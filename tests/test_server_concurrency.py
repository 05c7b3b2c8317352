"""16 concurrent streams all complete with correct usage; a client that disconnects
mid-stream frees its slot."""
from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.request

from llmp.server.state import POOL

MSG = [{"role": "user", "content": "Please write a short poem about the sea."}]


def test_16_concurrent_streams(server):
    client = server.openai()

    def one(i: int):
        chunks = list(client.chat.completions.create(
            model="tiny", messages=MSG, max_tokens=24 + i, stream=True, seed=i,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
        return i, chunks

    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        results = list(ex.map(one, range(16)))
    for i, chunks in results:
        usage = chunks[-1].usage
        assert usage.completion_tokens == 24 + i
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    engine = server.run(server.app[POOL].get("tiny"))
    assert engine.stats()["slots_busy"] == 0


def test_disconnect_frees_slot(server):
    engine = server.run(server.app[POOL].get("tiny"))
    body = json.dumps({"model": "tiny", "messages": MSG, "max_tokens": 3000, "stream": True,
                       "ignore_eos": True}).encode()
    req = urllib.request.Request(server.base_url + "/chat/completions", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {server.admin_key}",
                                          "Content-Type": "application/json"})
    resp = urllib.request.urlopen(req, timeout=60)
    for _ in range(3):
        assert resp.readline()  # the stream is flowing
    assert engine.stats()["slots_busy"] == 1
    resp.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 20
    while engine.stats()["slots_busy"] and time.monotonic() < deadline:
        time.sleep(0.01)  # polling a condition, with a deadline
    assert engine.stats()["slots_busy"] == 0
