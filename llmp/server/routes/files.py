"""/v1/files: upload (multipart, streamed to disk), list, retrieve, delete, download."""
from __future__ import annotations

from typing import Any

from aiohttp import MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from llmp.errors import InvalidRequestError
from llmp.server.auth import requires
from llmp.server.middleware import int_param
from llmp.server.state import API_KEY, DB, SETTINGS
from llmp.services.files import MAX_LIST_LIMIT, FileStore, Upload, check_purpose

CHUNK = 256 * 1024
MAX_FIELD_BYTES = 4096  # form fields other than the file (purpose ...)


def store(app: web.Application) -> FileStore:
    return FileStore(app[DB], app[SETTINGS])


async def _field(part) -> str:
    data = await part.read_chunk(MAX_FIELD_BYTES + 1)
    if len(data) > MAX_FIELD_BYTES or await part.read_chunk(1):
        raise InvalidRequestError(f"Form field {part.name!r} is too long", param=part.name)
    return data.decode("utf-8", "replace").strip()


def _bad_form(e: Exception) -> InvalidRequestError:
    return InvalidRequestError(f"The multipart/form-data body could not be read ({e})",
                               param="file", code="invalid_multipart")


async def _multipart(request: web.Request) -> MultipartReader:
    try:
        return await request.multipart()
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as e:
        raise _bad_form(e) from None


async def _next_part(reader: MultipartReader) -> Any:
    """The next part; a malformed body (no boundary, bad headers, garbage) is a 400."""
    try:
        return await reader.next()
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as e:
        raise _bad_form(e) from None


@requires("files.write")
async def upload(request: web.Request) -> web.Response:
    """multipart/form-data with `file` and `purpose` (in any order); the file part is written
    to disk chunk by chunk, hashed and size-checked as it arrives."""
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequestError("Upload a file as multipart/form-data with parts 'file' and "
                                  "'purpose'", param="file", code="invalid_content_type")
    files = store(request.app)
    purpose: str | None = None
    filename = ""
    up: Upload | None = None
    try:
        reader = await _multipart(request)
        while (part := await _next_part(reader)) is not None:
            if part.name == "purpose":
                purpose = check_purpose(await _field(part))
            elif part.name == "file" and up is None:
                filename = part.filename or ""
                up = files.begin()
                while chunk := await part.read_chunk(CHUNK):
                    up.write(chunk)
            else:  # other fields (OpenAI's expires_after ...) are accepted and ignored
                await part.release()
        if up is None:
            raise InvalidRequestError("Missing required parameter: 'file'", param="file",
                                      code="missing_parameter")
        purpose = check_purpose(purpose)
    except BaseException:
        if up is not None:
            up.discard()
        raise
    return web.json_response(files.commit(up, owner=request[API_KEY]["id"], filename=filename,
                                          purpose=purpose))


@requires("files.read")
async def list_files(request: web.Request) -> web.Response:
    q = request.query
    return web.json_response(store(request.app).list(
        request[API_KEY], purpose=q.get("purpose") or None, after=q.get("after") or None,
        limit=int_param(request, "limit", MAX_LIST_LIMIT), order=q.get("order", "desc")))


@requires("files.read")
async def retrieve(request: web.Request) -> web.Response:
    return web.json_response(store(request.app).get(request.match_info["file_id"], request[API_KEY]))


@requires("files.write")
async def delete(request: web.Request) -> web.Response:
    return web.json_response(store(request.app).delete(request.match_info["file_id"], request[API_KEY]))


@requires("files.read")
async def content(request: web.Request) -> web.StreamResponse:
    files = store(request.app)
    row = files.row(request.match_info["file_id"], request[API_KEY])
    return web.FileResponse(files.path(row), headers={
        "Content-Type": "application/octet-stream",  # as OpenAI serves file content
        "Content-Disposition": 'attachment; filename="{}"'.format(row["filename"].replace('"', ""))})


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/files", upload)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", retrieve)
    app.router.add_delete("/v1/files/{file_id}", delete)
    app.router.add_get("/v1/files/{file_id}/content", content)
