"""GET /openapi.json (issue 8): an OpenAPI 3.1 document built from the router and the request
models, listing every route with its auth, request schema and error responses; a route added
later appears by itself."""
from __future__ import annotations

import re

import jsonschema
import pytest
from aiohttp import web

from llmp.protocol.base import RequestModel
from llmp.protocol.endpoints import ENDPOINTS, endpoint
from llmp.server import openapi
from llmp.server.auth import requires

from test_server_errors import CHAT


def _refs(node, out: list[str]) -> list[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            out.append(node["$ref"])
        for v in node.values():
            _refs(v, out)
    elif isinstance(node, list):
        for v in node:
            _refs(v, out)
    return out


def _validator(doc: dict, name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**doc, "$ref": f"#/components/schemas/{name}"})


@pytest.fixture(scope="module")
def doc(server) -> dict:
    status, headers, body = server.request("GET", "/openapi.json", key=None)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    return body


def test_valid_openapi_31(doc):
    # the OpenAPI 3.1 meta-schema, as schemathesis ships it
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    OPENAPI_31_VALIDATOR.validate(doc)  # raises on any structural problem
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "An llmp API key (sk-...)"}
    names = set(doc["components"]["schemas"])
    for ref in _refs(doc, []):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[-1] in names, ref


def test_every_route_is_listed_with_auth_and_errors(server, doc):
    routes = {(r.method.lower(), r.resource.canonical) for r in server.app.router.routes()
              if r.method != "HEAD"}
    assert {p for _, p in routes if p.startswith("/v1/")} >= {
        "/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/files", "/v1/batches",
        "/v1/webhooks", "/v1/usage", "/v1/auth/api-keys"}
    listed = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes <= listed and ("get", "/openapi.json") in listed
    for method, path in routes:
        op = doc["paths"][path][method]
        if not path.startswith("/v1/"):
            assert op["security"] == []
            continue
        assert op["security"] == [{"bearerAuth": []}] and op["x-permission"], (method, path)
        for status in ("400", "401", "403", "429"):
            assert op["responses"][status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
        for name in re.findall(r"\{(\w+)", path):
            assert {"name": name, "in": "path", "required": True,
                    "schema": {"type": "string"}} in op["parameters"]


def test_request_bodies_come_from_the_models(doc):
    paths = doc["paths"]
    body = paths["/v1/chat/completions"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"}
    assert "text/event-stream" in paths["/v1/chat/completions"]["post"]["responses"]["200"][
        "content"]
    for path, name in (("/v1/completions", "CompletionRequest"),
                       ("/v1/auth/api-keys", "CreateKeyRequest"),
                       ("/v1/batches", "CreateBatchRequest"),
                       ("/v1/webhooks", "CreateWebhookRequest"),
                       ("/v1/embeddings", "EmbeddingRequest"),
                       ("/v1/moderations", "ModerationRequest"),
                       ("/v1/admin/models/{model_id}/price", "SetPriceRequest"),
                       ("/v1/admin/models/{model_id}/aliases", "ModelAliasesRequest")):
        assert paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{name}"}, path
    form = paths["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["file"] == {"type": "string", "format": "binary"}
    assert set(form["required"]) == {"file", "purpose"}
    usage = {p["name"]: p for p in paths["/v1/usage"]["get"]["parameters"]}
    assert usage["granularity"]["in"] == "query"
    assert usage["granularity"]["schema"]["enum"] == ["day", "hour"]
    # the schema accepts what the server accepts and refuses what it refuses
    chat = _validator(doc, "ChatCompletionRequest")
    assert chat.is_valid(CHAT)
    assert not chat.is_valid({**CHAT, "temperature": 3})
    assert not chat.is_valid({"model": "tiny"})


def test_errors_match_the_documented_format(server, doc):
    err = _validator(doc, "ErrorResponse")
    for method, path, body in (("POST", "/v1/chat/completions", {"model": "tiny"}),
                               ("GET", "/v1/files/file_nope", None),
                               ("POST", "/v1/auth/api-keys", {"name": ""})):
        status, _, got = server.request(method, path, json=body)
        assert 400 <= status < 500 and str(status) in doc["paths"][
            path.replace("file_nope", "{file_id}")][method.lower()]["responses"]
        err.validate(got)


def test_a_route_added_later_appears_with_its_model():
    @endpoint("POST /v1/zz_added_later", summary="Added later")
    class AddedLater(RequestModel):
        name: str
        count: int = 1

    @requires("inference")
    async def added(request: web.Request) -> web.Response:
        return web.json_response({})

    async def unmodelled(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/zz_added_later", added)
    app.router.add_get("/v1/zz_unmodelled/{thing_id}", unmodelled)
    try:
        doc = openapi.build(app)
    finally:
        del ENDPOINTS[("POST", "/v1/zz_added_later")]
    op = doc["paths"]["/v1/zz_added_later"]["post"]
    assert op["summary"] == "Added later" and op["x-permission"] == "inference"
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AddedLater"}
    assert doc["components"]["schemas"]["AddedLater"]["required"] == ["name"]
    bare = doc["paths"]["/v1/zz_unmodelled/{thing_id}"]["get"]
    assert bare["parameters"][0]["name"] == "thing_id" and "requestBody" not in bare
    assert "404" in bare["responses"]
