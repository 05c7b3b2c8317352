"""Request bodies of llmp's operator endpoints (/v1/admin/..., admin key)."""
from __future__ import annotations

from typing import Annotated

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


@endpoint("POST /v1/admin/models/{model_id}/price", summary="Set a model's prices")
class SetPriceRequest(RequestModel):
    """Prices per 1K tokens (what usage and billing charge); what is left out is kept."""
    input_price: float | None = Field(None, ge=0, description="Per 1K prompt tokens.")
    output_price: float | None = Field(None, ge=0, description="Per 1K completion tokens.")
    training_price: float | None = Field(
        None, ge=0, description="Per 1K trained tokens of fine-tuning jobs on this model.")
    currency: str | None = Field(None, pattern=r"^[A-Za-z]{3}$", description="e.g. USD.")


@endpoint("POST /v1/admin/models/{model_id}/aliases", summary="Add or remove a model's aliases")
class ModelAliasesRequest(RequestModel):
    """Other names requests may use for the model: `add` first, then `remove`."""
    add: list[Annotated[str, Field(min_length=1, max_length=256, pattern=r"^\S+$")]] = Field(
        default_factory=list, max_length=100, description="Aliases to add.")
    remove: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=100, description="Aliases to remove (each must be one).")
