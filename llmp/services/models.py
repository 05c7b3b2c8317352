"""The model registry as the API and the engine pool see it (over llmp.models.registry)."""
from __future__ import annotations

from collections.abc import Callable

from llmp.db import models as db_models
from llmp.engine.pool import ModelSpec
from llmp.errors import InvalidRequestError, NotFoundError
from llmp.models import registry
from llmp.protocol.admin import ModelAliasesRequest, SetPriceRequest
from llmp.protocol.base import parse
from llmp.protocol.resources import MODEL_CATEGORIES, MODEL_SIZES, ModelsQuery

DEFAULT_PER_PAGE = 20
assert (registry.CATEGORIES, registry.SIZES) == (MODEL_CATEGORIES, MODEL_SIZES), \
    "llmp.protocol.resources lists the same model categories and sizes"


def resolver(db, extra: dict[str, dict] | None = None) -> Callable[[str], ModelSpec]:
    """What the engine pool calls to turn a model id (or alias) into a file to load; raises
    NotFoundError (404 model_not_found) for an unknown model.

    An adapter model resolves to its base's file with the adapter attached (`ModelSpec.lora`).
    `extra`: adapter records outside the registry (`llmp serve --lora`), by id."""
    extra = extra if extra is not None else {}

    def resolve(model_id: str) -> ModelSpec:
        m = extra.get(model_id) or guard_for(db, model_id) or registry.resolve(db, model_id)
        if m.get("parent"):
            base = registry.resolve(db, m["parent"])
            scale = m.get("lora_scale")
            return ModelSpec(id=base["id"], path=base["path"],
                             lora=[(m["path"], 1.0 if scale is None else float(scale))],
                             served_as=m["id"])
        return ModelSpec(id=m["id"], path=m["path"], kind=kind_of(m),
                         guard_profile=m.get("guard_profile"))

    return resolve


def guard_for(db, model_id: str) -> dict | None:
    """OpenAI's moderation model names (`omni-moderation-latest`, ...) that are not registered
    models stand for the first registered guard model (`llmp models set-guard`); None for
    any other name. No guard: NotFoundError `guard_not_configured` saying how to add one.
    (`settings.moderation_model` picks another guard: see services.moderation.)"""
    from llmp.services.moderation import HOW_TO_ADD, OPENAI_MODELS

    if model_id not in OPENAI_MODELS or db_models.get(db, model_id) is not None:
        return None
    guards = [m for m in db_models.list_all(db) if m.get("guard_profile")]
    if not guards:
        raise NotFoundError(f"No guard model is configured for moderations: {HOW_TO_ADD}",
                            param="model", code="guard_not_configured")
    return guards[0]


def kind_of(m: dict) -> str:
    """The backend kind a registered model is served as: "embed" for the `embedding`
    category, "guard" for a model with a guard profile (`llmp models set-guard`), else
    "generate"."""
    if m.get("category") == "embedding":
        return "embed"
    return "guard" if m.get("guard_profile") else "generate"


def serve_adapters(db, settings, specs: list[str], base: str | None) -> dict[str, dict]:
    """`llmp serve --lora NAME=PATH`: adapters served on `base` (the first --model) without
    being registered; PATH is a GGUF adapter or a PEFT folder (converted into
    adapters/serve/). Checked like `llmp models add-adapter`; returns their records by id."""
    out: dict[str, dict] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InvalidRequestError(f"--lora {spec!r}: use NAME=PATH", param="lora")
        if base is None:
            raise InvalidRequestError("--lora needs the base model: give it with --model",
                                      param="lora")
        registry.check_id(name)
        if name in out or db_models.get(db, name) is not None:
            raise InvalidRequestError(f"--lora {name}: the name is already a model id",
                                      param="lora")
        out[name] = registry.adapter_record(db, settings, path, base, model_id=name,
                                            source=f"serve:{path}",
                                            folder=settings.adapters_dir / "serve")
    return out


def model_version(m: dict) -> str:
    """The spec's `model_version`: `<id>-<YYYY-MM-DD>` of the model's registration."""
    stamp = (m.get("updated_at") or m.get("created_at") or "")[:10]
    return f"{m['id']}-{stamp}" if stamp else m["id"]


def get(db, model_id: str, extra: dict[str, dict] | None = None) -> dict:
    """GET /v1/models/{id}: the model with its details (architecture, quantization, aliases)."""
    if extra and model_id in extra:
        return registry.to_api(extra[model_id], detailed=True)
    m = registry.resolve(db, model_id)
    return registry.to_api(m, detailed=True, aliases=db_models.aliases(db, m["id"]))


def set_price(db, model_id: str, body: SetPriceRequest) -> dict:
    """POST /v1/admin/models/{id}/price (what `llmp models set-price` does): the model after."""
    if body.input_price is None and body.output_price is None and body.currency is None \
            and body.training_price is None:
        raise InvalidRequestError("give input_price, output_price, training_price and/or "
                                  "currency", param="input_price")
    rec = registry.set_price(db, model_id, input_price=body.input_price,
                             output_price=body.output_price, currency=body.currency,
                             training_price=body.training_price)
    return get(db, rec["id"])


def update_aliases(db, model_id: str, body: ModelAliasesRequest) -> dict:
    """POST /v1/admin/models/{id}/aliases (what `llmp models alias` does): the model after,
    with its aliases."""
    rec = registry.resolve(db, model_id)
    if not body.add and not body.remove:
        raise InvalidRequestError("give aliases to add and/or remove", param="add")
    for alias in body.add:
        registry.add_alias(db, alias, rec["id"])
    for alias in body.remove:
        registry.remove_alias(db, alias, rec["id"])
    return get(db, rec["id"])


def list_page(db, query: dict | ModelsQuery | None = None, *,
              extra: dict[str, dict] | None = None) -> dict:
    """GET /v1/models: the spec's `{models, total, page, per_page}` and OpenAI's
    `{object: "list", data}` in one body, so the spec's clients and the official openai
    client both read it. `models` is always a page (the spec's paging, 20 by default); `data`
    is that same page when `page` or `per_page` is given, else every model (OpenAI's list is
    not paged: `client.models.list()` must see them all).

    `category` matches a model's category or any of its capabilities (a chat model that
    lists `text-generation` among its capabilities is found under both)."""
    q = query if isinstance(query, ModelsQuery) else parse(ModelsQuery, dict(query or {}))
    page_n, per = q.page or 1, q.per_page or DEFAULT_PER_PAGE
    rows = registry.list_models(db, category=q.category, size=q.size, provider=q.provider)
    if extra:  # serve-time adapters, filtered like the registry's rows
        rows = sorted(rows + [r for r in extra.values()
                              if (not q.category or r.get("category") == q.category
                                  or q.category in (r.get("capabilities") or []))
                              and (not q.size or r.get("size_class") == q.size)
                              and (not q.provider or (r.get("provider") or "").lower()
                                   == q.provider.lower())], key=lambda r: r["id"])
    items = [registry.to_api(m) for m in rows[(page_n - 1) * per: page_n * per]]
    paged = q.page is not None or q.per_page is not None
    return {"object": "list", "data": items if paged else [registry.to_api(m) for m in rows],
            "models": items, "total": len(rows), "page": page_n, "per_page": per}
