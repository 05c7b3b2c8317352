"""`llmp models pull` against a fake Hugging Face hub on 127.0.0.1 (HF_ENDPOINT).

The fake hub implements what huggingface_hub 2.x calls for a pull: model info with file
metadata (GET /api/models/{repo}[/revision/{rev}]), then per file a HEAD and a (ranged) GET
on /{repo}/resolve/{rev}/{path}, with the ETag / X-Repo-Commit / Content-Length headers and
the X-Error-Code header on 404s. It can drop a connection halfway through a file, and then
refuse further downloads, to test resuming.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import llama_cpp
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from llmp.config import load_settings
from llmp.db import models as db_models
from llmp.db import open_home
from llmp.models.synth import Preset, synthesize

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def split_gguf(src: Path, prefix: Path, max_tensors: int) -> list[Path]:
    """Re-write a GGUF as llama.cpp split parts (`prefix-0000i-of-0000n.gguf`)."""
    reader = GGUFReader(src)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(prefix.with_suffix(".gguf"), "llama", split_max_tensors=max_tensors)
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = f.types[0]
        writer.add_key_value(key, f.contents(), vtype,
                             sub_type=f.types[-1] if vtype == GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_shape=[int(x) for x in reversed(t.shape)],
                          raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(prefix.parent.glob(f"{prefix.name}-*-of-*.gguf"))


@dataclass
class FakeHub:
    url: str
    repos: dict[str, dict[str, bytes]]  # repo -> path -> content
    base_models: dict[str, str] = field(default_factory=dict)
    drop_once: set[str] = field(default_factory=set)  # file paths whose first GET is cut
    refuse_downloads: bool = False  # answer 503 to every GET of a file
    fail_after_drop: bool = False  # after a drop, refuse downloads
    token: str | None = None  # when set, every request must carry it
    log: list[tuple[str, str, str | None]] = field(default_factory=list)


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _authorized(self) -> bool:
            if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                self._error(401, "RepoNotFound", "Repository not found")
                return False
            return True

        def do_GET(self) -> None:
            self._serve()

        def do_HEAD(self) -> None:
            self._serve()

        def _serve(self) -> None:
            path = unquote(urlparse(self.path).path)
            hub.log.append((self.command, path, self.headers.get("Range")))
            if not self._authorized():
                return
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"]:
                return self._info(parts[2:])
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._file("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            self._error(404, "EntryNotFound", "not found")

        def _info(self, rest: list[str]) -> None:
            repo = "/".join(rest[:2])
            if repo not in hub.repos:
                return self._error(404, "RepoNotFound", "Repository not found")
            if len(rest) > 2 and rest[2:] != ["revision", "main"] and \
                    rest[2:] != ["revision", COMMIT]:
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            siblings = [{"rfilename": p, "size": len(c), "blobId": hashlib.sha1(c).hexdigest(),
                         "lfs": {"sha256": hashlib.sha256(c).hexdigest(), "size": len(c),
                                 "pointerSize": 130}}
                        for p, c in hub.repos[repo].items()]
            card = {"base_model": hub.base_models[repo]} if repo in hub.base_models else {}
            body = json.dumps({"id": repo, "sha": COMMIT, "siblings": siblings,
                               "cardData": card}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _file(self, repo: str, rev: str, fpath: str) -> None:
            if repo not in hub.repos:
                return self._error(404, "RepoNotFound", "Repository not found")
            content = hub.repos[repo].get(fpath)
            if content is None:
                return self._error(404, "EntryNotFound", f"{fpath} not found")
            if self.command == "GET" and hub.refuse_downloads:
                return self._error(503, "ServiceUnavailable", "try later")
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[len("bytes="):].split("-")[0])
            body = content[start:]
            self.send_response(206 if start else 200)
            self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
            self.end_headers()
            if self.command == "HEAD":
                return
            if fpath in hub.drop_once:
                hub.drop_once.discard(fpath)
                hub.refuse_downloads = hub.fail_after_drop
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, tiny_model_path, tiny_model_f32_path) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("hubfiles")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    q8 = d / "q8.gguf"
    assert llama_cpp.llama_model_quantize(str(tiny_model_path).encode(), str(q8).encode(),
                                          params) == 0
    parts = split_gguf(tiny_model_path, d / "split" / "tiny-F16", max_tensors=11)
    assert len(parts) == 2
    big = synthesize(Preset("big", 0, 400, 512, 2, 8, 4, 1536, 512), d / "big.gguf", dtype="f32")
    return {"big": big.read_bytes(), "f16": tiny_model_path.read_bytes(), "f32": tiny_model_f32_path.read_bytes(),
            "q8": q8.read_bytes(), "split1": parts[0].read_bytes(), "split2": parts[1].read_bytes()}


@pytest.fixture
def hub(model_files, monkeypatch):
    fake = FakeHub(url="", repos={
        "test-org/Tiny-GGUF": {
            "README.md": b"# tiny\n",
            "tiny-F16.gguf": model_files["f16"],
            "tiny-F32.gguf": model_files["f32"],
            "tiny-Q8_0.gguf": model_files["q8"],
            "big-F32.gguf": model_files["big"],
            "mmproj-tiny-F16.gguf": model_files["f16"],
        },
        "test-org/Split-GGUF": {
            "F16/tiny-F16-00001-of-00002.gguf": model_files["split1"],
            "F16/tiny-F16-00002-of-00002.gguf": model_files["split2"],
            "tiny-Q8_0.gguf": model_files["q8"],
        },
        "test-org/Ambiguous-GGUF": {
            "a/tiny-Q8_0.gguf": model_files["q8"],
            "b/tiny-Q8_0.gguf": model_files["q8"],
        },
        "test-org/Tiny-safetensors": {"model.safetensors": b"\0" * 64, "config.json": b"{}"},
        "test-org/Broken-GGUF": {"broken-Q8_0.gguf": model_files["q8"][: len(model_files["q8"]) // 3]},
    }, base_models={"test-org/Tiny-GGUF": "test-org/Tiny-Instruct"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield fake
    server.shutdown()
    server.server_close()


def _records():
    return db_models.list_all(open_home(load_settings()))


def _one_error(res) -> str:
    assert res.exit_code != 0
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("Error:")
    return " ".join(res.stderr.split())


def test_pull_quant_case_insensitive_and_registered(cli, hub, model_files, llmp_home):
    res = cli("models", "pull", "test-org/Tiny-GGUF:q8_0")
    assert res.exit_code == 0, res.stderr
    path = llmp_home / "models" / "test-org" / "Tiny-GGUF" / "tiny-Q8_0.gguf"
    assert path.read_bytes() == model_files["q8"]
    [rec] = _records()
    assert rec["id"] == "tiny:q8_0"
    assert rec["quantization"] == "Q8_0"
    assert rec["provider"] == "test-org"
    assert rec["source"] == "hf:test-org/Tiny-GGUF/tiny-Q8_0.gguf"
    assert rec["revision"] == COMMIT
    assert rec["hf_source"] == "test-org/Tiny-Instruct"  # from the model card's base_model
    assert rec["sha256"] == hashlib.sha256(model_files["q8"]).hexdigest()
    # the pull spec is an alias, so `model: "test-org/Tiny-GGUF:Q8_0"` works too
    show = cli("models", "show", "test-org/Tiny-GGUF:Q8_0", "--json")
    assert json.loads(show.stdout)["id"] == "tiny:q8_0"
    # pulling again is a no-op download and keeps one record
    assert cli("models", "pull", "test-org/Tiny-GGUF:Q8_0").exit_code == 0
    assert len(_records()) == 1
    assert not list(path.parent.glob("*.part"))


def test_pull_missing_or_unnamed_quant_lists_the_offers(cli, hub):
    err = _one_error(cli("models", "pull", "test-org/Tiny-GGUF:Q5_K_M"))
    assert "no Q5_K_M GGUF" in err
    for q in ("F16 (", "Q8_0 (", "tiny-F32.gguf (", "big-F32.gguf ("):  # F32 twice: by name
        assert q in err
    assert "MMPROJ" not in err.upper()  # projector files are not models
    err = _one_error(cli("models", "pull", "test-org/Tiny-GGUF"))  # several, no Q4_K_M
    assert "pick one" in err and "Q8_0" in err
    err = _one_error(cli("models", "pull", "test-org/Ambiguous-GGUF:Q8_0"))
    assert "ambiguous" in err and "a/tiny-Q8_0.gguf" in err and "b/tiny-Q8_0.gguf" in err
    # an exact file path settles it
    assert cli("models", "pull", "test-org/Ambiguous-GGUF:b/tiny-Q8_0.gguf").exit_code == 0
    assert _records()[0]["path"].endswith("Ambiguous-GGUF/b/tiny-Q8_0.gguf")


def test_pull_split_model(cli, hub, model_files, llmp_home):
    res = cli("models", "pull", "test-org/Split-GGUF:f16", "--name", "tiny-split")
    assert res.exit_code == 0, res.stderr
    folder = llmp_home / "models" / "test-org" / "Split-GGUF" / "F16"
    parts = sorted(folder.glob("*.gguf"))
    assert [p.name for p in parts] == ["tiny-F16-00001-of-00002.gguf", "tiny-F16-00002-of-00002.gguf"]
    [rec] = _records()
    assert rec["id"] == "tiny-split"
    assert rec["size_bytes"] == len(model_files["split1"]) + len(model_files["split2"])
    assert rec["parameters"] == 183232
    assert rec["hf_source"] == "test-org/Split"  # repo name minus -GGUF
    llm = llama_cpp.Llama(rec["path"], n_ctx=64, verbose=False)  # llama.cpp finds part 2
    assert llm.n_vocab() > 256
    # rm deletes every part of a model llmp downloaded
    assert cli("models", "rm", "tiny-split", "--yes").exit_code == 0
    assert not list(folder.glob("*.gguf"))


def test_pull_resumes_after_dropped_connections(cli, hub, model_files, llmp_home):
    # huggingface_hub writes in 10 MB chunks: the file must be larger for a drop to leave
    # something to resume from
    name = "big-F32.gguf"
    size = len(model_files["big"])
    assert size > 20 * 2**20
    # 1. the connection drops once mid-file: huggingface_hub resumes it in the same run
    hub.drop_once.add(name)
    res = cli("models", "pull", "test-org/Tiny-GGUF:big-F32")
    assert res.exit_code == 0, res.stderr
    gets = [r for m, p, r in hub.log if m == "GET" and p.endswith(name)]
    assert gets[0] is None and gets[1].startswith("bytes=") and gets[1] != "bytes=0-"
    assert (llmp_home / "models" / "test-org" / "Tiny-GGUF" / name).read_bytes() == model_files["big"]
    assert cli("models", "rm", "tiny:f32", "--yes").exit_code == 0

    # 2. the connection drops and the hub then refuses: the pull fails with one line,
    #    nothing is registered, the partial file stays; the next run resumes from it
    hub.log.clear()
    hub.drop_once.add(name)
    hub.fail_after_drop = True
    err = _one_error(cli("models", "pull", "test-org/Tiny-GGUF:big-F32"))
    assert "503" in err and "again to resume" in err
    assert _records() == []
    [part] = (llmp_home / "models" / "test-org" / "Tiny-GGUF").glob(f"{name}.*.part")
    done = part.stat().st_size
    assert 0 < done < size
    hub.refuse_downloads = False
    hub.log.clear()
    res = cli("models", "pull", "test-org/Tiny-GGUF:big-F32")
    assert res.exit_code == 0, res.stderr
    gets = [r for m, p, r in hub.log if m == "GET" and p.endswith(name)]
    assert gets == [f"bytes={done}-"]
    assert (part.parent / name).read_bytes() == model_files["big"]
    assert not part.exists()
    assert [r["id"] for r in _records()] == ["tiny:f32"]


def test_pull_bad_inputs_give_one_error_line(cli, hub, monkeypatch):
    err = _one_error(cli("models", "pull", "test-org/Nope-GGUF:Q8_0"))
    assert "repository test-org/Nope-GGUF not found" in err
    err = _one_error(cli("models", "pull", "test-org/Tiny-safetensors"))
    assert "no GGUF file in test-org/Tiny-safetensors" in err
    err = _one_error(cli("models", "pull", "not a repo"))
    assert "OWNER/REPO" in err
    err = _one_error(cli("models", "pull", "test-org/Tiny-GGUF:Q8_0", "--revision", "v9"))
    assert "revision 'v9' not found" in err
    err = _one_error(cli("models", "pull", "test-org/Broken-GGUF"))
    assert "not a usable GGUF" in err
    assert not list((load_settings().models_dir / "test-org" / "Broken-GGUF").glob("*.gguf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    err = _one_error(cli("models", "pull", "test-org/Tiny-GGUF:Q8_0"))
    assert "127.0.0.1:9" in err
    assert _records() == []


def test_pull_private_repo_uses_hf_token(cli, hub, monkeypatch):
    hub.token = "hf_secret"
    err = _one_error(cli("models", "pull", "test-org/Tiny-GGUF:Q8_0"))
    assert "HF_TOKEN" in err
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    res = cli("models", "pull", "test-org/Tiny-GGUF:Q8_0", "--revision", COMMIT)
    assert res.exit_code == 0, res.stderr
    assert _records()[0]["revision"] == COMMIT
