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


@MIGRATIONS(name="0002_api_keys")
def m0002_api_keys(db: Database) -> None:
    db["api_keys"].create(
        {
            "id": str,  # key_...
            "name": str,
            "key_hash": str,  # sha256 hex of the secret; the secret itself is never stored
            "prefix": str,  # short display prefix ("sk-AbCd")
            "permissions": str,  # JSON list
            "tier": str,  # free | pro | enterprise
            "requests_per_minute": int,  # NULL: the tier's limit
            "tokens_per_minute": int,
            "monthly_budget": float,  # NULL: no monthly cost budget
            "requests_per_month": int,
            "tokens_per_month": int,
            "created_at": str,
            "expires_at": str,
            "revoked_at": str,
            "last_used_at": str,
        },
        pk="id",
        not_null={"name", "key_hash", "prefix", "permissions", "tier", "created_at"},
    )
    db["api_keys"].create_index(["key_hash"], unique=True)


@MIGRATIONS(name="0003_usage")
def m0003_usage(db: Database) -> None:
    # One row per request (failed ones too).
    db["usage"].create(
        {
            "id": int,
            "request_id": str,
            "created_at": str,  # ISO UTC
            "key_id": str,
            "model": str,
            "endpoint": str,
            "status": int,  # HTTP status
            "error_type": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "cached_tokens": int,
            "cost": float,
            "latency_ms": float,
            "ttft_ms": float,
            "batch_id": str,
        },
        pk="id",
    )
    db["usage"].create_index(["created_at"])
    db["usage"].create_index(["key_id", "created_at"])
    # Hourly roll-ups written with each row, so /v1/usage over a year reads a few thousand rows.
    db["usage_hourly"].create(
        {
            "hour": str,  # "YYYY-MM-DDTHH"
            "key_id": str,
            "model": str,
            "endpoint": str,
            "requests": int,
            "errors": int,
            "prompt_tokens": int,
            "completion_tokens": int,
            "cost": float,
            "latency_ms_sum": float,
        },
        pk=("hour", "key_id", "model", "endpoint"),
    )
    db["usage_hourly"].create_index(["key_id", "hour"])
    db["usage_hourly"].create_index(["model", "hour"])
    # Latency histogram per hour (log-spaced buckets) for p50/p95/p99.
    db["usage_latency"].create(
        {"hour": str, "key_id": str, "model": str, "bucket": int, "count": int},
        pk=("hour", "key_id", "model", "bucket"),
    )


@MIGRATIONS(name="0004_chat")
def m0004_chat(db: Database) -> None:
    # `llmp chat` conversations (client-side history).
    db["chat_sessions"].create(
        {"id": str, "title": str, "model": str, "system": str, "server_url": str,
         "created_at": str, "updated_at": str},
        pk="id",
    )
    db["chat_messages"].create(
        {"id": int, "session_id": str, "role": str, "content": str, "created_at": str},
        pk="id",
        foreign_keys=[("session_id", "chat_sessions", "id")],
    )
    db["chat_messages"].create_index(["session_id", "id"])


@MIGRATIONS(name="0010_files")
def m0010_files(db: Database) -> None:
    db["files"].create(
        {
            "id": str,
            "owner_key_id": str,  # the API key that uploaded it (or the batch's owner)
            "filename": str,
            "purpose": str,  # batch | fine-tune | batch_output | fine-tune-results
            "bytes": int,
            "sha256": str,
            "storage": str,  # file name under settings.files_dir
            "status": str,  # uploaded | processed | error
            "status_details": str,
            "created_at": int,
            "expires_at": int,
        },
        pk="id",
        not_null={"filename", "purpose", "storage"},
    )
    db["files"].create_index(["owner_key_id", "created_at"])
    db["files"].create_index(["purpose"])


