"""OpenAI-style lists of what belongs to an API key (files, batches, webhooks, deliveries):
who sees what, the `limit` check, and the list object."""
from __future__ import annotations

from llmp.errors import InvalidRequestError
from llmp.services import keys


def owner_scope(key: dict) -> str | None:
    """The owner filter for a key's queries: its own id, or None (everything) for an admin."""
    return None if keys.is_admin(key) else key["id"]


def check_limit(limit: int, maximum: int) -> int:
    """`limit` itself when it is 1 to `maximum`; an invalid_request_error otherwise."""
    if limit < 1 or limit > maximum:
        raise InvalidRequestError(f"Invalid 'limit': expected 1 to {maximum}", param="limit",
                                  code="invalid_parameter")
    return limit


def list_object(data: list[dict], has_more: bool) -> dict:
    """OpenAI's cursor list shape: {object: "list", data, first_id, last_id, has_more}."""
    return {"object": "list", "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more}
