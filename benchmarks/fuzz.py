"""Fuzz a real `llmp serve` with schemathesis, from its own GET /openapi.json (issue 8).

    python3 benchmarks/fuzz.py [--max-examples 10] [--max-time 60] [--phases ...] [-- st args]

Starts `llmp serve` on a fresh home with tiny synthetic chat and embedding models, waits for /health, runs
`st run <url>/openapi.json` with the admin key on every operation, then checks that the server
still answers /health, stops it with SIGTERM and reads its log. Exit 0 only when schemathesis
found nothing (no 5xx, every status and body as documented: every 4xx in the spec's error
format, auth enforced), /health answered after the run and the server exited cleanly without a
traceback in its log. A JSON summary is printed last.

Network: the run happens in a network namespace of its own (loopback only), so nothing a
fuzzed webhook URL names can be reached; where no namespace can be made (not root), the
operations that would make the server send webhooks (creating an endpoint) are left out and
the summary says so. Used by tests/test_fuzz.py (bounded) and benchmarks/fuzz.sh (longer).
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLONE_NEWNET = 0x40000000
#: what must hold for every response (a 5xx, an undocumented status or body, a 4xx outside
#: the error format, a body the schema refuses but the server takes, auth not enforced)
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,negative_data_rejection,ignored_auth,"
          "unsupported_method,missing_required_header,use_after_free")


def private_network() -> bool:
    """Move this process (and its children) into a new network namespace with only loopback,
    up; False when the kernel or our privileges do not allow it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            return False
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ifr = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, ifr)[:18])[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 0x1))  # SIOCSIFFLAGS, IFF_UP
        s.close()
        return True
    except OSError:
        return False


def start_server(home: Path, models: list[Path], log_path: Path, *,
                 allow_private: bool) -> tuple[subprocess.Popen, str, str]:
    env = {**os.environ, "LLMP_HOME": str(home), "LLMP_N_THREADS": "1",
           # loopback webhooks for the seeded endpoint: only ever used inside the namespace
           "LLMP_WEBHOOK_ALLOW_PRIVATE": "1" if allow_private else "0",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("LLMP_ADMIN_KEY", None)
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "llmp.cli.main", "serve", "--port", "0",
                             *(a for m in models for a in ("--model", str(m))),
                             "--slots", "4", "--ctx", "256"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, text=True)
    url = key = None
    deadline = time.monotonic() + 120
    while (url is None or key is None) and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        text = log_path.read_text()
        if m := re.search(r"(http://127\.0\.0\.1:\d+)/v1", text):
            url = m.group(1)
        if m := re.search(r"(sk-\w{32,})", text):
            key = m.group(1)
        time.sleep(0.05)
    if not (url and key):
        proc.kill()
        raise SystemExit("llmp serve did not start:\n" + log_path.read_text())
    return proc, url, key