@MIGRATIONS(name="0011_batches")
def m0011_batches(db: Database) -> None:
    db["batches"].create(
        {
            "id": str,
            "owner_key_id": str,
            "endpoint": str,
            "input_file_id": str,
            "completion_window": str,
            "window_seconds": int,
            "model": str,
            "status": str,
            "output_file_id": str,
            "error_file_id": str,
            "errors": str,  # JSON list of {code, message, line, param}
            "metadata": str,  # JSON object
            "created_at": int,
            "in_progress_at": int,
            "expires_at": int,
            "finalizing_at": int,
            "completed_at": int,
            "failed_at": int,
            "expired_at": int,
            "cancelling_at": int,
            "cancelled_at": int,
            "prompt_tokens": int,
            "completion_tokens": int,
        },
        pk="id",
        not_null={"endpoint", "input_file_id", "status"},
        defaults={"prompt_tokens": 0, "completion_tokens": 0},
    )
    db["batches"].create_index(["owner_key_id", "created_at"])
    db["batches"].create_index(["status"])
    # One row per input line: the request, then its result (persisted as it completes, so a
    # restarted server resumes without losing or repeating a line).
    db["batch_lines"].create(
        {
            "batch_id": str,
            "line": int,  # 1-based line number in the input file
            "custom_id": str,
            "body": str,  # JSON request body
            "status": str,  # pending | completed | failed | expired | cancelled
            "result": str,  # JSON output line (output or error file)
            "finished_at": int,
        },
        pk=("batch_id", "line"),
        not_null={"custom_id", "body", "status"},
        foreign_keys=[("batch_id", "batches", "id")],
    )
    db["batch_lines"].create_index(["batch_id", "status"])


@MIGRATIONS(name="0012_webhooks")
def m0012_webhooks(db: Database) -> None:
    db["webhooks"].create(
        {
            "id": str,
            "owner_key_id": str,
            "all_keys": int,  # 1: created by an admin key, receives every key's events
            "url": str,
            "events": str,  # JSON list
            "secret": str,
            "created_at": int,
        },
        pk="id",
        not_null={"url", "events", "secret"},
    )
    db["webhook_deliveries"].create(
        {
            "id": str,
            "webhook_id": str,
            "event_id": str,  # the `webhook-id` header: the same across retries
            "event": str,
            "payload": str,  # the exact JSON body that is signed and sent
            "status": str,  # pending | delivered | failed
            "attempts": int,
            "next_attempt_at": float,
            "last_status_code": int,
            "last_error": str,
            "created_at": int,
            "delivered_at": int,
        },
        pk="id",
        not_null={"webhook_id", "event_id", "event", "payload", "status"},
        defaults={"attempts": 0},
        foreign_keys=[("webhook_id", "webhooks", "id")],
    )
    db["webhook_deliveries"].create_index(["status", "next_attempt_at"])
    db["webhook_deliveries"].create_index(["webhook_id", "created_at"])


@MIGRATIONS(name="0005_usage_latency_index")
def m0005_usage_latency_index(db: Database) -> None:
    # /v1/usage reads the latency roll-ups of one key (or of all keys) over a range of hours
    db["usage_latency"].create_index(["key_id", "hour"])


@MIGRATIONS(name="0006_usage_latency_daily")
def m0006_usage_latency_daily(db: Database) -> None:
    # Daily latency histograms: /v1/usage by day over a year reads ~365 x models x buckets rows
    db["usage_latency_daily"].create(
        {"day": str, "key_id": str, "model": str, "bucket": int, "count": int},
        pk=("day", "key_id", "model", "bucket"),
    )
    db["usage_latency_daily"].create_index(["key_id", "day"])


