"""GBNF grammars for structured output: JSON objects, JSON schemas and forced tool calls.

JSON-schema conversion reuses llama-cpp-python's `json_schema_to_gbnf`. Whitespace is made
compact (at most one space) so a model cannot wander off into endless indentation and run
out of tokens before the JSON closes.
"""
from __future__ import annotations

import json
import re
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from llmp.errors import InvalidRequestError

_SPACE_RULE = re.compile(r"^space ::= .*$", re.M)
_WS_RULE = re.compile(r"^ws ::= .*$", re.M)
_ROOT_RULE = re.compile(r"^root ::=", re.M)
# llama-cpp-python's converter lets raw control characters into strings (`[^"\\]`), which
# json.loads rejects: allow only what JSON allows unescaped.
_CHAR_RULE = re.compile(r'^char ::= \[\^"\\\\\]', re.M)
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F]'

JSON_OBJECT_GRAMMAR = _WS_RULE.sub('ws ::= " "?', JSON_GBNF)


def json_schema_grammar(schema: dict[str, Any], *, param: str = "response_format") -> str:
    """A grammar whose every sentence is a JSON document valid against `schema`."""
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # the converter raises bare Exceptions / ValueErrors / KeyErrors
        raise InvalidRequestError(f"unsupported JSON schema: {e}", param=param) from None
    gbnf = _CHAR_RULE.sub(lambda _: _JSON_CHAR, gbnf)
    return _SPACE_RULE.sub('space ::= " "?', gbnf)


def _rename_root(gbnf: str, name: str) -> str:
    return _ROOT_RULE.sub(f"{name} ::=", gbnf)


def _call_schema(tools: list[dict], args_key: str) -> dict[str, Any]:
    variants = []
    for t in tools:
        fn = t.get("function", t)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        variants.append({"type": "object", "properties": {"name": {"const": fn["name"]}, args_key: params},
                         "required": ["name", args_key]})
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def tool_call_grammar(tools: list[dict], family: str) -> str:
    """A grammar that forces exactly one call of one of `tools` in the family's syntax."""
    if not tools:
        raise InvalidRequestError("tool_choice requires at least one tool", param="tool_choice")
    args_key = "parameters" if family == "llama3" else "arguments"
    body = _rename_root(json_schema_grammar(_call_schema(tools, args_key), param="tools"), "call")
    root = {
        "hermes": r'root ::= "<tool_call>\n" call "\n</tool_call>"',
        "llama3": "root ::= call",
        "mistral": r'root ::= "[TOOL_CALLS][" call "]"',
    }[family]
    return f"{root}\n{body}"
