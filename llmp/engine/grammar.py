"""GBNF grammars for structured output: JSON objects, JSON schemas and forced tool calls.

JSON-schema conversion reuses llama-cpp-python's `json_schema_to_gbnf`. Whitespace is made
compact (at most one space) so a model cannot wander off into endless indentation and run
out of tokens before the JSON closes.

Grammars are bounded. The converter writes a repetition (`maxLength`, `maxItems`, a pattern's
`{m,n}`) as one nesting level per repeat, and llama.cpp's recursive grammar parser overflows
the C stack (the process dies) somewhere above a few thousand levels; deep schemas and very
large grammars cost time and memory the same way. So before anything reaches llama.cpp, the
schema is walked (`check_schema`: repeat counts, nesting depth, size) and the grammar text is
measured (`check_grammar`: bytes, rules, bracket nesting); a request over a limit gets a 400
that names the limit. The limits (`LIMITS`) sit far below what crashes this build (see
tests/test_grammar_bounds.py, which sends the worst cases to a live server).
"""
from __future__ import annotations

import json
import re
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, SchemaConverter, json_schema_to_gbnf

from llmp.errors import InvalidRequestError

_SPACE_RULE = re.compile(r"^space ::= .*$", re.M)
_WS_RULE = re.compile(r"^ws ::= .*$", re.M)
_ROOT_RULE = re.compile(r"^root ::=", re.M)
# llama-cpp-python's converter lets raw control characters into strings (`[^"\\]`), which
# json.loads rejects: allow only what JSON allows unescaped.
_CHAR_RULE = re.compile(r'^char ::= \[\^"\\\\\]', re.M)
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F]'

JSON_OBJECT_GRAMMAR = _WS_RULE.sub('ws ::= " "?', JSON_GBNF)

#: maxLength / minLength / maxItems / minItems / a pattern's {m,n} (each repeat is one
#: nesting level of the grammar)
MAX_REPEAT = 256
#: nesting of schemas inside schemas (properties, items, anyOf ...)
MAX_SCHEMA_DEPTH = 32
#: every object and array in the schema, counted
MAX_SCHEMA_NODES = 5000
#: the grammar text, its rules and its deepest bracket nesting
MAX_GRAMMAR_BYTES = 256 * 1024
MAX_GRAMMAR_RULES = 4000
MAX_GRAMMAR_NESTING = 300
LIMITS = {"repeat": MAX_REPEAT, "schema_depth": MAX_SCHEMA_DEPTH,
          "schema_nodes": MAX_SCHEMA_NODES, "grammar_bytes": MAX_GRAMMAR_BYTES,
          "grammar_rules": MAX_GRAMMAR_RULES, "grammar_nesting": MAX_GRAMMAR_NESTING}

_REPEAT_KEYS = ("maxLength", "minLength", "maxItems", "minItems", "maxProperties",
                "minProperties")
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


def _too_big(what: str, limit: int, param: str) -> InvalidRequestError:
    return InvalidRequestError(f"The JSON schema is too large for structured output: {what} "
                               f"(the limit is {limit:,})", param=param,
                               code="schema_too_complex")


def check_schema(schema: Any, *, param: str) -> None:
    """Refuse a schema whose grammar would be too deep or too large (see the module doc)."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(schema, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, list):
            items = node
        elif isinstance(node, dict):
            items = list(node.values())
            for k in _REPEAT_KEYS:
                v = node.get(k)
                if v is None:
                    continue
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise InvalidRequestError(
                        f"Invalid JSON schema: '{k}' must be a non-negative integer",
                        param=param, code="invalid_schema")
                if v > MAX_REPEAT:
                    raise _too_big(f"'{k}' is {v:,}", MAX_REPEAT, param)
            pattern = node.get("pattern")
            if isinstance(pattern, str):
                for m in _QUANTIFIER.finditer(pattern):
                    for g in m.groups():
                        if g and int(g) > MAX_REPEAT:
                            raise _too_big(f"the pattern repeats {{{m.group(0)[1:-1]}}}",
                                           MAX_REPEAT, param)
        else:
            continue
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise _too_big("it has too many parts", MAX_SCHEMA_NODES, param)
        # every dict level is a schema level at most (properties/items dicts count too, so
        # the real schema depth limit is about half of this walk's)
        if depth > 2 * MAX_SCHEMA_DEPTH:
            raise _too_big("it is nested too deeply", MAX_SCHEMA_DEPTH, param)
        stack.extend((v, depth + 1) for v in items)


def grammar_nesting(gbnf: str) -> int:
    """The deepest nesting of ( ) groups in a GBNF text (outside strings and [...] sets)."""
    depth = deepest = 0
    i, n = 0, len(gbnf)
    while i < n:
        c = gbnf[i]
        if c in "\"[":
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and gbnf[i] != close:
                i += 2 if gbnf[i] == "\\" else 1
        elif c == "#":
            while i < n and gbnf[i] != "\n":
                i += 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        i += 1
    return deepest


def check_grammar(gbnf: str, *, param: str) -> str:
    """Refuse a grammar that is too large or too deeply nested for llama.cpp's parser."""
    if len(gbnf) > MAX_GRAMMAR_BYTES:
        raise _too_big(f"its grammar has {len(gbnf):,} bytes", MAX_GRAMMAR_BYTES, param)
    rules = gbnf.count("::=")
    if rules > MAX_GRAMMAR_RULES:
        raise _too_big(f"its grammar has {rules:,} rules", MAX_GRAMMAR_RULES, param)
    nesting = grammar_nesting(gbnf)
    if nesting > MAX_GRAMMAR_NESTING:
        raise _too_big(f"its grammar nests {nesting:,} levels deep", MAX_GRAMMAR_NESTING, param)
    return gbnf