@MIGRATIONS(name="0030_usage_summaries")
def m0030_usage_summaries(db: Database) -> None:
    # /v1/usage over a year in well under a second: roll-ups keyed by key first (WITHOUT ROWID,
    # so one key's or all keys' rows are one contiguous range), a daily roll-up beside the
    # hourly one, and one compact latency histogram row per period, key and model instead of
    # one row per bucket. Backfilled from the existing roll-ups.
    from itertools import groupby

    from llmp.db.usage import encode_hist

    sums = ("requests integer, errors integer, prompt_tokens integer, completion_tokens integer,"
            " cost float, latency_ms_sum float")
    names = "requests, errors, prompt_tokens, completion_tokens, cost, latency_ms_sum"
    db.execute(f"create table usage_hourly_new (hour text, key_id text, model text,"
               f" endpoint text, {sums}, primary key (key_id, hour, model, endpoint))"
               " without rowid")
    db.execute(f"insert into usage_hourly_new (hour, key_id, model, endpoint, {names})"
               f" select hour, key_id, model, endpoint, {names} from usage_hourly")
    db.execute("drop table usage_hourly")
    db.execute("alter table usage_hourly_new rename to usage_hourly")
    db.execute(f"create table usage_daily (day text, key_id text, model text, endpoint text,"
               f" {sums}, primary key (key_id, day, model, endpoint)) without rowid")
    db.execute(f"insert into usage_daily (day, key_id, model, endpoint, {names})"
               f" select substr(hour, 1, 10), key_id, model, endpoint, "
               + ", ".join(f"sum({c})" for c in names.split(", "))
               + " from usage_hourly group by substr(hour, 1, 10), key_id, model, endpoint")
    for period, old, new in (("hour", "usage_latency", "usage_hist_hourly"),
                             ("day", "usage_latency_daily", "usage_hist_daily")):
        db.execute(f"create table {new} ({period} text, key_id text, model text, hist text,"
                   f" primary key (key_id, {period}, model)) without rowid")
        rows = db.execute(f"select key_id, {period}, model, bucket, count from {old}"
                          f" order by key_id, {period}, model, bucket")
        db.conn.executemany(
            f"insert into {new} (key_id, {period}, model, hist) values (?, ?, ?, ?)",
            ((*k, encode_hist({r[3]: r[4] for r in group}))
             for k, group in groupby(rows, key=lambda r: r[:3])))
        db.execute(f"drop table {old}")


@MIGRATIONS(name="0031_usage_hist_percentiles")
def m0031_usage_hist_percentiles(db: Database) -> None:
    # Each latency histogram row keeps its p50/p95/p99 ("p50,p95,p99", ms): a report entry
    # made of one histogram row (a year by hour: ~44,000 of them) reads them as they are.
    from llmp.db.usage import decode_hist, hist_percentiles

    for table, period in (("usage_hist_hourly", "hour"), ("usage_hist_daily", "day")):
        db.execute(f"alter table {table} add column percentiles text")
        rows = db.execute(f"select key_id, {period}, model, hist from {table}").fetchall()
        db.conn.executemany(
            f"update {table} set percentiles = ? where key_id = ? and {period} = ? and model = ?",
            ((",".join(map(str, hist_percentiles(decode_hist(h)))), k, t, m)
             for k, t, m, h in rows))


@MIGRATIONS(name="0040_batch_line_crash_guard")
def m0040_batch_line_crash_guard(db: Database) -> None:
    # in_flight: 1 while a line runs (set, durably, before it starts; cleared when it finishes
    # or is stopped cleanly); crashes: how often the process died while the line ran.
    db.execute("alter table batch_lines add column in_flight integer not null default 0")
    db.execute("alter table batch_lines add column crashes integer not null default 0")


@MIGRATIONS(name="0050_api_keys_bootstrap")
def m0050_api_keys_bootstrap(db: Database) -> None:
    # The bootstrap admin key (LLMP_ADMIN_KEY or $LLMP_HOME/admin_key) is marked, so that the
    # API can refuse to revoke it; `llmp serve` marks it at every start.
    db.execute("alter table api_keys add column bootstrap integer not null default 0")


