"""The batch object as the API shows it."""
from __future__ import annotations

import json

from sqlite_utils import Database

from llmp.db import batches as batches_db

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


def to_api(db: Database, row: dict) -> dict:
    """A `batches` row as OpenAI's batch object, with live request_counts."""
    c = batches_db.counts(db, row["id"])
    total = sum(c.values())
    errors = json.loads(row["errors"]) if row["errors"] else None
    p, o = row["prompt_tokens"] or 0, row["completion_tokens"] or 0
    out = {
        "id": row["id"], "object": "batch", "endpoint": row["endpoint"], "model": row["model"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": row["input_file_id"], "completion_window": row["completion_window"],
        "status": row["status"], "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"],
    }
    for k in ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at",
              "failed_at", "expired_at", "cancelling_at", "cancelled_at"):
        out[k] = row[k]
    out["request_counts"] = {"total": total, "completed": c["completed"],
                             "failed": c["failed"] + c["expired"] + c["cancelled"]}
    out["metadata"] = json.loads(row["metadata"]) if row["metadata"] else None
    out["usage"] = {"input_tokens": p, "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": o, "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": p + o}
    return out
