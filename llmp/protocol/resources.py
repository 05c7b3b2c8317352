"""Request bodies and query strings of the management endpoints: API keys, files, batches,
webhooks, usage. Types and ranges live here; what needs the database (does the file exist,
is the URL allowed) stays in the services.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictStr, WithJsonSchema, field_validator

from llmp.protocol.base import RequestModel, number
from llmp.protocol.endpoints import endpoint

#: the largest count a key limit may have: exact as a float, far above any real limit
MAX_COUNT = 2 ** 53
MAX_BUDGET = 1e12

KEY_PERMISSIONS = ("inference", "models.read", "files.read", "files.write", "batches.read",
                   "batches.write", "fine_tuning.read", "fine_tuning.write", "moderation",
                   "usage.read", "webhooks", "admin")
TIER_NAMES = ("free", "pro", "enterprise")
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                   "/v1/moderations")
#: what POST /v1/files accepts; `user_data` and `evals` (OpenAI's) are kept as plain stored
#: files: nothing here reads them
UPLOAD_PURPOSES = ("batch", "fine-tune", "user_data", "evals")

Permission = Annotated[StrictStr, WithJsonSchema({"type": "string", "enum": list(KEY_PERMISSIONS)})]
Count = number(1, MAX_COUNT, integer=True)
Name = Annotated[StrictStr, Field(min_length=1, max_length=256)]


class RateLimit(RequestModel):
    requests_per_minute: Count | None = None  # type: ignore[valid-type]
    tokens_per_minute: Count | None = None  # type: ignore[valid-type]


class KeyLimits(RequestModel):
    monthly_budget: number(0, MAX_BUDGET, exclusive_lo=True) | None = None  # type: ignore[valid-type]
    requests_per_month: Count | None = None  # type: ignore[valid-type]
    tokens_per_month: Count | None = None  # type: ignore[valid-type]


@endpoint("POST /v1/auth/api-keys", summary="Create an API key (admin)")
class CreateKeyRequest(RequestModel):
    """POST /v1/auth/api-keys"""

    name: Name
    permissions: Annotated[list[Permission], Field(min_length=1, max_length=64)] | None = None
    rate_limit: RateLimit | None = None
    limits: KeyLimits | None = None
    tier: Literal[TIER_NAMES] | None = None  # type: ignore[valid-type]
    expires_at: StrictStr | None = None
    # check this key's chat/completions inputs with the guard model first (moderations)
    moderate_input: StrictBool | None = None

    @field_validator("permissions")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        unknown = [p for p in v or [] if p not in KEY_PERMISSIONS]
        if unknown:
            raise ValueError(f"unknown permission(s) {', '.join(map(repr, unknown[:5]))}; "
                             f"known: {', '.join(KEY_PERMISSIONS)}")
        return list(dict.fromkeys(v)) if v is not None else None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a non-empty string")
        return v.strip()


Metadata = Annotated[dict[Annotated[StrictStr, Field(max_length=64)],
                          Annotated[StrictStr, Field(max_length=512)]], Field(max_length=16)]


@endpoint("POST /v1/batches", summary="Create a batch")
class CreateBatchRequest(RequestModel):
    """POST /v1/batches"""

    input_file_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    endpoint: Literal[BATCH_ENDPOINTS]  # type: ignore[valid-type]
    completion_window: Annotated[StrictStr, Field(max_length=32)] = "24h"
    metadata: Metadata | None = None


class BatchLine(RequestModel):
    """One line of a batch input file (its body is the endpoint's request model)."""

    custom_id: Annotated[StrictStr, Field(min_length=1, max_length=512)]
    method: Literal["POST"]
    url: Literal[BATCH_ENDPOINTS]  # type: ignore[valid-type]
    body: dict


class _Role(RequestModel):
    role: StrictStr


class _LineBody(RequestModel):
    model: Annotated[StrictStr, Field(min_length=1)]
    stream: Literal[False] | None = None


class ChatLineShape(_LineBody):
    """The shape a chat batch line's body must have for the batch to be accepted; its values
    are validated by `ChatCompletionRequest` when the line runs (a bad value fails that line
    with a 400 in the error file, as OpenAI's batches do)."""

    messages: Annotated[list[_Role], Field(min_length=1)]


class CompletionLineShape(_LineBody):
    """As `ChatLineShape`, for /v1/completions."""

    prompt: StrictStr | Annotated[list, Field(min_length=1)]


class EmbeddingLineShape(_LineBody):
    """As `ChatLineShape`, for /v1/embeddings (values checked by `EmbeddingRequest`)."""

    input: StrictStr | Annotated[list, Field(min_length=1)]


class ModerationLineShape(_LineBody):
    """As `ChatLineShape`, for /v1/moderations (values checked by `ModerationRequest`; a
    line names its model, e.g. "omni-moderation-latest")."""

    input: StrictStr | Annotated[list, Field(min_length=1)]


@endpoint("POST /v1/webhooks", summary="Create a webhook endpoint")
class CreateWebhookRequest(RequestModel):
    """POST /v1/webhooks"""

    url: Annotated[StrictStr, Field(min_length=1, max_length=2048)]
    events: Annotated[list[StrictStr], Field(min_length=1, max_length=64)]
    secret: Annotated[StrictStr, Field(min_length=1, max_length=1024)] | None = None


@endpoint("POST /v1/files", where="form", files=("file",), summary="Upload a file")
class UploadForm(RequestModel):
    """POST /v1/files (multipart/form-data; `file` is the binary part)."""

    purpose: Literal[UPLOAD_PURPOSES]  # type: ignore[valid-type]


MODEL_CATEGORIES = ("text-generation", "chat", "embedding")
MODEL_SIZES = ("small", "medium", "large", "xl")
MAX_MODELS_PER_PAGE = 100


@endpoint("GET /v1/models", where="query", summary="List models")
class ModelsQuery(RequestModel):
    """GET /v1/models?category=&size=&provider=&page=&per_page= (the query's strings are
    read as integers where they must be)."""

    category: Literal[MODEL_CATEGORIES] | None = None  # type: ignore[valid-type]
    size: Literal[MODEL_SIZES] | None = None  # type: ignore[valid-type]
    provider: Annotated[StrictStr, Field(max_length=256)] | None = None
    page: Annotated[int, Field(ge=1, le=MAX_COUNT)] | None = None
    per_page: Annotated[int, Field(ge=1, le=MAX_MODELS_PER_PAGE)] | None = None


@endpoint("GET /v1/batches", "GET /v1/webhooks/{webhook_id}/deliveries", where="query")
class ListQuery(RequestModel):
    """?after=&limit= of the cursor-paged lists (20 a page by default)."""

    after: StrictStr | None = None
    limit: number(1, 100, integer=True) | None = None  # type: ignore[valid-type]


#: what GET /v1/files?purpose= may name: uploads and the server's own outputs
FILE_PURPOSES = UPLOAD_PURPOSES + ("batch_output", "fine-tune-results")


@endpoint("GET /v1/files", where="query")
class FileListQuery(RequestModel):
    """GET /v1/files?purpose=&order=&after=&limit= (every file by default)."""

    after: StrictStr | None = None
    limit: number(1, 10_000, integer=True) | None = None  # type: ignore[valid-type]
    order: Literal["asc", "desc"] | None = None
    purpose: Literal[FILE_PURPOSES] | None = None  # type: ignore[valid-type]


@endpoint("GET /v1/usage", where="query", summary="Usage report")
class UsageQuery(RequestModel):
    """GET /v1/usage"""

    start_date: StrictStr | None = None
    end_date: StrictStr | None = None
    granularity: Literal["day", "hour"] = "day"
    model: StrictStr | None = None
    key_id: StrictStr | None = None
    group_by: Literal["model", "key"] = "model"
