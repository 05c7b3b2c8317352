"""Chat prompts: the model's own GGUF `tokenizer.chat_template`, rendered like Hugging Face does.

The template runs in jinja2's `ImmutableSandboxedEnvironment` with HF's helpers (`tojson`,
`raise_exception`, `strftime_now`). Models without a template get ChatML (the same template
llmp's synthetic models carry). `tool_choice`:
- "none": tools are not shown to the model and nothing is parsed;
- "auto" (default when tools are given): tools rendered, output parsed for the family's calls;
- "required": also a grammar that forces one or more calls of the tools (exactly one when
  `parallel_tool_calls` is false), so the output always parses;
- {"type": "function", "function": {"name": ...}}: a grammar that forces exactly one call of
  that tool.
`extra` of the result says how to parse the output: `tool_family`, `forced` (a grammar makes
it calls only), `max_calls` (1 for a named choice, legacy functions, or parallel_tool_calls
false) and `tool_names`.
`response_format` {"type": "json_object"} / {"type": "json_schema", "json_schema": {"schema":
...}} sets a JSON grammar. Legacy `functions` / `function_call` are mapped onto tools here.
"""
from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmp.engine.grammar import JSON_OBJECT_GRAMMAR, json_schema_grammar, tool_call_grammar
from llmp.engine.tools import detect_family, legacy_functions_to_tools
from llmp.engine.types import ChatPrompt
from llmp.errors import InvalidRequestError

if TYPE_CHECKING:
    from llmp.engine.native import Model

FALLBACK_TEMPLATE = (Path(__file__).parent.parent / "models" / "chatml.jinja").read_text()


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise InvalidRequestError(f"the model's chat template does not compile: {e}", param="model") from None


def _normalize(messages: list[dict]) -> list[dict]:
    """Content parts -> plain text (templates expect strings); validate roles."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty array", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user",
                                                             "assistant", "tool", "function"):
            raise InvalidRequestError(f"messages[{i}]: unknown or missing role", param=f"messages[{i}].role")
        m = dict(m)
        if m["role"] == "developer":
            m["role"] = "system"
        if m["role"] == "function":
            m["role"] = "tool"
        content = m.get("content")
        if isinstance(content, list):
            m["content"] = "".join(p.get("text", "") for p in content if isinstance(p, dict)
                                   and p.get("type") in ("text", "input_text"))
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = dict(c.get("function", {}))
                fn.setdefault("arguments", {})  # optional in our model; templates read it
                if isinstance(fn.get("arguments"), str):
                    parsed = _loads_or_none(fn["arguments"])
                    if isinstance(parsed, dict):
                        fn["arguments"] = parsed  # templates that tojson it expect a mapping
                calls.append(dict(c, function=fn))
            m["tool_calls"] = calls
        out.append(m)
    return out


def _loads_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _forced_tools(tools: list[dict], tool_choice: Any) -> list[dict] | None:
    if tool_choice == "required":
        return tools
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        chosen = [t for t in tools if t.get("function", t).get("name") == name]
        if not chosen:
            raise InvalidRequestError(f"tool_choice names {name!r}, which is not in tools", param="tool_choice")
        return chosen
    if tool_choice not in (None, "auto", "none"):
        raise InvalidRequestError("tool_choice must be none, auto, required or a named function",
                                  param="tool_choice")
    return None


def _response_grammar(response_format: dict | None) -> str | None:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return JSON_OBJECT_GRAMMAR
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequestError("response_format.json_schema.schema must be an object",
                                      param="response_format")
        return json_schema_grammar(schema)
    raise InvalidRequestError(f"unknown response_format type {kind!r}", param="response_format")


def render_chat(model: Model, messages: list[dict], *, tools: list[dict] | None = None,
                tool_choice: Any = None, response_format: dict | None = None,
                functions: list[dict] | None = None, function_call: Any = None,
                parallel_tool_calls: bool | None = None,
                add_generation_prompt: bool = True) -> ChatPrompt:
    """Render `messages` with `model`'s own chat template (ChatML when it has none). Takes
    the loaded model, not the engine: the engine calls this, never the other way round."""
    legacy = bool(functions) and not tools
    if legacy:
        tools, legacy_choice = legacy_functions_to_tools(functions, function_call)
        tool_choice = tool_choice if tool_choice is not None else legacy_choice
    source = model.chat_template()
    template = compile_template(source or FALLBACK_TEMPLATE)
    family = detect_family(source or FALLBACK_TEMPLATE)
    use_tools = bool(tools) and tool_choice != "none"
    forced = _forced_tools(tools, tool_choice) if use_tools and tools else None
    try:
        prompt = template.render(
            messages=_normalize(messages), tools=tools if use_tools else None,
            add_generation_prompt=add_generation_prompt,
            bos_token=model.special_text("bos"), eos_token=model.special_text("eos"))
    except jinja2.TemplateError as e:
        raise InvalidRequestError(f"chat template error: {e}", param="messages") from None
    except (TypeError, ValueError, RecursionError) as e:
        # the template met a value of the request it cannot render (tojson of something
        # undefined or cyclic, arithmetic on a string...): the request's problem, not ours
        raise InvalidRequestError(f"chat template error: the messages cannot be rendered by "
                                  f"this model's chat template ({type(e).__name__}: "
                                  f"{str(e)[:200]})", param="messages") from None
    # one call at most: a named choice, the legacy function_call (one call by its shape), or
    # parallel_tool_calls: false
    single = legacy or parallel_tool_calls is False or isinstance(tool_choice, dict)
    grammar = tool_call_grammar(forced, family, multiple=not single) if forced else \
        _response_grammar(response_format)
    return ChatPrompt(prompt=prompt, grammar=grammar, parse_tools=use_tools,
                      extra={"tool_family": family, "template": "gguf" if source else "chatml-fallback",
                             "forced": bool(forced), "max_calls": 1 if single else None,
                             "tool_names": [t.get("function", t).get("name") for t in tools or []]})
