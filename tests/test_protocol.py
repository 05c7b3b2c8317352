"""The typed request models (llmp/protocol), table-driven and without a server: each row is a
body, the model that parses it, and the 400 it must give (code and param) or None when valid.
The HTTP side of the same checks is in test_hostile.py and test_server_errors.py."""
from __future__ import annotations

import pytest

from llmp.errors import InvalidRequestError
from llmp.protocol.base import parse
from llmp.protocol.inference import ChatCompletionRequest, CompletionRequest
from llmp.protocol.resources import CreateBatchRequest, CreateKeyRequest, CreateWebhookRequest

U = [{"role": "user", "content": "hi"}]
CHAT = {"model": "m", "messages": U}
COMP = {"model": "m", "prompt": "hi"}
FN = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

# (model, body, expected code or None for valid, expected param)
CASES = [
    # chat: the minimal body, and each field's range
    (ChatCompletionRequest, CHAT, None, None),
    (ChatCompletionRequest, {"messages": U}, "missing_parameter", "model"),
    (ChatCompletionRequest, {"model": "m"}, "missing_parameter", "messages"),
    (ChatCompletionRequest, {**CHAT, "messages": []}, "invalid_parameter", "messages"),
    (ChatCompletionRequest, {**CHAT, "model": ""}, "invalid_parameter", "model"),
    (ChatCompletionRequest, {**CHAT, "temperature": 0}, None, None),
    (ChatCompletionRequest, {**CHAT, "temperature": 2}, None, None),
    (ChatCompletionRequest, {**CHAT, "temperature": 2.01}, "invalid_parameter", "temperature"),
    (ChatCompletionRequest, {**CHAT, "temperature": -0.1}, "invalid_parameter", "temperature"),
    (ChatCompletionRequest, {**CHAT, "temperature": "hot"}, "invalid_parameter", "temperature"),
    (ChatCompletionRequest, {**CHAT, "top_p": 0}, None, None),
    (ChatCompletionRequest, {**CHAT, "top_p": 1.5}, "invalid_parameter", "top_p"),
    (ChatCompletionRequest, {**CHAT, "presence_penalty": -2}, None, None),
    (ChatCompletionRequest, {**CHAT, "presence_penalty": 3}, "invalid_parameter",
     "presence_penalty"),
    (ChatCompletionRequest, {**CHAT, "frequency_penalty": -2.5}, "invalid_parameter",
     "frequency_penalty"),
    (ChatCompletionRequest, {**CHAT, "max_tokens": 0}, "invalid_parameter", "max_tokens"),
    (ChatCompletionRequest, {**CHAT, "max_tokens": 1.5}, "invalid_parameter", "max_tokens"),
    (ChatCompletionRequest, {**CHAT, "max_completion_tokens": -1}, "invalid_parameter",
     "max_completion_tokens"),
    (ChatCompletionRequest, {**CHAT, "n": 0}, "invalid_parameter", "n"),
    (ChatCompletionRequest, {**CHAT, "seed": "x"}, "invalid_parameter", "seed"),
    (ChatCompletionRequest, {**CHAT, "seed": 2 ** 65}, "invalid_parameter", "seed"),
    (ChatCompletionRequest, {**CHAT, "stop": "\n"}, None, None),
    (ChatCompletionRequest, {**CHAT, "stop": [1]}, "invalid_parameter", "stop[0]"),
    (ChatCompletionRequest, {**CHAT, "stream": "yes"}, "invalid_parameter", "stream"),
    (ChatCompletionRequest, {**CHAT, "stream_options": {"include_usage": True}},
     "invalid_parameter", "stream_options"),
    (ChatCompletionRequest, {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
     None, None),
    (ChatCompletionRequest, {**CHAT, "logit_bias": {"5": 101}}, "invalid_parameter",
     "logit_bias.5"),
    (ChatCompletionRequest, {**CHAT, "logit_bias": {"word": 1}}, "invalid_parameter",
     "logit_bias"),
    (ChatCompletionRequest, {**CHAT, "top_logprobs": 2}, "invalid_parameter", "top_logprobs"),
    (ChatCompletionRequest, {**CHAT, "logprobs": True, "top_logprobs": 21}, "invalid_parameter",
     "top_logprobs"),
    (ChatCompletionRequest, {**CHAT, "tool_choice": "required"}, "invalid_parameter",
     "tool_choice"),
    (ChatCompletionRequest, {**CHAT, "tools": [FN], "tool_choice": "required"}, None, None),
    (ChatCompletionRequest, {**CHAT, "tools": [FN], "tool_choice": {
        "type": "function", "function": {"name": "g"}}}, "invalid_parameter", "tool_choice"),
    (ChatCompletionRequest, {**CHAT, "messages": [{"role": "user"}]}, "missing_parameter",
     "messages[0].content"),
    (ChatCompletionRequest, {**CHAT, "messages": [{"role": "user", "content": 5}]},
     "invalid_parameter", "messages[0].content"),
    # completions
    (CompletionRequest, COMP, None, None),
    (CompletionRequest, {"model": "m"}, "missing_parameter", "prompt"),
    (CompletionRequest, {**COMP, "prompt": [1, 2, 3]}, None, None),
    (CompletionRequest, {**COMP, "prompt": []}, "invalid_parameter", "prompt"),
    (CompletionRequest, {**COMP, "logprobs": 21}, "invalid_parameter", "logprobs"),
    (CompletionRequest, {**COMP, "best_of": 3}, "invalid_parameter", "best_of"),
    (CompletionRequest, {**COMP, "suffix": "x"}, None, None),  # 400 from a model without FIM
    (CompletionRequest, {**COMP, "max_tokens": 0}, "invalid_parameter", "max_tokens"),
    (CompletionRequest, {**COMP, "max_tokens": 0, "echo": True}, None, None),
    (CompletionRequest, {**COMP, "echo": 1}, "invalid_parameter", "echo"),
    # keys
    (CreateKeyRequest, {"name": "k"}, None, None),
    (CreateKeyRequest, {}, "missing_parameter", "name"),
    (CreateKeyRequest, {"name": "  "}, "invalid_parameter", "name"),
    (CreateKeyRequest, {"name": "k", "permissions": ["fly"]}, "invalid_parameter", "permissions"),
    (CreateKeyRequest, {"name": "k", "permissions": []}, "invalid_parameter", "permissions"),
    (CreateKeyRequest, {"name": "k", "tier": "gold"}, "invalid_parameter", "tier"),
    (CreateKeyRequest, {"name": "k", "rate_limit": {"requests_per_minute": 0}},
     "invalid_parameter", "rate_limit.requests_per_minute"),
    (CreateKeyRequest, {"name": "k", "limits": {"monthly_budget": 0}}, "invalid_parameter",
     "limits.monthly_budget"),
    # batches
    (CreateBatchRequest, {"input_file_id": "file_x", "endpoint": "/v1/chat/completions"},
     None, None),
    (CreateBatchRequest, {"input_file_id": "file_x", "endpoint": "/v1/embeddings/nope"},
     "invalid_parameter", "endpoint"),
    (CreateBatchRequest, {"endpoint": "/v1/completions"}, "missing_parameter", "input_file_id"),
    # webhooks
    (CreateWebhookRequest, {"url": "https://x.example/h", "events": ["batch.completed"]},
     None, None),
    (CreateWebhookRequest, {"url": "https://x.example/h", "events": []}, "invalid_parameter",
     "events"),
    (CreateWebhookRequest, {"url": "", "events": ["batch.completed"]}, "invalid_parameter",
     "url"),
]


@pytest.mark.parametrize("model, body, code, param", CASES,
                         ids=[f"{i}-{c[0].__name__}-{c[3] or 'ok'}" for i, c in enumerate(CASES)])
def test_request_model(model, body, code, param):
    if code is None:
        parse(model, body)
        return
    with pytest.raises(InvalidRequestError) as e:
        parse(model, body)
    assert (e.value.code, e.value.param) == (code, param), e.value.message
    assert e.value.status == 400 and e.value.message


@pytest.mark.parametrize("body", [None, [], "x", 5])
def test_a_body_that_is_not_an_object(body):
    with pytest.raises(InvalidRequestError) as e:
        parse(ChatCompletionRequest, body)
    assert e.value.status == 400