def json_schema_grammar(schema: dict[str, Any], *, param: str = "response_format") -> str:
    """A grammar whose every sentence is a JSON document valid against `schema`."""
    check_schema(schema, param=param)
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except RecursionError:
        raise _too_big("it is nested too deeply", MAX_SCHEMA_DEPTH, param) from None
    except Exception as e:  # the converter raises bare Exceptions / ValueErrors / KeyErrors
        raise InvalidRequestError(f"unsupported JSON schema: {str(e)[:300]}", param=param,
                                  code="invalid_schema") from None
    gbnf = _CHAR_RULE.sub(lambda _: _JSON_CHAR, gbnf)
    return check_grammar(_SPACE_RULE.sub('space ::= " "?', gbnf), param=param)


def _literal(text: str) -> str:
    """A GBNF string literal of `text`."""
    return '"' + "".join(c if (c.isascii() and c.isalnum()) or c in " _-.:,{}[]<>/|" else
                         f"\\x{ord(c):02X}" if ord(c) < 0x100 else
                         f"\\u{ord(c):04X}" if ord(c) < 0x10000 else f"\\U{ord(c):08X}"
                         for c in text) + '"'


#: how each family writes calls: (before the first, between two, after the last)
_WRAPPERS = {
    "hermes": ("<tool_call>\n", "\n</tool_call>\n<tool_call>\n", "\n</tool_call>"),
    "llama3": ("", "; ", ""),
    "mistral": ("[TOOL_CALLS][", ", ", "]"),
}


def tool_call_grammar(tools: list[dict], family: str, *, multiple: bool = False) -> str:
    """A grammar that forces a call of one of `tools` in the family's syntax (`multiple`:
    one or more calls). Everything but the arguments is a literal: the wrapper, the
    `{"name": "<tool>", "arguments": ` prefix in that key order, the closing brace; so the
    model chooses only which tool and its arguments, never whitespace or key order."""
    if not tools:
        raise InvalidRequestError("tool_choice requires at least one tool", param="tool_choice")
    args_key = "parameters" if family == "llama3" else "arguments"
    conv = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    alts = []
    for i, t in enumerate(tools):
        fn = t.get("function", t)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        check_schema(params, param="tools")
        try:
            rule = conv.visit(conv.resolve_refs(params, f"tool{i}"), f"args{i}")
        except RecursionError:
            raise _too_big("it is nested too deeply", MAX_SCHEMA_DEPTH, "tools") from None
        except Exception as e:  # noqa: BLE001 - the converter raises bare Exceptions
            raise InvalidRequestError(f"unsupported JSON schema in tools[{i}]: {str(e)[:300]}",
                                      param="tools", code="invalid_schema") from None
        head = '{"name": ' + json.dumps(fn["name"], ensure_ascii=False) + f', "{args_key}": '
        alts.append(f"{_literal(head)} {rule} " + _literal("}"))
    first, between, last = _WRAPPERS[family]
    calls = f"call ({_literal(between)} call)*" if multiple else "call"
    root = "root ::= " + " ".join(p for p in (first and _literal(first), calls,
                                              last and _literal(last)) if p)
    gbnf = "\n".join([root, "call ::= " + " | ".join(alts), conv.format_grammar()])
    gbnf = _CHAR_RULE.sub(lambda _: _JSON_CHAR, gbnf)
    return check_grammar(_SPACE_RULE.sub('space ::= " "?', gbnf), param="tools")
