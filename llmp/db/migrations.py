"""The schema, only through ordered, named migrations (sqlite-utils `Migrations`).

Rules: never edit or reorder an applied migration; add a new one at the end.
Each migration is applied once, recorded in `_sqlite_migrations`.
"""
from __future__ import annotations

from sqlite_utils import Database, Migrations

MIGRATIONS = Migrations("llmp")


@MIGRATIONS(name="0001_models")
def m0001_models(db: Database) -> None:
    db["models"].create(
        {
            "id": str,
            "name": str,
            "path": str,
            "provider": str,
            "category": str,
            "size_class": str,
            "architecture": str,
            "parameters": int,
            "context_length": int,
            "max_output_tokens": int,
            "quantization": str,
            "file_type": int,
            "chat_template": str,
            "capabilities": str,  # JSON list
            "languages": str,  # JSON list
            "description": str,
            "size_bytes": int,
            "sha256": str,
            "price_input": float,  # per 1K tokens
            "price_output": float,
            "currency": str,
            "source": str,  # hf repo:file, local path, quantize:<id>, synth:<preset>
            "hf_source": str,  # safetensors repo this model belongs to (fine-tuning)
            "revision": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"name", "path"},
    )
    db["model_aliases"].create({"alias": str, "model_id": str}, pk="alias",
                               foreign_keys=[("model_id", "models", "id")])
    db["models"].create_index(["category"])
    db["models"].create_index(["provider"])
