"""Tool-call parsing for each family, streamed and at once."""
from __future__ import annotations

import json

import pytest

from llmp.engine.tools import ToolCallParser, detect_family, legacy_functions_to_tools


def stream(parser: ToolCallParser, text: str, step: int = 3):
    content, deltas = [], []
    for i in range(0, len(text), step):
        c, d = parser.feed(text[i:i + step])
        content.append(c)
        deltas.extend(d)
    c, calls = parser.finish()
    content.append(c)
    return "".join(content), deltas, calls


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_hermes_calls_after_content(step):
    text = ('Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    content, deltas, calls = stream(ToolCallParser("hermes"), text, step)
    assert content == "Let me check."
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert [d["index"] for d in deltas] == [0, 1] and deltas[0]["id"] == calls[0].id
    assert deltas[0]["function"] == {"name": "get_weather", "arguments": calls[0].arguments}


def test_hermes_plain_text_and_broken_calls_stay_content():
    assert stream(ToolCallParser("hermes"), "a < b and <tool_ca is not a tag")[0] == "a < b and <tool_ca is not a tag"
    content, _, calls = stream(ToolCallParser("hermes"), "<tool_call>{not json}</tool_call>")
    assert calls == [] and content == "<tool_call>{not json}</tool_call>"


def test_llama3_json_calls():
    text = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Rome"}}; {"name": "noop", "parameters": {}}'
    content, _, calls = stream(ToolCallParser("llama3"), text)
    assert content == "" and [c.name for c in calls] == ["get_weather", "noop"]
    assert json.loads(calls[0].arguments) == {"city": "Rome"}
    content, _, calls = stream(ToolCallParser("llama3"), "Hello there, {friend}")
    assert content == "Hello there, {friend}" and calls == []


@pytest.mark.parametrize("text", [
    'Sure.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}]',
    'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}',
])
def test_mistral_calls(text):
    content, _, calls = stream(ToolCallParser("mistral"), text, 2)
    assert content == "Sure."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Oslo"})]


def test_family_detection_and_legacy_functions():
    assert detect_family("... [TOOL_CALLS] ...") == "mistral"
    assert detect_family("<|start_header_id|>ipython<|end_header_id|>") == "llama3"
    assert detect_family(None) == "hermes"
    tools, choice = legacy_functions_to_tools([{"name": "f", "parameters": {}}], {"name": "f"})
    assert tools == [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert choice == {"type": "function", "function": {"name": "f"}}


def test_cut_and_forced_calls_never_leak_markup():
    """A call cut by max_tokens is a partial call (name completed from the offered tools,
    arguments as far as they got), never markup in the content; max_calls keeps the first."""
    p = ToolCallParser("hermes", names=["get_weather", "get_time"])
    content, _ = p.feed('Sure. <tool_call>\n{"name": "get_wea')
    rest, calls = p.finish(truncated=True)
    assert content + rest == "Sure. " and p.partial
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", "")]
    p = ToolCallParser("hermes", names=["get_weather"])
    p.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa')
    _, calls = p.finish(truncated=True)
    assert calls[0].arguments == '{"city": "Pa'
    # not cut: a broken block stays content (auto), or is dropped when a grammar forced it
    assert stream(ToolCallParser("hermes"), "<tool_call>{oops")[0] == "<tool_call>{oops"
    assert stream(ToolCallParser("hermes", forced=True), "<tool_call>{oops")[0] == ""
    two = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {}}</tool_call>'
    assert [c.name for c in stream(ToolCallParser("hermes", max_calls=1), two)[2]] == ["a"]
    assert [c.name for c in stream(ToolCallParser("hermes"), two)[2]] == ["a", "b"]
