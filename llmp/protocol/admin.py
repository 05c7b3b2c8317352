"""Request bodies of llmp's operator endpoints (/v1/admin/..., admin key)."""
from __future__ import annotations

from pydantic import Field

from llmp.protocol.base import RequestModel
from llmp.protocol.endpoints import endpoint


@endpoint("POST /v1/admin/models/load", summary="Load a model now")
class LoadModelRequest(RequestModel):
    model: str = Field(min_length=1, max_length=256, description="A model id or alias.")


@endpoint("POST /v1/admin/models/unload", summary="Unload a model")
class UnloadModelRequest(RequestModel):
    model: str = Field(min_length=1, max_length=256, description="A model id or alias.")
    force: bool = Field(False, description="End the model's requests in flight (503).")
