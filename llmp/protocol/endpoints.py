"""Which request model belongs to which route: the registry GET /openapi.json reads.

A request model names its route(s) with a class decorator, next to its definition:

    @endpoint("POST /v1/embeddings")
    class EmbeddingRequest(RequestModel): ...

    @endpoint("GET /v1/files", "GET /v1/batches", where="query")
    class ListQuery(RequestModel): ...

`where` is "body" (a JSON body, the default), "query" (the fields are query parameters) or
"form" (multipart/form-data; `files` names the binary parts). The OpenAPI document is built
from the app's router (llmp.server.openapi), so a route with no registered model is still
listed, with its auth and error responses; registering its model adds the request schema.
Routes are written as the router writes them: "METHOD /path/{param}".
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=type[BaseModel])

Where = Literal["body", "query", "form"]


@dataclass(frozen=True)
class Endpoint:
    model: type[BaseModel]
    where: Where = "body"
    files: tuple[str, ...] = ()
    summary: str | None = None
    #: the route can answer text/event-stream (`"stream": true`)
    streams: bool = False
    extra: dict = field(default_factory=dict)


#: (METHOD, path) -> what the route reads, for every registered route
ENDPOINTS: dict[tuple[str, str], list[Endpoint]] = {}


def endpoint(*routes: str, where: Where = "body", files: tuple[str, ...] = (),
             summary: str | None = None, streams: bool = False) -> Callable[[T], T]:
    """Register the decorated model as what `routes` ("POST /v1/batches" ...) read."""
    def register(model: T) -> T:
        for route in routes:
            method, _, path = route.partition(" ")
            if not path.startswith("/"):
                raise ValueError(f"route {route!r} is not 'METHOD /path'")
            entries = ENDPOINTS.setdefault((method.upper(), path), [])
            entries[:] = [e for e in entries if e.where != where]  # re-registration replaces
            entries.append(Endpoint(model, where, files, summary, streams))
        return model

    return register


def endpoints_of(method: str, path: str) -> list[Endpoint]:
    return list(ENDPOINTS.get((method.upper(), path), []))
