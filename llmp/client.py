"""The one HTTP client of a running llmp server, for the CLI, the TUI and `llmp bench` (as
docker's CLI is a client of its daemon): `Client` (sync) and `AsyncClient`, on httpx, with one
SSE parser (`iter_sse` / `aiter_sse`).

Which server: the `url` given (the CLI's `--url`), else `LLMP_URL`, else the running server
recorded in `$LLMP_HOME/server.json` by `llmp serve` (a stale entry is ignored and removed),
else `http://<settings.host>:<settings.port>`. Which key: the `api_key` given (`--api-key`),
else `LLMP_API_KEY`, else `settings.admin_key` (LLMP_ADMIN_KEY), else the bootstrap key
saved at `$LLMP_HOME/admin_key`.

Errors come back as the typed `LlmpError`s the server rendered; nothing listening gives a
clear "start one with `llmp serve`" error naming where the URL came from.
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

try:  # huggingface_hub and openai bring httpx2 (httpx's API under a new name) or httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

from llmp import discovery, errors
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

#: seconds to wait for a connection (the read timeout is the client's `timeout`)
CONNECT_TIMEOUT = 10.0


class ServerUnreachableError(errors.ServiceUnavailableError):
    code = "server_unreachable"


def connectable(host: str) -> str:
    """A host to connect to for a server listening on `host` (any-address -> loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def resolve_url(settings: Settings, url: str | None = None) -> tuple[str, str]:
    """The server's base URL and where it came from ("--url", "LLMP_URL", the server file,
    or "default")."""
    if url:
        return url, "--url"
    env = os.environ.get("LLMP_URL")
    if env:
        return env, "LLMP_URL"
    entry = discovery.find(settings.home)
    if entry is not None:
        return entry["url"], str(discovery.server_file(settings.home))
    return f"http://{connectable(settings.host)}:{settings.port}", "default"


def default_url(settings: Settings) -> str:
    return resolve_url(settings)[0]


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


# --------------------------------------------------------------------------- SSE
def _event_data(data_lines: list[str]) -> Any:
    """One event's JSON (None for [DONE]); an in-band error event raises it."""
    data = "\n".join(data_lines)
    if data.strip() == "[DONE]":
        return None
    event = json.loads(data)
    if isinstance(event, dict) and "error" in event and "choices" not in event:
        raise decode_error(500, data.encode())
    return event


class _Done(Exception):
    pass


def _feed(line: str | bytes, buf: list[str]) -> Any:
    """Feed one line to the SSE parser state `buf`; returns an event's JSON when a blank line
    ends one (`_Done` at [DONE]), else `_NOTHING`."""
    if isinstance(line, bytes):
        line = line.decode("utf-8")
    line = line.rstrip("\r\n")
    if not line:
        if not buf:
            return _NOTHING
        data = buf[:]
        buf.clear()
        event = _event_data(data)
        if event is None:
            raise _Done
        return event
    if line.startswith(":"):
        return _NOTHING  # a comment (keep-alive)
    name, _, value = line.partition(":")
    if name == "data":
        buf.append(value[1:] if value.startswith(" ") else value)
    return _NOTHING


_NOTHING = object()


def iter_sse(lines: Iterable[str | bytes]) -> Iterator[Any]:
    """The JSON of each `data:` event of an SSE stream, up to `data: [DONE]`."""
    buf: list[str] = []
    try:
        for line in lines:
            ev = _feed(line, buf)
            if ev is not _NOTHING:
                yield ev
        if buf:
            ev = _event_data(buf)
            if ev is not None:
                yield ev
    except _Done:
        return


async def aiter_sse(lines: AsyncIterable[str | bytes]) -> AsyncIterator[Any]:
    """`iter_sse` over an async line iterator."""
    buf: list[str] = []
    try:
        async for line in lines:
            ev = _feed(line, buf)
            if ev is not _NOTHING:
                yield ev
        if buf:
            ev = _event_data(buf)
            if ev is not None:
                yield ev
    except _Done:
        return


# --------------------------------------------------------------------------- uploads
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


# --------------------------------------------------------------------------- clients
class _Base:
    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 settings: Settings | None = None, timeout: float = 600.0):
        settings = settings or load_settings()
        raw, self.url_source = resolve_url(settings, url)
        self.url = raw.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        try:
            parts = httpx.URL(self.url) if "://" in self.url else None
        except (httpx.InvalidURL, ValueError, TypeError):
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.host:
            flag = "--url" if self.url_source == "--url" else "LLMP_URL (or --url)"
            raise errors.ConfigError(f"{self.url!r} is not a server URL: set {flag} to one like "
                                     "http://127.0.0.1:8000")
        # None: the default key; "" : no key at all (e.g. a third-party server in `llmp bench`)
        self.api_key = api_key if api_key is not None else default_key(settings)
        self.timeout = httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout))

    def _headers(self, json_body: Any, files: dict | None,
                 progress: Progress | None) -> tuple[dict[str, str], Any]:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        content: Any = None
        if files is not None:
            content, length, headers["Content-Type"] = _multipart(files, progress)
            headers["Content-Length"] = str(length)
        elif json_body is not None:
            content = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        return headers, content

    @staticmethod
    def _params(params: dict | None) -> dict | None:
        return {k: v for k, v in params.items() if v is not None} if params else None

    def _unreachable(self, e: Exception) -> ServerUnreachableError:
        where = {"--url": "", "LLMP_URL": " (from LLMP_URL)", "default": ""}.get(
            self.url_source, f" (from {self.url_source})")
        reason = str(e) or type(e).__name__
        return ServerUnreachableError(
            f"no llmp server at {self.url}{where} ({reason}): start one with `llmp serve`, "
            "or point --url (or LLMP_URL) at a running one")

    @staticmethod
    def _decode(resp: httpx.Response) -> Any:
        if "json" in (resp.headers.get("Content-Type") or ""):
            return json.loads(resp.content) if resp.content else None
        return resp.content


