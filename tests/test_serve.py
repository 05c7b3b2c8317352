"""`llmp serve` as a real process: banner, admin key bootstrap, /health, graceful SIGTERM."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request


def test_serve_banner_health_and_sigterm(tiny_model_path, llmp_home):
    env = {**os.environ, "LLMP_HOME": str(llmp_home), "LLMP_N_SLOTS": "2", "LLMP_SLOT_CTX": "256"}
    proc = subprocess.Popen([sys.executable, "-c", "from llmp.cli.main import run; run()", "serve",
                             "--port", "0", "--model", str(tiny_model_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        lines, url, key = [], None, None
        deadline = time.monotonic() + 60
        while (url is None or key is None) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"(http://127\.0\.0\.1:\d+)/v1", line):
                url = m.group(1)
            if m := re.search(r"(sk-\w{32,})", line):
                key = m.group(1)
        assert url and key, "".join(lines)
        assert "CPU" in "".join(lines) or "GPU" in "".join(lines)
        assert (llmp_home / "admin_key").read_text().strip() == key
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # 503 while the preloaded model loads, then 200
            try:
                with urllib.request.urlopen(url + "/health") as r:
                    health = json.loads(r.read())
                    break
            except urllib.error.HTTPError as e:
                assert e.code == 503
            time.sleep(0.05)
        assert health["status"] == "ok" and health["models"][0]["id"]
        req = urllib.request.Request(url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req) as r:
            assert json.loads(r.read())["data"]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Stopped." in out
    finally:
        if proc.poll() is None:
            proc.kill()
