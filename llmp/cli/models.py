"""`llmp models ...`: pull, add, convert, add-adapter, list, show, rm, alias, set-price,
quantize, synth, load, unload.

These commands prepare a home before any server runs, so they work on the home directly
(the registry in $LLMP_HOME/llmp.db), not through the server's API; `load` and `unload` act
on the running server (its /v1/admin/models endpoints).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from llmp.cli.ui import (
    ApiKeyOpt,
    JsonOpt,
    UrlOpt,
    YesOpt,
    client,
    console,
    err_console,
    human_bytes,
    print_json,
)
from llmp.cli.ui import table as ui_table
from llmp.config import load_settings
from llmp.db import models as db_models
from llmp.db import open_home
from llmp.errors import InvalidRequestError
from llmp.models import registry
from llmp.models.quantize import BITS_PER_WEIGHT

app = typer.Typer(help="Pull, add, list, quantize and synthesize GGUF models; load and unload "
                  "them on the running server.",
                  no_args_is_help=True)

NameOpt = Annotated[Optional[str], typer.Option(
    "--name", help="Model id to register under (lower case, no slashes).")]
ProviderOpt = Annotated[Optional[str], typer.Option(
    "--provider", help="Provider shown by the API (default: repo owner or GGUF organization).")]
ModelArg = Annotated[str, typer.Argument(help="Model id or alias.")]
PresetName = Literal["tiny", "small", "1b", "8b", "embed", "embed-0.6b"]  # the keys of synth.PRESETS
_QUANT_HELP = ", ".join(sorted(BITS_PER_WEIGHT, key=lambda t: -BITS_PER_WEIGHT[t]))


def _open():
    settings = load_settings()
    return settings, open_home(settings)


@contextlib.contextmanager
def _progress(*columns: ProgressColumn) -> Iterator[Callable[[str, int, Optional[int]], None]]:
    """A transient rich progress bar on stderr, shown from the first update on (so a command
    that fails before any progress prints nothing but its error line); nothing when stderr
    is not a terminal (scripts, CI logs)."""
    if not err_console.is_terminal:
        yield lambda description, done, total: None
        return
    bar = Progress(TextColumn("{task.description}"), *columns, console=err_console,
                   transient=True)
    task: TaskID | None = None

    def update(description: str, done: int, total: Optional[int]) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(description, total=total)
        bar.update(task, description=description, completed=done, total=total)

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()


_BYTES = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())


def human_params(n: int) -> str:
    """183232 -> '183K', 1235814400 -> '1.24B'."""
    for bound, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= bound:
            return f"{n / bound:.3g}{unit}"
    return str(n)


def _registered(rec: dict, verb: str) -> None:
    console.print(f"{verb} [bold]{rec['id']}[/bold]: {rec['architecture']}, "
                  f"{human_params(rec['parameters'])} parameters, {rec['quantization']}, "
                  f"{human_bytes(rec['size_bytes'])}, context {rec['context_length']}")


@app.command()
def pull(
    spec: Annotated[str, typer.Argument(
        help="OWNER/REPO[:QUANT], e.g. Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M.")],
    revision: Annotated[Optional[str], typer.Option(
        "--revision", help="Branch, tag or commit (default: main).")] = None,
    name: NameOpt = None,
    provider: ProviderOpt = None,
) -> None:
    """Download a GGUF model from the Hugging Face hub and register it.

    QUANT is matched case-insensitively; when it is missing or ambiguous the quants on offer
    are listed. An interrupted pull resumes when run again. Honours HF_TOKEN and HF_ENDPOINT.

    Example:

      llmp models pull Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M
    """
    from llmp.models import hub

    settings, db = _open()
    with _progress(*_BYTES) as update:
        rec = hub.pull(db, settings, spec, revision=revision, model_id=name, provider=provider,
                       progress=lambda phase, done, total: update(phase, done, total or None))
    _registered(rec, "Pulled")


@app.command()
def add(
    path: Annotated[Path, typer.Argument(help="A .gguf file (the first part of a split model).")],
    name: NameOpt = None,
    provider: ProviderOpt = None,
    hf_source: Annotated[Optional[str], typer.Option(
        "--hf-source", help="The safetensors repo this model belongs to (for fine-tuning).")] = None,
) -> None:
    """Register a local GGUF file (it stays where it is).

    Example:

      llmp models add ./my-model.Q4_K_M.gguf --name my-model
    """
    _, db = _open()
    rec = registry.register(db, path.expanduser().resolve(), model_id=name, provider=provider,
                            hf_source=hf_source)
    _registered(rec, "Added")


@app.command()
def convert(
    src: Annotated[str, typer.Argument(
        help="A local Hugging Face model folder (config.json, *.safetensors, tokenizer) or a "
             "hub repo id (OWNER/NAME).")],
    outtype: Annotated[Literal["f32", "f16", "bf16", "q8_0"], typer.Option(
        "--outtype", help="Weight type of the GGUF (norms stay F32).")] = "f16",
    name: NameOpt = None,
    revision: Annotated[Optional[str], typer.Option(
        "--revision", help="Branch, tag or commit of a hub repo (default: main).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Where to write the GGUF (default: the home's models/ folder).")
    ] = None,
) -> None:
    """Convert a Hugging Face safetensors model (llama family, Mistral, qwen2, qwen3) to GGUF
    and register it, with the source recorded for fine-tuning.

    A hub repo is downloaded first into $LLMP_HOME/models/hf/ (resumable; honours HF_TOKEN
    and HF_ENDPOINT). Tensors are converted one at a time, so memory stays bounded.

    Examples:

      llmp models convert ./Qwen2.5-0.5B-Instruct --outtype q8_0

      llmp models convert Qwen/Qwen2.5-0.5B-Instruct --name qwen-0.5b
    """
    from llmp.models import convert as conv

    settings, db = _open()
    folder = Path(src).expanduser()
    repo: str | None = None
    revision_used: str | None = None
    if not folder.exists() and conv.is_repo_id(src):
        repo = src
        owner, repo_name = src.split("/")
        with _progress(*_BYTES) as update:
            folder, revision_used = conv.fetch(
                src, settings.models_dir / "hf" / owner / repo_name, revision=revision,
                progress=lambda phase, done, total: update(phase, done, total or None))
    elif not folder.is_dir():
        raise InvalidRequestError(f"{src}: not a folder, nor a hub repo id (OWNER/NAME)")
    cfg = conv.read_config(folder)  # refuses unsupported architectures before any work
    model_id = registry.check_id(name or registry.slugify(f"{(repo or str(folder)).split('/')[-1]}"
                                                           f":{outtype}"))
    if db_models.get(db, model_id) is not None:
        raise InvalidRequestError(f"model id {model_id!r} is already registered; choose another --name "
                        f"or run `llmp models rm {model_id}` first")
    out = (output or settings.models_dir / "converted"
           / f"{model_id.replace(':', '-')}.gguf").expanduser()
    with _progress(*_BYTES) as update:
        conv.convert(folder, out, outtype=outtype, name=model_id, source=repo,
                     progress=lambda done, total: update(f"converting {cfg.hf_arch}", done, total))
    rec = registry.register(db, out.resolve(), model_id=model_id,
                            source=f"hf:{repo}" if repo else f"convert:{folder.resolve()}",
                            hf_source=repo or str(folder.resolve()), revision=revision_used)
    _registered(rec, "Converted")


@app.command("add-adapter")
def add_adapter(
    src: Annotated[Path, typer.Argument(
        help="A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) or a GGUF "
             "LoRA adapter.")],
    base: Annotated[str, typer.Option("--base", help="The registered base model (id or alias).")],
    name: NameOpt = None,
    scale: Annotated[float, typer.Option(
        "--scale", help="How strongly the adapter applies (1.0: as trained).")] = 1.0,
) -> None:
    """Register a LoRA adapter as a model of its own, served on its base model's engine.

    A PEFT folder is converted to a GGUF adapter in $LLMP_HOME/adapters/. Refused, with
    nothing registered: DoRA, LoRA on embeddings or lm_head, modules_to_save, LoRA biases,
    and an adapter whose architecture or shapes do not match the base.

    Example:

      llmp models add-adapter ./my-lora --base qwen-0.5b --name qwen-0.5b-support
    """
    settings, db = _open()
    rec = registry.register_adapter(db, settings, src, base, model_id=name, scale=scale)
    console.print(f"Added adapter [bold]{rec['id']}[/bold] on {rec['parent']}: "
                  f"{rec['description']}, scale {rec['lora_scale']:g}")


@app.command("list")
def list_(
    category: Annotated[Optional[str], typer.Option(
        "--category", help="text-generation, chat or embedding.")] = None,
    size: Annotated[Optional[str], typer.Option("--size", help="small, medium, large or xl.")] = None,
    provider: Annotated[Optional[str], typer.Option("--provider", help="Provider name.")] = None,
    json_: JsonOpt = False,
) -> None:
    """List registered models.

    Examples:

      llmp models list

      llmp models list --category embedding --json
    """
    _, db = _open()
    records = registry.list_models(db, category=category, size=size, provider=provider)
    if json_:
        print_json([_api(db, r) for r in records])
        return
    if not records:
        console.print("No models. Add one with `llmp models pull` or `llmp models add`.")
        return
    table = ui_table()  # the CLI's one table style
    table.add_column("ID", no_wrap=True)
    for col in ("CATEGORY", "SIZE", "PARAMS", "QUANT", "CONTEXT", "FILE", "PROVIDER"):
        table.add_column(col, no_wrap=True,
                         justify="right" if col in ("PARAMS", "CONTEXT", "FILE") else "left")
    for r in records:
        table.add_row(r["id"], r["category"], r["size_class"], human_params(r["parameters"]),
                      r["quantization"], str(r["context_length"]), human_bytes(r["size_bytes"]),
                      r["provider"])
    console.print(table)


def _api(db, rec: dict) -> dict:
    out = registry.to_api(rec, detailed=True, aliases=db_models.aliases(db, rec["id"]))
    out["details"]["path"] = rec["path"]  # local detail: the CLI may show it, the API does not
    return out


@app.command()
def show(model: ModelArg, json_: JsonOpt = False) -> None:
    """Show one model: metadata, pricing, source and file.

    Examples:

      llmp models show tiny

      llmp models show tiny --json
    """
    _, db = _open()
    data = _api(db, registry.resolve(db, model))
    if json_:
        print_json(data)
        return
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in _flatten(data):
        table.add_row(key, value)
    console.print(table)


def _flatten(data: dict, prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            yield f"{prefix}{key}", ", ".join(map(str, value)) or "-"
        else:
            yield f"{prefix}{key}", "-" if value is None else str(value)


@app.command()
def rm(model: ModelArg, yes: YesOpt = False) -> None:
    """Unregister a model; its file is deleted when it lives in the home's models/ folder.

    Examples:

      llmp models rm tiny

      llmp models rm tiny -y
    """
    settings, db = _open()
    rec = registry.resolve(db, model)
    if not yes and not typer.confirm(f"Remove {rec['id']} ({rec['path']})?", default=False):
        err_console.print("Nothing removed.")
        raise typer.Exit(1)
    rec, deleted = registry.remove(db, settings, rec["id"])
    note = f", deleted {len(deleted)} file(s)" if deleted else ", file kept"
    console.print(f"Removed {rec['id']}{note}.")


@app.command()
def alias(model: ModelArg,
          name: Annotated[str, typer.Argument(help="The alias (any text without spaces).")]) -> None:
    """Add another name for a model (requests may use either).

    Example:

      llmp models alias qwen2.5-0.5b-instruct:q4_k_m qwen
    """
    _, db = _open()
    rec = registry.add_alias(db, name, model)
    console.print(f"{name} -> {rec['id']}")


@app.command("set-price")
def set_price(
    model: ModelArg,
    input_price: Annotated[Optional[float], typer.Option(
        "--input", help="Price per 1K input tokens.")] = None,
    output_price: Annotated[Optional[float], typer.Option(
        "--output", help="Price per 1K output tokens.")] = None,
    currency: Annotated[Optional[str], typer.Option("--currency", help="e.g. USD.")] = None,
    training_price: Annotated[Optional[float], typer.Option(
        "--training", help="Price per 1K trained tokens of fine-tuning jobs on this model.")] = None,
) -> None:
    """Set a model's prices per 1K tokens (used by usage and billing).

    Example:

      llmp models set-price tiny --input 0.0005 --output 0.0015 --currency USD
    """
    if input_price is None and output_price is None and currency is None \
            and training_price is None:
        raise typer.BadParameter("give --input, --output, --training and/or --currency")
    _, db = _open()
    rec = registry.set_price(db, model, input_price=input_price, output_price=output_price,
                             currency=currency, training_price=training_price)
    console.print(f"{rec['id']}: {rec['price_input']:g} in / {rec['price_output']:g} out "
                  + (f"/ {rec['price_training']:g} training " if rec.get("price_training")
                     else "") + f"{rec['currency']} per 1K tokens")


@app.command("set-guard")
def set_guard(
    model: ModelArg,
    profile: Annotated[Optional[str], typer.Option(
        "--profile", help="llama-guard-3 | llama-guard-3-1b | qwen3-guard (default: detected "
        "from the model's "
        "metadata); 'none' unmarks the model.")] = None,
) -> None:
    """Mark a model as a guard (safety classifier) serving POST /v1/moderations.

    Examples:

      llmp models set-guard llama-guard-3-1b

      llmp models set-guard my-model --profile none
    """
    from llmp.services.moderation import set_guard as mark

    _, db = _open()
    rec = mark(db, model, profile)
    if rec.get("guard_profile"):
        console.print(f"{rec['id']}: guard model, profile {rec['guard_profile']} "
                      "(serves omni-moderation-latest / text-moderation-*)")
    else:
        console.print(f"{rec['id']}: no longer a guard model")


@app.command(help="Quantize a registered model with llama.cpp and register the result.\n\n"
                  f"Types (by precision): {_QUANT_HELP}.\n\n"
                  "Examples:\n\n"
                  "llmp models quantize qwen-0.5b-f16 -t Q4_K_M\n\n"
                  "llmp models quantize qwen-0.5b-f16 -t Q8_0 --name qwen-0.5b:q8")
def quantize(
    model: ModelArg,
    type_: Annotated[str, typer.Option("--type", "-t", help="Target type, e.g. Q4_K_M.")],
    name: NameOpt = None,
    allow_requantize: Annotated[bool, typer.Option(
        "--allow-requantize", help="Allow a higher precision than an already-quantized source.")] = False,
    threads: Annotated[int, typer.Option("--threads", help="CPU threads (0: all cores).")] = 0,
) -> None:
    from llmp.models.quantize import quantize as run_quantize

    settings, db = _open()
    with _progress(BarColumn(), DownloadColumn(), TimeElapsedColumn()) as update:
        res = run_quantize(
            db, settings, model, type_, model_id=name, allow_requantize=allow_requantize,
            threads=threads,
            progress=lambda done, total: update(f"quantizing to {type_.upper()}", done,
                                                max(total, done)))
    console.print(f"Quantized {res.source_id} -> [bold]{res.record['id']}[/bold] ({res.type}) in "
                  f"{res.seconds:.2f}s: {human_bytes(res.size_before)} -> "
                  f"{human_bytes(res.size_after)} "
                  f"({100 * res.size_after / max(1, res.size_before):.0f}%)")


@app.command()
def synth(
    preset: Annotated[PresetName, typer.Option(
        "--preset", help="tiny (tests), small (~30M), 1b / 8b (Llama-3.2-1B / 3.1-8B shapes), "
        "embed (an embedding model: pooled, no chat template), embed-0.6b (Qwen3-Embedding-0.6B "
        "shape).")] = "tiny",
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Where to write (default: $LLMP_HOME/models/synth/<preset>-<dtype>.gguf).")] = None,
    dtype: Annotated[Literal["f16", "f32"], typer.Option("--dtype")] = "f16",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random weights.")] = 0,
    register: Annotated[bool, typer.Option(
        "--register", help="Register the model too.")] = False,
    name: NameOpt = None,
    pooling: Annotated[Optional[Literal["mean", "cls", "last"]], typer.Option(
        "--pooling", help="Embedding pooling (--preset embed; default mean).")] = None,
) -> None:
    """Write a synthetic llama GGUF (random weights, real tokenizer, ChatML template).

    Examples:

      llmp models synth --preset tiny --name tiny

      llmp models synth --preset 1b -o llama-1b-shape.gguf
    """
    from llmp.models.synth import synthesize

    settings = load_settings()
    out = (output or settings.models_dir / "synth" /
           f"{preset}{'-' + pooling if pooling else ''}-{dtype}.gguf").expanduser()
    with _progress(*_BYTES) as update:
        synthesize(preset, out, dtype=dtype, seed=seed, pooling=pooling,
                   progress=lambda done, total: update(f"synthesizing {preset}", done, total))
    console.print(f"Wrote {out} ({human_bytes(out.stat().st_size)})")
    if register or name:
        _, db = _open()
        _registered(registry.register(db, out.resolve(), model_id=name), "Added")


@app.command()
def load(model: ModelArg, url: UrlOpt = None, api_key: ApiKeyOpt = None,
         json_: JsonOpt = False) -> None:
    """Load a model on the running server now (instead of on its first request); it stays
    loaded for the keep-alive after its last request.

    Examples:

      llmp models load tiny

      llmp models load qwen2.5-0.5b-instruct:q4_k_m && llmp ps
    """
    c = client()
    if err_console.is_terminal and not json_:
        with err_console.status(f"loading {model} ..."):
            m = c.request("POST", "/v1/admin/models/load", json={"model": model})
    else:
        m = c.request("POST", "/v1/admin/models/load", json={"model": model})
    if json_:
        print_json(m)
        return
    mem = (m.get("model_bytes") or 0) + (m.get("kv_cache_bytes") or 0)
    console.print(f"Loaded [bold]{m['id']}[/bold] in {m.get('seconds', 0):.2f}s: "
                  f"{m.get('slots_total', '?')} slots x {m.get('slot_ctx', '?')} tokens, "
                  f"{m.get('device', '?')}, {human_bytes(mem)}")


@app.command()
def unload(
    model: ModelArg,
    force: Annotated[bool, typer.Option(
        "--force", help="Unload even with requests in flight (they end with an error).")] = False,
    url: UrlOpt = None, api_key: ApiKeyOpt = None,
) -> None:
    """Unload a model from the running server, freeing its memory (it loads again on its
    next request).

    Example:

      llmp models unload tiny
    """
    r = client().request("POST", "/v1/admin/models/unload", json={"model": model, "force": force})
    console.print(f"Unloaded {r['id']}." if r["unloaded"] else f"{r['id']} was not loaded.")
