"""The batch service behind /v1/batches: create, list, retrieve, cancel."""
from __future__ import annotations

import json
import time

from sqlite_utils import Database

from llmp.db import batches as batches_db
from llmp.errors import (
    InvalidRequestError,
    NotFoundError,
)
from llmp.ids import new_id
from llmp.protocol.base import parse
from llmp.protocol.resources import (
    CreateBatchRequest,
)
from llmp.services.batches.api import to_api
from llmp.services.batches.runner import BatchRunner
from llmp.services.batches.validation import parse_window
from llmp.services.files import FileStore
from llmp.services.lists import check_limit, list_object, owner_scope


class Batches:
    """The batch API over one home: create/get/list/cancel, driven by a `BatchRunner`."""

    def __init__(self, db: Database, store: FileStore, runner: BatchRunner | None = None):
        self.db = db
        self.store = store
        self.runner = runner

    def create(self, key: dict, body: dict | CreateBatchRequest) -> dict:
        req = body if isinstance(body, CreateBatchRequest) else parse(CreateBatchRequest, body)
        file_id, endpoint, window = req.input_file_id, req.endpoint, req.completion_window
        seconds = parse_window(window)
        metadata = req.metadata
        f = self.store.row(file_id, key, param="input_file_id")
        if f["purpose"] != "batch":
            raise InvalidRequestError(
                f"File {file_id!r} has purpose {f['purpose']!r}; a batch needs a file uploaded "
                f"with purpose 'batch'", param="input_file_id", code="invalid_file")
        now = int(time.time())
        row = batches_db.insert(self.db, {
            "id": new_id("batch"), "owner_key_id": key["id"], "endpoint": endpoint,
            "input_file_id": file_id, "completion_window": window, "window_seconds": seconds,
            "status": "validating", "metadata": json.dumps(metadata) if metadata else None,
            "created_at": now, "expires_at": now + seconds})
        if self.runner is not None:
            self.runner.wake()
        return to_api(self.db, row)

    def row(self, batch_id: str, key: dict) -> dict:
        row = batches_db.get(self.db, batch_id, owner=owner_scope(key))
        if row is None:
            raise NotFoundError(f"No such batch: {batch_id!r}", param="batch_id",
                                code="batch_not_found")
        return row

    def get(self, batch_id: str, key: dict) -> dict:
        return to_api(self.db, self.row(batch_id, key))

    def list(self, key: dict, *, after: str | None = None, limit: int = 20) -> dict:
        rows, more = batches_db.page(self.db, owner=owner_scope(key), after=after,
                                     limit=check_limit(limit, 100))
        return list_object([to_api(self.db, r) for r in rows], more)

    def cancel(self, batch_id: str, key: dict) -> dict:
        """validating | in_progress -> cancelling; the runner stops its lines and finishes the
        batch as cancelled (finished lines are kept). Cancelling twice is a no-op."""
        row = self.row(batch_id, key)
        if row["status"] in ("cancelling", "cancelled"):
            return to_api(self.db, row)
        if not batches_db.transition(self.db, batch_id, "cancelling",
                                     allowed_from=("validating", "in_progress"),
                                     at=int(time.time())):
            raise InvalidRequestError(
                f"Batch {batch_id!r} is {self.row(batch_id, key)['status']} and can no longer "
                f"be cancelled", param="batch_id", code="batch_not_cancellable")
        if self.runner is not None:
            self.runner.cancel(batch_id)
        return self.get(batch_id, key)
