"""Extract the OpenAI component schemas llmp's tests validate against into a small JSON file.

    python3 tests/data/extract_openai_schemas.py /work/shared/openai/openapi.yaml

writes tests/data/openai_schemas.json: the listed schemas and everything they reference,
from OpenAI's published OpenAPI description (MIT licence, see the header of the output).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOTS = ["CreateChatCompletionResponse", "CreateChatCompletionStreamResponse",
         "CreateCompletionResponse", "Model", "ListModelsResponse"]


def refs(node, found: set[str]) -> None:
    if isinstance(node, dict):
        r = node.get("$ref")
        if isinstance(r, str) and r.startswith("#/components/schemas/"):
            found.add(r.rsplit("/", 1)[1])
        for v in node.values():
            refs(v, found)
    elif isinstance(node, list):
        for v in node:
            refs(v, found)


def main(src: str) -> None:
    spec = yaml.safe_load(Path(src).read_text())
    schemas = spec["components"]["schemas"]
    keep: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        found: set[str] = set()
        refs(schemas[name], found)
        todo += sorted(found - keep)
    out = {"$comment": "Extracted from OpenAI's openapi.yaml (MIT License, Copyright OpenAI) "
                       "by tests/data/extract_openai_schemas.py",
           "components": {"schemas": {k: schemas[k] for k in sorted(keep)}}}
    dest = Path(__file__).with_name("openai_schemas.json")
    dest.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"{dest}: {len(keep)} schemas")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/openai/openapi.yaml")
