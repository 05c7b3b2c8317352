"""Validate llmp's bodies (files, batches, chat, completions, models) against OpenAI's
component schemas.

OpenAI's published schemas type optional fields as plain strings/integers, yet OpenAI's API
(and llmp's spec, e.g. `"output_file_id": null`, `"status_details": null`) sends null for an
optional field that has no value; so an optional property also accepts null here. Required
properties are checked exactly as published.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema

_DATA = Path(__file__).parent / "data"
_RAW = json.loads((_DATA / "openai_batch_schemas.json").read_text())
# embeddings and moderations (CreateEmbeddingResponse, CreateModerationResponse)
_RAW["components"]["schemas"].update(json.loads(
    (_DATA / "openai_embed_moderation_schemas.json").read_text()
)["components"]["schemas"])
# and the inference/models schemas (chat, completions, stream chunks, models)
_RAW["components"]["schemas"] = {
    **json.loads((_DATA / "openai_schemas.json").read_text())["components"]["schemas"],
    **_RAW["components"]["schemas"]}


def _openapi_nullable(node):
    """OpenAPI 3.0's `nullable: true` (still used in parts of OpenAI's 3.1 file) as JSON Schema."""
    if isinstance(node, dict):
        node = {k: _openapi_nullable(v) for k, v in node.items()}
        if node.pop("nullable", False):
            node = {"anyOf": [node, {"type": "null"}]}
        return node
    return [_openapi_nullable(v) for v in node] if isinstance(node, list) else node


def _nullable_optionals(node):
    if isinstance(node, dict):
        out = {k: _nullable_optionals(v) for k, v in node.items()}
        props = out.get("properties")
        if isinstance(props, dict) and out.get("type", "object") == "object":
            required = set(out.get("required", []))
            out["properties"] = {k: v if k in required else {"anyOf": [v, {"type": "null"}]}
                                 for k, v in props.items()}
        return out
    if isinstance(node, list):
        return [_nullable_optionals(v) for v in node]
    return node


SCHEMAS = _nullable_optionals(_openapi_nullable(copy.deepcopy(_RAW)))


def check(body: dict, schema: str) -> None:
    jsonschema.validate(body, {"$ref": f"#/components/schemas/{schema}", **SCHEMAS},
                        cls=jsonschema.Draft202012Validator)
