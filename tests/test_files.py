"""/v1/files end to end with the official openai client: upload (streamed, sha256), list with
purpose filter and pagination, retrieve, content, delete; errors; per-key visibility."""
from __future__ import annotations

import hashlib
import io
import json

import openai
import pytest

from schema_check import check


def upload(client, data: bytes, name: str = "input.jsonl", purpose: str = "batch"):
    return client.files.create(file=(name, io.BytesIO(data)), purpose=purpose)


def test_files_round_trip_with_openai_client(server):
    client = server.openai()
    data = b'{"hello": "world"}\n' * 1000
    f = upload(client, data)
    body = f.model_dump()
    check(body, "OpenAIFile")
    assert f.id.startswith("file_") and f.object == "file" and f.bytes == len(data)
    assert f.filename == "input.jsonl" and f.purpose == "batch" and f.status == "uploaded"
    assert body["status_details"] is None
    assert body["sha256"] == hashlib.sha256(data).hexdigest()

    assert client.files.retrieve(f.id).model_dump() == body
    assert client.files.content(f.id).read() == data

    ft = upload(client, b'{"messages": []}\n', name="train.jsonl", purpose="fine-tune")
    listed = client.files.list(purpose="fine-tune")
    assert [x.id for x in listed.data] == [ft.id]
    page = client.files.list(limit=1)
    raw = page.model_dump()
    check({k: raw[k] for k in ("object", "data", "first_id", "last_id", "has_more")},
          "ListFilesResponse")
    assert [x.id for x in page.data] == [ft.id] and page.has_more  # newest first
    assert {x.id for x in client.files.list(limit=1).iter_pages().__next__().data} == {ft.id}
    assert {x.id for x in client.files.list(limit=1)} >= {f.id, ft.id}  # auto-pagination

    deleted = client.files.delete(f.id)
    check(deleted.model_dump(), "DeleteFileResponse")
    assert deleted.id == f.id and deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(f.id)


def _multipart(fields: dict) -> tuple[bytes, dict]:
    b = "llmpboundary"
    out = b""
    for name, value in fields.items():
        if isinstance(value, tuple):
            out += (f'--{b}\r\nContent-Disposition: form-data; name="{name}"; '
                    f'filename="{value[0]}"\r\n\r\n').encode() + value[1] + b"\r\n"
        else:
            out += f'--{b}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    return out + f"--{b}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={b}"}


@pytest.mark.parametrize("fields, param, code", [
    ({"purpose": "nonsense", "file": ("a.jsonl", b"x")}, "purpose", "invalid_purpose"),
    ({"purpose": "batch_output", "file": ("a.jsonl", b"x")}, "purpose", "invalid_purpose"),
    ({"purpose": "batch", "file": ("a.jsonl", b"")}, "file", "empty_file"),
    # the spec's code for a missing parameter
    ({"purpose": "batch"}, "file", "missing_parameter"),
    ({"file": ("a.jsonl", b"x")}, "purpose", "missing_parameter"),
])
def test_upload_errors(server, fields, param, code):
    data, headers = _multipart(fields)
    status, hdrs, body = server.request("POST", "/v1/files", data=data, headers=headers)
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param and body["error"]["code"] == code
    assert body["request_id"] == hdrs["x-request-id"]
    assert not [p for p in server.settings.files_dir.iterdir() if p.name.endswith(".part")]


def test_not_multipart_and_bad_list_params(server):
    status, _, body = server.request("POST", "/v1/files", json={"purpose": "batch"})
    assert status == 400 and body["error"]["code"] == "invalid_content_type"
    status, _, body = server.request("GET", "/v1/files?limit=0")
    assert status == 400 and body["error"]["param"] == "limit"
    status, _, body = server.request("GET", "/v1/files?purpose=nope")
    assert status == 400 and body["error"]["param"] == "purpose"


def test_too_large_is_413(tiny_model_path, tmp_path):
    from conftest import start_server

    with start_server(tmp_path / "home", tiny_model_path, max_file_bytes=100_000) as srv:
        data, headers = _multipart({"purpose": "batch", "file": ("big.jsonl", b"x" * 300_000)})
        status, _, body = srv.request("POST", "/v1/files", data=data, headers=headers)
        assert status == 413, body
        assert body["error"]["code"] == "file_too_large" and body["error"]["param"] == "file"
        assert list(srv.settings.files_dir.iterdir()) == []
        ok = upload(srv.openai(), b"y" * 100_000)
        assert ok.bytes == 100_000


def test_keys_see_only_their_own_files(server):
    a = server.openai(server.make_key(["files.read", "files.write"], name="a"))
    b = server.openai(server.make_key(["files.read", "files.write"], name="b"))
    fa = upload(a, b"a\n")
    fb = upload(b, b"b\n")
    assert {f.id for f in a.files.list()} == {fa.id}
    assert {f.id for f in b.files.list()} == {fb.id}
    for call in (b.files.retrieve, b.files.content, b.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(fa.id)
    assert {fa.id, fb.id} <= {f.id for f in server.openai().files.list()}  # admin sees all
    reader = server.openai(server.make_key(["files.read"], name="reader"))
    with pytest.raises(openai.PermissionDeniedError):
        upload(reader, b"c\n")


def test_cli_files(server, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMP_URL", server.url)
    monkeypatch.setenv("LLMP_API_KEY", server.admin_key)
    src = tmp_path / "data.jsonl"
    src.write_bytes(b'{"a": 1}\n{"a": 2}\n')
    r = cli("files", "upload", src, "--purpose", "fine-tune", "--json")
    assert r.exit_code == 0, r.stderr
    fid = json.loads(r.stdout)["id"]
    assert fid in [f["id"] for f in json.loads(cli("files", "list", "--purpose", "fine-tune",
                                                   "--json").stdout)]
    assert "sha256" in cli("files", "show", fid).stdout
    dest = tmp_path / "copy.jsonl"
    assert cli("files", "download", fid, "--output", dest).exit_code == 0
    assert dest.read_bytes() == src.read_bytes()
    assert cli("files", "rm", fid).exit_code == 0
    r = cli("files", "show", fid)
    assert r.exit_code == 4 and "No such file" in r.stderr
    r = cli("files", "upload", src, "--purpose", "nope")
    assert r.exit_code == 2 and "Invalid --purpose: 'nope'" in r.stderr  # the flag, not the field
    r = cli("files", "list", "--limit", "0")
    assert r.exit_code == 2 and "Invalid --limit" in r.stderr
