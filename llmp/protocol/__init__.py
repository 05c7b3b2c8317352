"""Typed request models of every /v1 body and query (pydantic v2), shared by the HTTP routes
and batch lines, and the source of GET /openapi.json.

- `base`: parsing (`loads`), validation (`parse`) and the mapping of validation errors onto the
  spec's error body, with `param` as a path (`messages[0].content[0].text`);
- `inference`: chat and text completions, converted once into the engine's parameters;
- `resources`: API keys, files, batches, webhooks, usage.
"""