def health(url: str, timeout: float = 60) -> int | None:
    """/health's status once it answers 200 (None when it never does within `timeout`)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            last = e.code
        except OSError:
            last = None
        time.sleep(0.1)
    return last


def api(url: str, key: str, method: str, path: str, body: dict | None = None, *,
        data: bytes | None = None, ctype: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    if body is not None:
        data, ctype = json.dumps(body).encode(), "application/json"
    if ctype:
        headers["Content-Type"] = ctype
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def seed_resources(url: str, key: str, webhooks: bool) -> dict[str, list]:
    """Real ids for the fuzzer to use some of the time (random ids only ever meet a 404): the
    model, a file, a batch, a webhook endpoint, a spare key, and the admin key's own id
    (revoking it must be refused)."""
    listed = [m["id"] for m in api(url, key, "GET", "/v1/models")["data"]]
    model = next(m for m in listed if "embed" not in m)
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "max_tokens": 4,
                     "messages": [{"role": "user", "content": "hi"}]}}
    boundary = "fuzzboundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"in.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n"
            f"{json.dumps(line)}\n{json.dumps({**line, 'custom_id': 'b'})}\n"
            f"\r\n--{boundary}--\r\n").encode()
    file_id = api(url, key, "POST", "/v1/files", data=form,
                  ctype=f"multipart/form-data; boundary={boundary}")["id"]
    batch_id = api(url, key, "POST", "/v1/batches", {"input_file_id": file_id,
                                                      "endpoint": "/v1/chat/completions"})["id"]
    spare = api(url, key, "POST", "/v1/auth/api-keys", {"name": "spare", "permissions":
                                                         ["inference", "models.read"]})
    keys = api(url, key, "GET", "/v1/auth/api-keys")["data"]
    ids = {"models": listed, "file_ids": [file_id], "batch_ids": [batch_id],
           "key_ids": [spare["id"]] + [k["id"] for k in keys if k["id"] != spare["id"]]}
    if webhooks:  # only inside the private network namespace (see the module doc)
        ids["webhook_ids"] = [api(url, key, "POST", "/v1/webhooks", {
            "url": "http://127.0.0.1:9/hook", "events": ["batch.completed"]})["id"]]
    return ids


def config_file(path: Path, ids: dict[str, list]) -> Path:
    """A schemathesis config: the seeded ids as dictionaries, bound to the parameters that
    name them (used with a probability, so random values are still sent too)."""
    binds = {"body.model": "models", "path.model_id": "models",
             "body.input_file_id": "file_ids", "path.file_id": "file_ids",
             "path.batch_id": "batch_ids", "path.key_id": "key_ids",
             "query.key_id": "key_ids", "path.webhook_id": "webhook_ids"}
    lines = []
    for name, values in ids.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    lines.append("[parameters]")
    for param, name in binds.items():
        if name in ids:
            lines.append(f'"{param}" = {{ dictionary = "{name}", probability = 0.7 }}')
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-examples", type=int, default=10, help="per operation and phase")
    p.add_argument("--max-time", type=int, default=60, help="schemathesis' time budget (s)")
    p.add_argument("--phases", default="examples,coverage,fuzzing,stateful")
    p.add_argument("--checks", default=CHECKS)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--keep", type=Path, default=None, help="keep the home and log here")
    p.add_argument("st_args", nargs="*", help="more `st run` arguments (after --)")
    args = p.parse_args(argv)

    isolated = private_network()
    from llmp.models.synth import synthesize

    tmp = Path(tempfile.mkdtemp(prefix="llmp-fuzz-")) if args.keep is None else args.keep
    tmp.mkdir(parents=True, exist_ok=True)
    models = [synthesize("tiny", tmp / "tiny-f16.gguf", dtype="f16"),
              synthesize("embed", tmp / "embed-f16.gguf", dtype="f16")]
    log_path = tmp / "serve.log"
    proc, url, key = start_server(tmp / "home", models, log_path, allow_private=isolated)
    t0 = time.monotonic()
    try:
        up = health(url)
        ids = seed_resources(url, key, webhooks=isolated)
        config = config_file(tmp / "schemathesis.toml", ids)
        st = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
              "--config-file", str(config), "run", f"{url}/openapi.json", "--url", url,
              "-H", f"Authorization: Bearer {key}",
              "--checks", args.checks, "--phases", args.phases,
              "--max-examples", str(args.max_examples), "--max-time", str(args.max_time),
              "--workers", str(args.workers), "--request-timeout", "60",
              "--suppress-health-check", "all", "--no-color", "--continue-on-failure",
              *(["--seed", str(args.seed)] if args.seed is not None else []),
              *([] if isolated else ["--exclude-operation-id", "webhooks_create"]),
              *args.st_args]
        # in the scratch folder: schemathesis keeps its cache (.schemathesis/) in its cwd
        run = subprocess.run(st, capture_output=True, text=True, cwd=tmp,
                             env={**os.environ, "NO_COLOR": "1"})
        elapsed = time.monotonic() - t0
        after = health(url, timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    out = run.stdout + run.stderr
    log = log_path.read_text()
    summary = {
        "schemathesis_exit": run.returncode,
        "seconds": round(elapsed, 1),
        "network_namespace": isolated,
        "health_before": up, "health_after": after,
        "server_exit": code, "server_tracebacks": log.count("Traceback"),
        "five_xx_in_log": len(re.findall(r"unhandled error", log)),
    }
    for line in out.splitlines():  # the closing lines: "N passed, N failed ..." and counts
        if re.search(r"\b(passed|failed|generated|cases|operations)\b", line, re.I) and \
                len(line) < 200:
            summary.setdefault("st_summary", []).append(line.strip())
    print(out)
    if summary["server_tracebacks"]:
        print("----- server log (tail) -----\n" + log[-6000:])
    print(json.dumps(summary, indent=2))
    ok = (run.returncode == 0 and up == 200 and after == 200 and code == 0
          and not summary["server_tracebacks"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
