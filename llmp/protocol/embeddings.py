"""Request bodies of POST /v1/embeddings and POST /v1/moderations (OpenAI's
CreateEmbeddingRequest and CreateModerationRequest), shared by the routes and batch lines."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, StrictInt, StrictStr, field_validator

from llmp.protocol.base import OpenModel, RequestModel, number
from llmp.protocol.endpoints import endpoint

#: OpenAI's limits: at most 2048 inputs per request, 300,000 tokens over all of them
MAX_INPUTS = 2048
MAX_REQUEST_TOKENS = 300_000

NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]
TokenIds = Annotated[list[StrictInt], Field(min_length=1)]
EmbeddingInput = Union[
    NonEmptyStr,
    Annotated[list[NonEmptyStr], Field(min_length=1, max_length=MAX_INPUTS)],
    Annotated[list[StrictInt], Field(min_length=1, max_length=MAX_REQUEST_TOKENS)],
    Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_INPUTS)],
]


@endpoint("POST /v1/embeddings", summary="Create embeddings")
class EmbeddingRequest(RequestModel):
    """POST /v1/embeddings"""

    model: NonEmptyStr
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: number(1, integer=True) | None = None  # type: ignore[valid-type]
    user: StrictStr | None = None

    def inputs(self) -> list[str | list[int]]:
        """The inputs as a list: strings or token id lists."""
        v = self.input
        if isinstance(v, str):
            return [v]
        if v and isinstance(v[0], int):
            return [list(v)]  # type: ignore[arg-type]
        return list(v)  # type: ignore[arg-type]


class ModerationTextPart(OpenModel):
    type: Literal["text"]
    text: StrictStr


class ModerationImageURL(OpenModel):
    url: StrictStr


class ModerationImagePart(OpenModel):
    type: Literal["image_url"]
    image_url: ModerationImageURL


ModerationPart = Annotated[ModerationTextPart | ModerationImagePart,
                           Field(discriminator="type")]


@endpoint("POST /v1/moderations", summary="Classify text with the guard model")
class ModerationRequest(RequestModel):
    """POST /v1/moderations"""

    input: (StrictStr
            | Annotated[list[StrictStr], Field(min_length=1, max_length=MAX_INPUTS)]
            | Annotated[list[ModerationPart], Field(min_length=1, max_length=MAX_INPUTS)])
    model: NonEmptyStr = "omni-moderation-latest"

    @field_validator("input")
    @classmethod
    def _no_images(cls, v):
        if isinstance(v, list) and any(isinstance(p, ModerationImagePart) for p in v):
            raise ValueError("image inputs are not supported by llmp's guard models; send "
                             "text parts")
        return v

    def texts(self) -> list[str]:
        """One text per result: a string, each string of an array, or (OpenAI's multi-modal
        form) the text parts together as one input."""
        v = self.input
        if isinstance(v, str):
            return [v]
        if v and isinstance(v[0], ModerationTextPart):
            return ["\n".join(p.text for p in v)]  # type: ignore[union-attr]
        return list(v)  # type: ignore[arg-type]
