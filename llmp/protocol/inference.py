"""Request bodies of POST /v1/chat/completions and /v1/completions (OpenAI's
CreateChatCompletionRequest / CreateCompletionRequest, plus llama.cpp's top_k, min_p,
repeat_penalty and ignore_eos), shared by the HTTP routes and batch lines.

`SamplingFields.sampling_params()` converts a validated body into the engine's
`SamplingParams` once; nothing below this layer re-validates what a client sent.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, StrictBool, StrictStr, field_validator, model_validator

from llmp.engine.types import SamplingParams
from llmp.protocol.base import OpenModel, RequestModel, number
from llmp.protocol.endpoints import endpoint

MAX_N = 16
MAX_STOP = 16
MAX_LOGIT_BIAS = 1024
MAX_TOOLS = 128

NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]


# ----------------------------------------------------------------------------- content parts
class TextPart(OpenModel):
    type: Literal["text", "input_text"]
    text: StrictStr


class ImageURL(OpenModel):
    url: StrictStr
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(OpenModel):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(OpenModel):
    data: StrictStr
    format: StrictStr


class AudioPart(OpenModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileRef(OpenModel):
    file_data: StrictStr | None = None
    file_id: StrictStr | None = None
    filename: StrictStr | None = None


class FilePart(OpenModel):
    type: Literal["file"]
    file: FileRef


class RefusalPart(OpenModel):
    type: Literal["refusal"]
    refusal: StrictStr


UserPart = Annotated[Union[TextPart, ImagePart, AudioPart, FilePart], Field(discriminator="type")]
AssistantPart = Annotated[Union[TextPart, RefusalPart], Field(discriminator="type")]
TextContent = Union[StrictStr, list[TextPart]]


# ----------------------------------------------------------------------------- messages
class FunctionCall(OpenModel):
    name: StrictStr
    arguments: StrictStr | dict[str, Any] = "{}"


class ToolCall(OpenModel):
    id: StrictStr | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(OpenModel):
    role: Literal["system", "developer"]
    content: TextContent
    name: StrictStr | None = None


class UserMessage(OpenModel):
    role: Literal["user"]
    content: Union[StrictStr, list[UserPart]]
    name: StrictStr | None = None


class AssistantMessage(OpenModel):
    role: Literal["assistant"]
    content: Union[StrictStr, list[AssistantPart], None] = None
    refusal: StrictStr | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None


class ToolMessage(OpenModel):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: StrictStr | None = None


class FunctionMessage(OpenModel):
    role: Literal["function"]
    content: StrictStr | None
    name: StrictStr | None = None


Message = Annotated[Union[SystemMessage, UserMessage, AssistantMessage, ToolMessage,
                          FunctionMessage], Field(discriminator="role")]


# ----------------------------------------------------------------------------- tools
class FunctionDef(OpenModel):
    name: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(OpenModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(RequestModel):
    name: StrictStr


class NamedToolChoice(RequestModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class StreamOptions(RequestModel):
    include_usage: StrictBool | None = None


class JSONSchemaSpec(RequestModel):
    name: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class TextFormat(RequestModel):
    type: Literal["text"]


class JSONObjectFormat(RequestModel):
    type: Literal["json_object"]


class JSONSchemaFormat(RequestModel):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[Union[TextFormat, JSONObjectFormat, JSONSchemaFormat],
                           Field(discriminator="type")]


# ----------------------------------------------------------------------------- shared fields
class SamplingFields(RequestModel):
    """What chat and text completions share."""

    model: NonEmptyStr
    frequency_penalty: number(-2, 2) | None = None  # type: ignore[valid-type]
    presence_penalty: number(-2, 2) | None = None  # type: ignore[valid-type]
    logit_bias: dict[str, number(-100, 100)] | None = None  # type: ignore[valid-type]
    n: number(1, MAX_N, integer=True) | None = None  # type: ignore[valid-type]
    seed: number(-(2 ** 63), 2 ** 64, integer=True) | None = None  # type: ignore[valid-type]
    stop: Union[StrictStr, Annotated[list[StrictStr], Field(max_length=MAX_STOP)], None] = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    temperature: number(0, 2) | None = None  # type: ignore[valid-type]
    top_p: number(0, 1) | None = None  # type: ignore[valid-type]
    user: StrictStr | None = None
    # llama.cpp's extensions
    top_k: number(0, 1 << 31, integer=True) | None = None  # type: ignore[valid-type]
    min_p: number(0, 1) | None = None  # type: ignore[valid-type]
    repeat_penalty: number(0, 100) | None = None  # type: ignore[valid-type]
    ignore_eos: StrictBool | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries")
        for k in v:
            if not k.strip().lstrip("-").isdigit():
                raise ValueError(f"keys must be token ids (integers), not {k[:40]!r}")
        return v

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise_param("stream_options",
                        "The 'stream_options' parameter is only allowed when 'stream' is enabled")
        return self

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return [s for s in stops if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(self, *, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            seed=self.seed,
            max_tokens=max_tokens,
            stop=self.stops,
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            repeat_penalty=1.0 if self.repeat_penalty is None else self.repeat_penalty,
            logit_bias={int(k): float(b) for k, b in (self.logit_bias or {}).items()},
            logprobs=logprobs,
            ignore_eos=bool(self.ignore_eos),
        )


def raise_param(param: str, message: str) -> None:
    from llmp.errors import InvalidRequestError

    raise InvalidRequestError(message, param=param, code="invalid_parameter")


# ----------------------------------------------------------------------------- chat
@endpoint("POST /v1/chat/completions", summary="Create a chat completion", streams=True)
class ChatCompletionRequest(SamplingFields):
    """max_tokens / max_completion_tokens (and completions' max_tokens) beyond what the
    context holds are clamped, never refused: generation stops when the request's slot
    context is full, with finish_reason "length" (interactive and batch alike); only a
    prompt that leaves no room at all is a 400 context_length_exceeded."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: number(1, None, integer=True) | None = None  # type: ignore[valid-type]
    max_completion_tokens: number(1, None, integer=True) | None = None  # type: ignore[valid-type]
    logprobs: StrictBool | None = None
    top_logprobs: number(0, 20, integer=True) | None = None  # type: ignore[valid-type]
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: StrictBool | None = None
    functions: Annotated[list[FunctionDef], Field(max_length=MAX_TOOLS)] | None = None
    function_call: Union[Literal["none", "auto"], NamedFunction, None] = None
    response_format: ResponseFormat | None = None
    metadata: dict[str, StrictStr] | None = None
    store: StrictBool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise_param("top_logprobs", "'top_logprobs' requires 'logprobs': true")
        for choice, needs in (("tool_choice", "tools"), ("function_call", "functions")):
            v = getattr(self, choice)
            if not (self.tools or self.functions) and v not in (None, "none", "auto"):
                raise_param(choice, f"Invalid '{choice}': only allowed when '{needs}' are "
                            "specified")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tools:
            name = self.tool_choice.function.name
            if name not in {t.function.name for t in self.tools}:
                raise_param("tool_choice", f"Invalid 'tool_choice': {name!r} is not in 'tools'")
        if isinstance(self.function_call, NamedFunction) and self.functions:
            name = self.function_call.name
            if name not in {f.name for f in self.functions}:
                raise_param("function_call",
                            f"Invalid 'function_call': {name!r} is not in 'functions'")
        return self

    @property
    def max_output(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens

    def media_part(self) -> tuple[str, str] | None:
        """(param, type) of the first content part that is not text (`image_url`,
        `input_audio`, `file`), or None: what a text-only model must refuse rather than drop."""
        for i, m in enumerate(self.messages):
            if isinstance(m, UserMessage) and isinstance(m.content, list):
                for j, part in enumerate(m.content):
                    if not isinstance(part, TextPart):
                        return f"messages[{i}].content[{j}].type", part.type
        return None

    def message_dicts(self) -> list[dict[str, Any]]:
        """The messages as the chat template reads them (what the client sent, validated)."""
        return [m.model_dump(exclude_unset=True) for m in self.messages]

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        return [t.model_dump(exclude_unset=True) | {"type": "function"} for t in self.tools] \
            if self.tools else None

    def function_dicts(self) -> list[dict[str, Any]] | None:
        return [f.model_dump(exclude_unset=True) for f in self.functions] \
            if self.functions else None

    def tool_choice_value(self) -> Any:
        c = self.tool_choice
        return c.model_dump() if isinstance(c, NamedToolChoice) else c

    def function_call_value(self) -> Any:
        c = self.function_call
        return c.model_dump() if isinstance(c, NamedFunction) else c

    def response_format_dict(self) -> dict[str, Any] | None:
        return self.response_format.model_dump(by_alias=True) if self.response_format else None


# ----------------------------------------------------------------------------- completions
TokenIds = Annotated[list[Annotated[int, Field(strict=True)]], Field(min_length=1)]


@endpoint("POST /v1/completions", summary="Create a text completion", streams=True)
class CompletionRequest(SamplingFields):
    prompt: Union[StrictStr, Annotated[list[StrictStr], Field(min_length=1)], TokenIds,
                  Annotated[list[TokenIds], Field(min_length=1)]]
    # 0 only with echo: the prompt (with its logprobs) and nothing generated, as OpenAI's
    # legacy completions answer (evaluation harnesses score prompts that way)
    max_tokens: number(0, None, integer=True) | None = 16  # type: ignore[valid-type]
    logprobs: number(0, 20, integer=True) | None = None  # type: ignore[valid-type]
    echo: StrictBool | None = None
    best_of: number(1, MAX_N, integer=True) | None = None  # type: ignore[valid-type]
    suffix: StrictStr | None = None

    @model_validator(mode="after")
    def _consistent(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.choices:
            raise_param("best_of", "'best_of' other than 'n' is not supported")
        if self.max_tokens == 0 and not self.echo:
            raise_param("max_tokens", "'max_tokens' must be at least 1 (0 only with 'echo': "
                        "true, to read the prompt's logprobs)")
        return self

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, str) for x in p):
            return list(p)  # type: ignore[arg-type]
        if all(isinstance(x, int) for x in p):
            return [[x for x in p if isinstance(x, int)]]
        return [list(x) for x in p if isinstance(x, list)]
