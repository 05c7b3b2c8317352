"""Request bodies and query strings of the fine-tuning endpoints (OpenAI's shapes, served under
both /v1/fine_tuning/jobs and the spec's /v1/fine-tuning/jobs), and the training file's lines.

llmp's extensions (documented): `lora: {rank, alpha, target_modules}` beside the
hyper-parameters (also accepted inside `hyperparameters` or `method.supervised`).
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictStr, field_validator, model_validator

from llmp.protocol.base import OpenModel, RequestModel, number
from llmp.protocol.endpoints import endpoint
from llmp.protocol.resources import Metadata

Auto = Literal["auto"]
NEpochs = Auto | number(1, 50, integer=True)  # type: ignore[valid-type]
BatchSize = Auto | number(1, 256, integer=True)  # type: ignore[valid-type]
LrMultiplier = Auto | number(0, 100, exclusive_lo=True)  # type: ignore[valid-type]
#: the LoRA target modules llmp trains by default (and the only ones it accepts)
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Hyperparameters(RequestModel):
    n_epochs: NEpochs = "auto"  # type: ignore[valid-type]
    batch_size: BatchSize = "auto"  # type: ignore[valid-type]
    learning_rate_multiplier: LrMultiplier = "auto"  # type: ignore[valid-type]


class LoraOptions(RequestModel):
    """llmp's extension: the adapter's shape."""

    rank: number(1, 256, integer=True) = 8  # type: ignore[valid-type]
    alpha: number(0, 4096, exclusive_lo=True) | None = None  # type: ignore[valid-type]
    target_modules: Annotated[list[Literal[TARGET_MODULES]],  # type: ignore[valid-type]
                              Field(min_length=1, max_length=7)] | None = None


class SupervisedMethod(RequestModel):
    hyperparameters: Hyperparameters | None = None
    lora: LoraOptions | None = None


class Method(RequestModel):
    type: Literal["supervised"]
    supervised: SupervisedMethod | None = None


FileId = Annotated[StrictStr, Field(min_length=1, max_length=256)]


@endpoint("POST /v1/fine_tuning/jobs", "POST /v1/fine-tuning/jobs",
          summary="Create a fine-tuning job")
class CreateFineTuningJobRequest(RequestModel):
    """POST /v1/fine_tuning/jobs"""

    model: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    training_file: FileId
    validation_file: FileId | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None
    seed: number(0, 2**31 - 1, integer=True) | None = None  # type: ignore[valid-type]
    metadata: Metadata | None = None
    lora: LoraOptions | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and not all(c.isalnum() or c in "-_." for c in v):
            raise ValueError("use letters, digits, '-', '_' and '.' only")
        return v

    @model_validator(mode="after")
    def _one_place(self) -> CreateFineTuningJobRequest:
        sup = self.method.supervised if self.method else None
        if self.hyperparameters is not None and sup is not None and \
                sup.hyperparameters is not None:
            raise ValueError("give the hyperparameters in 'hyperparameters' or in "
                             "'method.supervised.hyperparameters', not both")
        return self

    def resolved_hyperparameters(self) -> Hyperparameters:
        sup = self.method.supervised if self.method else None
        return (sup.hyperparameters if sup and sup.hyperparameters else None) \
            or self.hyperparameters or Hyperparameters()

    def lora_options(self) -> LoraOptions:
        sup = self.method.supervised if self.method else None
        return (sup.lora if sup and sup.lora else None) or self.lora or LoraOptions()


@endpoint("GET /v1/fine_tuning/jobs", "GET /v1/fine-tuning/jobs",
          "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/events",
          "GET /v1/fine-tuning/jobs/{fine_tuning_job_id}/events",
          "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
          "GET /v1/fine-tuning/jobs/{fine_tuning_job_id}/checkpoints", where="query")
class FineTuningListQuery(RequestModel):
    """?after=&limit= (and, for jobs, metadata[k]=v)."""

    after: StrictStr | None = None
    limit: int | None = None


# -- the training file --------------------------------------------------------------------------

class TrainingMessage(OpenModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list | None = None
    weight: Literal[0, 1] | None = None
    tool_calls: list | None = None
    function_call: dict | None = None
    name: StrictStr | None = None

    @model_validator(mode="after")
    def _content(self) -> TrainingMessage:
        if self.weight is not None and self.role != "assistant":
            raise ValueError("'weight' is only allowed on assistant messages")
        has_call = bool(self.tool_calls or self.function_call)
        text = self.content
        empty = text is None or (isinstance(text, str) and not text.strip()) or \
            (isinstance(text, list) and not text)
        if empty and not (self.role == "assistant" and has_call):
            raise ValueError(f"a {self.role} message needs non-empty 'content'")
        return self


class TrainingLine(OpenModel):
    """One line of a chat fine-tuning file: {"messages": [...], "tools"?, "functions"?}."""

    messages: Annotated[list[TrainingMessage], Field(min_length=1)]
    tools: list | None = None
    functions: list | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _assistant(self) -> TrainingLine:
        if not any(m.role == "assistant" for m in self.messages):
            raise ValueError("each example needs at least one assistant message")
        if not any(m.role == "assistant" and m.weight != 0 for m in self.messages):
            raise ValueError("every assistant message has weight 0: nothing to learn")
        return self