@MIGRATIONS(name="0080_model_adapters")
def m0080_model_adapters(db: Database) -> None:
    # LoRA adapters are models of their own: `parent` is the base model's id (NULL for a
    # base), `lora_scale` the scale requests apply it with.
    db["models"].add_column("parent", str)
    db["models"].add_column("lora_scale", float)
    db["models"].create_index(["parent"])


@MIGRATIONS(name="0090_model_guard_profile")
def m0090_model_guard_profile(db: Database) -> None:
    # A guard model (moderations): the profile that renders its prompt and reads its verdict
    # ("llama-guard-3", "qwen3-guard"); NULL for every other model.
    db["models"].add_column("guard_profile", str)


@MIGRATIONS(name="0091_api_keys_moderate_input")
def m0091_api_keys_moderate_input(db: Database) -> None:
    # 1: the key's chat/completions inputs (HTTP and batch lines) are checked by the guard
    # model first; flagged input is refused with 400 content_policy_violation
    db["api_keys"].add_column("moderate_input", int, not_null_default=0)


@MIGRATIONS(name="0110_jobs")
def m0110_jobs(db: Database) -> None:
    # The durable job runner's table (llmp.jobs): one row per unit of background work of any
    # kind (fine-tuning jobs now; batches and webhook deliveries may move onto it). `state`:
    # queued | running | paused | done; `runner` is the process token that claimed it,
    # `heartbeat_at` when that process last said it was alive; `crashes` counts the times the
    # process died while the job ran (the crash guard).
    db["jobs"].create(
        {
            "id": str,  # the resource's own id (ftjob-...)
            "kind": str,
            "state": str,
            "runner": str,
            "attempts": int,
            "crashes": int,
            "claimed_at": float,
            "heartbeat_at": float,
            "created_at": float,
            "updated_at": float,
        },
        pk="id",
        not_null={"kind", "state"},
        defaults={"attempts": 0, "crashes": 0},
    )
    db["jobs"].create_index(["kind", "state"])


@MIGRATIONS(name="0111_fine_tuning")
def m0111_fine_tuning(db: Database) -> None:
    db["fine_tuning_jobs"].create(
        {
            "id": str,  # ftjob-...
            "owner_key_id": str,
            "model": str,
            "training_file": str,
            "validation_file": str,
            "status": str,  # validating_files queued running paused succeeded failed cancelled
            "hyperparameters": str,  # JSON as requested ("auto" kept)
            "resolved": str,  # JSON: the values the worker uses
            "method": str,  # JSON
            "seed": int,
            "suffix": str,
            "metadata": str,  # JSON
            "fine_tuned_model": str,
            "result_files": str,  # JSON list
            "trained_tokens": int,
            "error": str,  # JSON {code, message, param}
            "estimated_finish": int,
            "created_at": int,
            "started_at": int,
            "finished_at": int,
        },
        pk="id",
        not_null={"model", "training_file", "status", "created_at"},
    )
    db["fine_tuning_jobs"].create_index(["owner_key_id"])
    db["fine_tuning_events"].create(
        {"id": str, "job_id": str, "created_at": int, "level": str, "message": str,
         "type": str, "data": str},
        pk="id", not_null={"job_id", "created_at", "level", "message"})
    db["fine_tuning_events"].create_index(["job_id"])
    db["fine_tuning_checkpoints"].create(
        {"id": str, "job_id": str, "created_at": int, "step_number": int, "epoch": int,
         "metrics": str, "fine_tuned_model_checkpoint": str, "path": str},
        pk="id", not_null={"job_id", "created_at", "step_number"})
    db["fine_tuning_checkpoints"].create_index(["job_id"])


@MIGRATIONS(name="0112_model_training_price")
def m0112_model_training_price(db: Database) -> None:
    # Price per 1K trained tokens of a fine-tuning job on this base model
    # (`llmp models set-price --training`); NULL: training is free.
    db["models"].add_column("price_training", float)
