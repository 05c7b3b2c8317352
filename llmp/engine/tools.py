"""Tool calls: detect a model's tool-call format and parse its output into OpenAI tool calls.

Families:
- ``hermes`` (Hermes, Qwen 2/2.5/3, llmp's synthetic models): ``<tool_call>{"name": ..,
  "arguments": {..}}</tool_call>`` blocks, possibly several, possibly after some text;
- ``llama3`` (Llama 3.1-3.3): the whole reply is ``{"name": .., "parameters": {..}}`` (optionally
  after ``<|python_tag|>``, several separated by ``;``);
- ``mistral``: ``[TOOL_CALLS][{"name": .., "arguments": {..}}, ...]`` or the newer
  ``[TOOL_CALLS]name[ARGS]{..}``.

`ToolCallParser.feed(text)` streams: it returns the text that is certainly content, and the
tool calls completed so far as OpenAI streaming deltas (`{"index", "id", "type", "function":
{"name", "arguments"}}`, each call in one delta); `finish()` returns the rest of the content
and every `ToolCall`. Text that does not parse as a call stays content, except:
- `finish(truncated=True)` (the output was cut by max_tokens inside a call): the unfinished
  call is returned as a partial `ToolCall` (its name as far as known, its arguments as the
  incomplete JSON text), never as markup in the content (`partial` is then True);
- `forced=True` (a grammar forced the output to be calls): nothing after the calls began is
  ever content;
- `max_calls`: calls beyond it are dropped (`parallel_tool_calls: false`, legacy functions).
"""
from __future__ import annotations

import json
import re
from typing import Any

from llmp.engine.types import ToolCall
from llmp.ids import new_id

FAMILIES = ("hermes", "llama3", "mistral")


def detect_family(template: str | None) -> str:
    """The tool-call family a chat template speaks (hermes when unknown)."""
    t = template or ""
    if "[TOOL_CALLS]" in t:
        return "mistral"
    if "<|python_tag|>" in t or ("ipython" in t and "<|start_header_id|>" in t):
        return "llama3"
    return "hermes"


def legacy_functions_to_tools(functions: list[dict] | None, function_call: Any) -> tuple[list[dict] | None, Any]:
    """Map the deprecated `functions` / `function_call` onto `tools` / `tool_choice`."""
    tools = [{"type": "function", "function": f} for f in functions] if functions else None
    if isinstance(function_call, dict) and "name" in function_call:
        choice: Any = {"type": "function", "function": {"name": function_call["name"]}}
    else:
        choice = function_call  # "none" | "auto" | None
    return tools, choice


def _call_from_obj(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False)
    return ToolCall(id=new_id("call"), name=obj["name"], arguments=args)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)')
_ARGS = re.compile(r'"(?:arguments|parameters)"\s*:\s*', re.DOTALL)


def partial_call(text: str, names: list[str] | None = None) -> ToolCall:
    """The call an unfinished call's text (`{"name": "get_wea`, `{"name": "f", "arguments":
    {"city": "Pa`) was becoming: its name as far as it got (completed from `names` when only
    one tool name starts with it) and its arguments as the incomplete JSON text."""
    m = _NAME.search(text)
    name = _loads(f'"{m.group(1)}"') if m else ""
    if not isinstance(name, str):
        name = m.group(1) if m else ""
    matches = [n for n in names or [] if n.startswith(name)]
    if name not in (names or []) and len(matches) == 1:
        name = matches[0]
    a = _ARGS.search(text, m.end() if m else 0)
    args = text[a.end():].rstrip() if a else ""
    return ToolCall(id=new_id("call"), name=name, arguments=args)


