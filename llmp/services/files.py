"""Files (/v1/files): uploads streamed to disk with their sha256, server-made result files,
and per-key visibility.

Bytes live under `settings.files_dir/<file id>`; the `files` table is the index. An upload is
written chunk by chunk to a `.part` file (never held whole in memory), hashed and size-checked
as it goes, and renamed into place only once it is complete and valid.
A key sees only its own files; an admin key sees every file.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

from sqlite_utils import Database

from llmp.config import Settings
from llmp.db import files as files_db
from llmp.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from llmp.ids import new_id, random_base62
from llmp.protocol.resources import UPLOAD_PURPOSES
from llmp.services.lists import check_limit, list_object, owner_scope

SERVER_PURPOSES = ("batch_output", "fine-tune-results")  # made by the server, never uploaded
#: OpenAI's purposes for features llmp does not have (Assistants, vision fine-tuning)
UNSUPPORTED_PURPOSES = ("assistants", "assistants_output", "vision")
PURPOSES = UPLOAD_PURPOSES + SERVER_PURPOSES
MAX_LIST_LIMIT = 10_000  # OpenAI's default and maximum page size for GET /v1/files


def to_api(row: dict) -> dict:
    """A `files` row as OpenAI's file object (plus the spec's status/status_details and our
    sha256). Nullable fields are sent as null, as OpenAI and the spec do."""
    out = {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": row["status"],
        "status_details": row["status_details"],
        "sha256": row["sha256"],
    }
    if row.get("expires_at"):
        out["expires_at"] = row["expires_at"]
    return out


def check_purpose(purpose: str | None, *, allowed: Iterable[str] = UPLOAD_PURPOSES) -> str:
    allowed = tuple(allowed)
    if not purpose:
        raise InvalidRequestError("Missing required parameter: 'purpose'", param="purpose",
                                  code="missing_parameter")
    if purpose not in allowed:
        hint = " (it is made by the server)" if purpose in SERVER_PURPOSES else \
            " (not supported here: llmp has no Assistants API or vision fine-tuning)" \
            if purpose in UNSUPPORTED_PURPOSES else ""
        raise InvalidRequestError(
            f"Invalid 'purpose': {purpose!r}{hint}; expected one of {', '.join(allowed)}",
            param="purpose", code="invalid_purpose")
    return purpose


class Upload:
    """A file being received: written to a `.part` file, hashed and size-checked per chunk."""

    def __init__(self, directory: Path, max_bytes: int | None = None):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = directory / f".{random_base62(16)}.part"
        self.max_bytes = max_bytes
        self.size = 0
        self._sha = hashlib.sha256()
        # private to the user whatever the umask (uploads may hold anything)
        self._f = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
                            "wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            self.discard()
            raise PayloadTooLargeError(
                f"File is larger than the {self.max_bytes:,}-byte limit (max_file_bytes)",
                param="file")
        self._sha.update(chunk)
        self._f.write(chunk)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def discard(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


class FileStore:
    """Files of one home: the on-disk bytes and their `files` rows."""

    def __init__(self, db: Database, settings: Settings):
        self.db = db
        self.dir = settings.files_dir
        self.max_bytes = settings.max_file_bytes

    def sweep_partials(self) -> None:
        """Remove `.part` files a killed process left behind (call before serving)."""
        for p in self.dir.glob(".*.part"):
            p.unlink(missing_ok=True)

    def begin(self) -> Upload:
        return Upload(self.dir, self.max_bytes)

    def commit(self, upload: Upload, *, owner: str | None, filename: str, purpose: str,
               status: str = "uploaded") -> dict:
        """Validate and register a received upload; the `.part` file is dropped on error."""
        upload.close()
        try:
            check_purpose(purpose, allowed=PURPOSES)
            filename = _clean_name(filename)
            if upload.size == 0:
                raise InvalidRequestError("The uploaded file is empty", param="file",
                                          code="empty_file")
        except InvalidRequestError:
            upload.discard()
            raise
        file_id = new_id("file")
        os.replace(upload.path, self.dir / file_id)
        row = files_db.insert(self.db, {
            "id": file_id, "owner_key_id": owner, "filename": filename,
            "purpose": purpose, "bytes": upload.size, "sha256": upload.sha256,
            "storage": file_id, "status": status, "status_details": None,
            "created_at": int(time.time()), "expires_at": None})
        return to_api(row)

    def begin_staged(self) -> Upload:
        """A server-made file (no size limit): write it, close it, then `record` it."""
        return Upload(self.dir)

    def record(self, upload: Upload, *, owner: str | None, filename: str, purpose: str) -> dict:
        """Move a closed staged file into place and return the row to insert (the caller
        inserts it, e.g. in the same transaction as the batch that made it)."""
        file_id = new_id("file")
        os.replace(upload.path, self.dir / file_id)
        return {"id": file_id, "owner_key_id": owner, "filename": filename, "purpose": purpose,
                "bytes": upload.size, "sha256": upload.sha256, "storage": file_id,
                "status": "processed", "status_details": None, "created_at": int(time.time()),
                "expires_at": None}

    def row(self, file_id: str, key: dict | None, *, param: str = "file_id") -> dict:
        """The row of a file the key may see (None: no key check); else NotFoundError naming
        `param` (the request's field that held the id)."""
        row = files_db.get(self.db, file_id, owner=owner_scope(key) if key else None)
        if row is None:
            raise NotFoundError(f"No such file: {file_id!r}", param=param,
                                code="file_not_found")
        return row

    def get(self, file_id: str, key: dict) -> dict:
        return to_api(self.row(file_id, key))

    def path(self, row: dict) -> Path:
        p = self.dir / row["storage"]
        if not p.exists():
            raise NotFoundError(f"The content of file {row['id']!r} is missing on disk",
                                param="file_id", code="file_not_found")
        return p

    def list(self, key: dict, *, purpose: str | None = None, after: str | None = None,
             limit: int = MAX_LIST_LIMIT, order: str = "desc") -> dict:
        if purpose:
            check_purpose(purpose, allowed=PURPOSES)
        if order not in ("asc", "desc"):
            raise InvalidRequestError("Invalid 'order': expected 'asc' or 'desc'", param="order",
                                      code="invalid_parameter")
        limit = check_limit(limit, MAX_LIST_LIMIT)
        rows, more = files_db.page(self.db, owner=owner_scope(key), purpose=purpose, after=after,
                                   limit=limit, order=order)
        return list_object([to_api(r) for r in rows], more)

    def delete(self, file_id: str, key: dict) -> dict:
        row = self.row(file_id, key)
        files_db.delete(self.db, file_id)
        (self.dir / row["storage"]).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}


def _clean_name(filename: str | None) -> str:
    """A display name: the last path component, or `upload` when none was sent."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable()).strip()[:255]
    return name or "upload"
