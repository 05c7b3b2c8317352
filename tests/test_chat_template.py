"""Chat templates: the GGUF's own template in a sandbox, tools, fallbacks, errors."""
from __future__ import annotations

import pytest
from jinja2.exceptions import SecurityError

from llmp.config import Settings
from llmp.engine.chat import compile_template
from llmp.engine.engine import Engine
from llmp.errors import InvalidRequestError


@pytest.fixture(scope="module")
def engine(tiny_model_path, tmp_path_factory):
    eng = Engine.load("tiny", str(tiny_model_path), Settings(home=tmp_path_factory.mktemp("h"), n_slots=1, n_ctx=512))
    yield eng
    eng.close()


def test_renders_the_models_chatml_template(engine):
    chat = engine.render_chat([{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    assert chat.prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                           "<|im_start|>assistant\n")
    assert chat.grammar is None and not chat.parse_tools and chat.extra["template"] == "gguf"
    ids = engine.tokenize(chat.prompt)
    assert engine.tokenize("<|im_start|>")[0] == ids[0]  # special tokens parsed as such


def test_tools_are_rendered_unless_tool_choice_none(engine):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    msgs = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    chat = engine.render_chat(msgs, tools=tools)
    assert "get_weather" in chat.prompt and chat.parse_tools and chat.grammar is None
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in chat.prompt
    assert "<tool_response>\nsunny\n</tool_response>" in chat.prompt
    none = engine.render_chat(msgs[:1], tools=tools, tool_choice="none")
    assert "# Tools" not in none.prompt and not none.parse_tools
    legacy = engine.render_chat(msgs[:1], functions=[tools[0]["function"]], function_call={"name": "get_weather"})
    assert legacy.grammar and "get_weather" in legacy.grammar


def test_sandbox_and_helpers():
    t = compile_template("{{ x | tojson }}{% if bad %}{{ raise_exception('nope') }}{% endif %}"
                         "{{ strftime_now('%Y') | length }}")
    assert t.render(x={"a": "é"}, bad=False) == '{"a": "é"}4'
    with pytest.raises(Exception, match="nope"):
        t.render(x=1, bad=True)
    with pytest.raises(SecurityError):  # the sandbox refuses attribute escapes
        compile_template("{{ ''.__class__.__mro__ }}").render()


def test_bad_messages_are_invalid_requests(engine):
    with pytest.raises(InvalidRequestError) as e:
        engine.render_chat([])
    assert e.value.param == "messages"
    with pytest.raises(InvalidRequestError):
        engine.render_chat([{"role": "wizard", "content": "x"}])
    with pytest.raises(InvalidRequestError) as e:
        engine.render_chat([{"role": "user", "content": "x"}], response_format={"type": "xml"})
    assert e.value.param == "response_format"