class Client(_Base):
    """Sync client: `request(...)` returns the decoded JSON (bytes for other bodies), or with
    `stream=True` an iterator over the SSE events' JSON objects."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._http: httpx.Client | None = None

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(timeout=self.timeout)
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _send(self, method: str, path: str, *, json_body: Any = None,
              params: dict | None = None, files: dict | None = None,
              progress: Progress | None = None) -> httpx.Response:
        headers, content = self._headers(json_body, files, progress)
        req = self.http.build_request(method, self.url + path, params=self._params(params),
                                      headers=headers, content=content)
        try:
            resp = self.http.send(req, stream=True)
        except (httpx.TransportError, OSError) as e:
            raise self._unreachable(e) from None
        if resp.status_code >= 400:
            try:
                raw = resp.read()
            finally:
                resp.close()
            raise decode_error(resp.status_code, raw)
        return resp

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                files: dict | None = None, stream: bool = False,
                progress: Progress | None = None) -> Any:
        """Call the API. `files` values may be (filename, Path): the file is streamed from
        disk, reported to `progress`."""
        resp = self._send(method, path, json_body=json, params=params, files=files,
                          progress=progress)
        if stream:
            return self._events(resp)
        try:
            resp.read()
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        finally:
            resp.close()
        return self._decode(resp)

    def _events(self, resp: httpx.Response) -> Iterator[Any]:
        try:
            yield from iter_sse(resp.iter_lines())
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        finally:
            resp.close()


class AsyncClient(_Base):
    """Async client (the TUI, `llmp bench`): `await request(...)`, or `stream(...)` as an
    async iterator over the SSE events' JSON objects."""

    def __init__(self, *args: Any, http: httpx.AsyncClient | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._own = http is None
        self.http = http or httpx.AsyncClient(timeout=self.timeout)

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _send(self, method: str, path: str, json_body: Any, params: dict | None
                    ) -> httpx.Response:
        headers, content = self._headers(json_body, None, None)
        req = self.http.build_request(method, self.url + path, params=self._params(params),
                                      headers=headers, content=content)
        try:
            resp = await self.http.send(req, stream=True)
        except (httpx.TransportError, OSError) as e:
            raise self._unreachable(e) from None
        if resp.status_code >= 400:
            try:
                raw = await resp.aread()
            finally:
                await resp.aclose()
            raise decode_error(resp.status_code, raw)
        return resp

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: dict | None = None) -> Any:
        resp = await self._send(method, path, json, params)
        try:
            await resp.aread()
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        finally:
            await resp.aclose()
        return self._decode(resp)

    async def stream(self, method: str, path: str, *, json: Any = None,
                     params: dict | None = None) -> AsyncIterator[Any]:
        resp = await self._send(method, path, json, params)
        try:
            async for event in aiter_sse(resp.aiter_lines()):
                yield event
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        finally:
            await resp.aclose()