class ToolCallParser:
    HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
    MISTRAL_TAG = "[TOOL_CALLS]"

    def __init__(self, family: str = "hermes", *, max_calls: int | None = None,
                 forced: bool = False, names: list[str] | None = None):
        if family not in FAMILIES:
            raise ValueError(f"unknown tool-call family {family!r}")
        self.family = family
        self.max_calls = max_calls
        self.forced = forced
        self.names = names or []  # the offered tools' names (to complete a cut call's name)
        self.partial = False  # finish() returned a call cut short by max_tokens
        self._buf = ""  # text not yet classified
        self._calls: list[ToolCall] = []
        self._mode = "content"  # hermes: content|call; llama3: undecided|content|call; mistral: content|call
        if family == "llama3":
            self._mode = "undecided"

    @property
    def calls(self) -> list[ToolCall]:
        return list(self._calls)

    def _add(self, call: ToolCall) -> None:
        if self.max_calls is None or len(self._calls) < self.max_calls:
            self._calls.append(call)

    def feed(self, text: str) -> tuple[str, list[dict]]:
        self._buf += text
        before = len(self._calls)
        content = getattr(self, f"_feed_{self.family}")()
        return content, [self._delta(i) for i in range(before, len(self._calls))]

    def finish(self, *, truncated: bool = False) -> tuple[str, list[ToolCall]]:
        """The rest of the content and every call. `truncated`: the output was cut (by
        max_tokens), so a call left open is a partial call, not content."""
        before = len(self._calls)
        content = getattr(self, f"_finish_{self.family}")()
        opened = self._mode == "call"
        if opened and len(self._calls) == before and (truncated or self.forced):
            # an unfinished call: return what it was becoming (never its markup as content)
            body = content.removeprefix(self.HERMES_OPEN).removeprefix(self.MISTRAL_TAG)
            body = body.strip().removeprefix("<|python_tag|>").lstrip().lstrip("[")
            room = self.max_calls is None or len(self._calls) < self.max_calls
            if (body or truncated) and room:
                self._calls.append(partial_call(body, self.names))
                self.partial = truncated
            content = ""
        self._buf = ""
        return content, self.calls

    def _delta(self, i: int) -> dict:
        c = self._calls[i]
        return {"index": i, "id": c.id, "type": "function",
                "function": {"name": c.name, "arguments": c.arguments}}

    # -- hermes -------------------------------------------------------------
    def _feed_hermes(self) -> str:
        out = []
        while True:
            if self._mode == "content":
                i = self._buf.find(self.HERMES_OPEN)
                if i < 0:
                    keep = _partial_suffix(self._buf, self.HERMES_OPEN)
                    out.append(self._buf[:len(self._buf) - keep])
                    self._buf = self._buf[len(self._buf) - keep:]
                    return "".join(out)
                out.append(self._buf[:i])
                self._buf = self._buf[i + len(self.HERMES_OPEN):]
                self._mode = "call"
            else:
                j = self._buf.find(self.HERMES_CLOSE)
                if j < 0:
                    return "".join(out)
                body = self._buf[:j]
                call = _call_from_obj(_loads(body.strip()))
                if call:
                    self._add(call)
                elif self.forced:
                    pass  # a grammar made it: never markup in the content
                else:
                    out.append(self.HERMES_OPEN + body + self.HERMES_CLOSE)
                self._buf = self._buf[j + len(self.HERMES_CLOSE):]
                self._mode = "content"

    def _finish_hermes(self) -> str:
        if self._mode == "call":  # an unterminated block: accept it if its JSON is complete
            call = _call_from_obj(_loads(self._buf.strip()))
            if call:
                self._add(call)
                self._mode = "content"
                return ""
            return self.HERMES_OPEN + self._buf
        return self._buf

    # -- llama 3 ------------------------------------------------------------
    def _feed_llama3(self) -> str:
        if self._mode == "undecided":
            s = self._buf.lstrip()
            if not s:
                return ""
            if s.startswith("{") or s.startswith("<|python_tag|>"):
                self._mode = "call"
            elif "<|python_tag|>".startswith(s):
                return ""
            else:
                self._mode = "content"
        if self._mode == "content":
            out, self._buf = self._buf, ""
            return out
        return ""

    def _finish_llama3(self) -> str:
        if self._mode != "call":
            return self._buf
        body = self._buf.strip().removeprefix("<|python_tag|>").strip()
        parsed = [_call_from_obj(_loads(p)) for p in _split_top_level(body, ";")]
        if parsed and all(parsed):
            for c in parsed:
                self._add(c)  # type: ignore[arg-type]
            self._mode = "content"
            return ""
        return self._buf

    # -- mistral ------------------------------------------------------------
    def _feed_mistral(self) -> str:
        if self._mode == "call":
            return ""
        i = self._buf.find(self.MISTRAL_TAG)
        if i >= 0:
            out = self._buf[:i]
            self._buf = self._buf[i + len(self.MISTRAL_TAG):]
            self._mode = "call"
            return out
        keep = _partial_suffix(self._buf, self.MISTRAL_TAG)
        out = self._buf[:len(self._buf) - keep]
        self._buf = self._buf[len(self._buf) - keep:]
        return out

    def _finish_mistral(self) -> str:
        if self._mode != "call":
            return self._buf
        body = self._buf.strip()
        calls: list[ToolCall | None] = []
        data = _loads(body)
        if isinstance(data, list):
            calls = [_call_from_obj(o) for o in data]
        elif isinstance(data, dict):
            calls = [_call_from_obj(data)]
        else:  # [TOOL_CALLS]name[ARGS]{...}[TOOL_CALLS]name2[ARGS]{...}
            for part in body.split(self.MISTRAL_TAG):
                name, sep, args = part.partition("[ARGS]")
                calls.append(_call_from_obj({"name": name.strip(), "arguments": _loads(args)})
                             if sep and _loads(args) is not None else None)
        if calls and all(calls):
            for c in calls:
                self._add(c)  # type: ignore[arg-type]
            self._mode = "content"
            return ""
        return self.MISTRAL_TAG + self._buf


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split on `sep` outside JSON strings and brackets."""
    parts, depth, in_str, esc, start = [], 0, False, False, 0
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]

