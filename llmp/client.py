"""The CLI's HTTP client of a running llmp server (as docker's CLI is of its daemon).

Base URL: `LLMP_URL`, else `http://<settings.host>:<settings.port>`; key: `LLMP_API_KEY`, else
`settings.admin_key` (LLMP_ADMIN_KEY), else the bootstrap key saved at `$LLMP_HOME/admin_key`.
Errors come back as the typed `LlmpError`s the server rendered; nothing listening gives a
clear "start one with `llmp serve`" error.
"""
from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from llmp import errors
from llmp.config import Settings, load_settings

_BY_TYPE: dict[str, type[errors.LlmpError]] = {
    "invalid_request_error": errors.InvalidRequestError,
    "authentication_error": errors.AuthenticationError,
    "permission_error": errors.PermissionDeniedError,
    "not_found_error": errors.NotFoundError,
    "rate_limit_error": errors.RateLimitError,
    "quota_exceeded_error": errors.QuotaExceededError,
    "server_error": errors.ServerError,
    "service_unavailable_error": errors.ServiceUnavailableError,
}


class ServerUnreachableError(errors.ServiceUnavailableError):
    code = "server_unreachable"


def default_url(settings: Settings) -> str:
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return os.environ.get("LLMP_URL") or f"http://{host}:{settings.port}"


def default_key(settings: Settings) -> str | None:
    key = os.environ.get("LLMP_API_KEY") or settings.admin_key
    if key:
        return key
    try:
        return settings.admin_key_path.read_text().strip() or None
    except OSError:
        return None


def decode_error(status: int, raw: bytes) -> errors.LlmpError:
    """The LlmpError for a server error body (`{"error": {...}, "request_id"}`)."""
    try:
        err = json.loads(raw)["error"]
        cls = _BY_TYPE.get(err.get("type"), errors.ServerError)
        e = cls(err.get("message") or f"HTTP {status}", param=err.get("param"), code=err.get("code"))
    except (ValueError, KeyError, TypeError, AttributeError):
        e = errors.ServerError(f"HTTP {status}: {raw[:200].decode(errors='replace')}")
    e.status = status
    return e


#: bytes read from disk at a time when streaming an upload
CHUNK = 1 << 20

#: `progress(bytes_sent, bytes_total)` during an upload
Progress = Callable[[int, int], None]


def _multipart(fields: dict[str, Any], progress: Progress | None = None,
               ) -> tuple[Iterator[bytes], int, str]:
    """Encode `files=` for a multipart upload, streamed: values are str, (filename, bytes) or
    (filename, Path) (read from disk CHUNK bytes at a time, never whole). Returns the body's
    chunks, its length (sent as Content-Length) and the content type; `progress(sent, total)`
    is called as the chunks go."""
    boundary = uuid.uuid4().hex
    parts: list[bytes | Path] = []
    for name, value in fields.items():
        if isinstance(value, tuple):
            filename, data = value
            parts += [(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                       f'filename="{filename}"\r\nContent-Type: application/octet-stream'
                       "\r\n\r\n").encode(), data, b"\r\n"]
        else:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
                         f"\r\n\r\n{value}\r\n".encode())
    parts.append(f"--{boundary}--\r\n".encode())

    length = sum(p.stat().st_size if isinstance(p, Path) else len(p) for p in parts)

    def pieces() -> Iterator[bytes]:
        for part in parts:
            if isinstance(part, Path):
                with part.open("rb") as f:
                    yield from iter(lambda: f.read(CHUNK), b"")
            else:
                yield part

    def chunks() -> Iterator[bytes]:
        sent = 0
        for chunk in pieces():
            yield chunk
            sent += len(chunk)
            if progress:
                progress(sent, length)

    return chunks(), length, f"multipart/form-data; boundary={boundary}"


class Client:
    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 settings: Settings | None = None, timeout: float = 600.0):
        settings = settings or load_settings()
        self.url = (url or default_url(settings)).rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.ConfigError(f"{self.url!r} is not a server URL: set LLMP_URL to one like "
                                     "http://127.0.0.1:8000")
        self.api_key = api_key or default_key(settings)
        self.timeout = timeout

    def _open(self, method: str, path: str, *, json_body: Any = None,
              params: dict | None = None, files: dict | None = None,
              progress: Progress | None = None):
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if files is not None:
            data, length, headers["Content-Type"] = _multipart(files, progress)
            headers["Content-Length"] = str(length)
        elif json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise decode_error(e.code, e.read()) from None
        except (urllib.error.URLError, ConnectionError, socket.timeout) as e:
            reason = getattr(e, "reason", e)
            raise ServerUnreachableError(
                f"no llmp server at {self.url} ({reason}): start one with `llmp serve`, "
                "or point LLMP_URL at a running one") from None

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                files: dict | None = None, stream: bool = False,
                progress: Progress | None = None) -> Any:
        """Call the API; returns the decoded JSON body (bytes for non-JSON bodies), or with
        `stream=True` an iterator over the SSE events' JSON objects. `files` values may be
        (filename, Path): the file is streamed from disk, reported to `progress`."""
        resp = self._open(method, path, json_body=json, params=params, files=files,
                          progress=progress)
        if stream:
            return self._events(resp)
        with resp:
            raw = resp.read()
            if "json" in (resp.headers.get("Content-Type") or ""):
                return _json_loads(raw)
            return raw

    @staticmethod
    def _events(resp) -> Iterator[dict]:
        with resp:
            for line in resp:
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                event = _json_loads(data)
                if isinstance(event, dict) and "error" in event and "choices" not in event:
                    raise decode_error(500, data)
                yield event


def _json_loads(raw: bytes) -> Any:
    return json.loads(raw) if raw else None
