"""The fine-tuning worker: LoRA on a Hugging Face model with transformers + peft, one process
per job (`python -m llmp.models.train CONFIG.json`).

The server writes the job's config (paths, resolved hyper-parameters, the checkpoint to resume
from) and reads this process's stdout: one JSON object per line,

    {"type": "message", "message": ...}                    progress worth an event
    {"type": "metrics", "step", "total_steps", "epoch", "train_loss", "train_mean_token_accuracy",
     "learning_rate", "tokens_per_second", "eta_seconds"}  every `event_every` steps
    {"type": "checkpoint", "step", "epoch", "path", "gguf", "metrics": {...}}   per epoch
    {"type": "done", "path", "gguf", "trained_tokens", "bitsandbytes_imported"}
    {"type": "error", "code", "message"}                   then a non-zero exit

Everything else (library warnings) goes to stderr, which the server keeps in the job's log.

On CPU: plain LoRA in fp32 (bitsandbytes is never imported). On CUDA: QLoRA (bitsandbytes NF4,
double quantization, bf16 compute, gradient checkpointing) when bitsandbytes is installed,
else LoRA in bf16. The base's chat template renders each example; the loss covers only the
assistant messages' tokens (those with weight 0 excluded). A checkpoint (the adapter, its
GGUF, and the optimizer/scheduler state) is saved after every epoch; a resumed run continues
from the epoch after its checkpoint with the same data order (seeded per epoch).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

_OUT = None  # the protocol stream (the real stdout)


def emit(kind: str, **fields: Any) -> None:
    assert _OUT is not None
    _OUT.write(json.dumps({"type": kind, **fields}) + "\n")
    _OUT.flush()


class TrainingError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the server dies (kill -9 included)."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the broken stdout pipe stops us instead
        pass


def read_examples(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
    return out


def assistant_spans(tok: Any, example: dict) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text of an example and the character spans the loss covers (the
    assistant messages with weight != 0, their end-of-turn marker included)."""
    messages = [{k: v for k, v in m.items() if k != "weight"} for m in example["messages"]]
    kw: dict[str, Any] = {}
    if example.get("tools"):
        kw["tools"] = example["tools"]
    full = tok.apply_chat_template(messages, tokenize=False, **kw)
    spans = []
    for i, m in enumerate(example["messages"]):
        if m["role"] != "assistant" or m.get("weight") == 0:
            continue
        prefix = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True,
                                         **kw) if i else ""
        upto = tok.apply_chat_template(messages[:i + 1], tokenize=False, **kw)
        if full.startswith(upto) and upto.startswith(prefix):
            spans.append((len(prefix), len(upto)))
        else:  # a template that is not prefix-stable: find the content after the last span
            content = m.get("content") if isinstance(m.get("content"), str) else ""
            start = full.find(content, spans[-1][1] if spans else 0) if content else -1
            if start < 0:
                raise TrainingError("unsupported_chat_template",
                                    "the model's chat template does not render assistant "
                                    "messages in a way the trainer can locate")
            spans.append((start, start + len(content)))
    return full, spans


def encode(tok: Any, example: dict, max_len: int, line: int) -> tuple[list[int], list[int]]:
    text, spans = assistant_spans(tok, example)
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=True)
    ids = list(enc["input_ids"])
    labels = []
    for tid, (s, e) in zip(ids, enc["offset_mapping"]):
        inside = e > s and any(a <= s < b for a, b in spans)
        labels.append(tid if inside else -100)
    # the end-of-turn token may carry no characters of its own (e.g. appended): keep it
    if len(ids) > max_len:
        raise TrainingError("example_too_long", f"line {line} has {len(ids)} tokens, more than "
                            f"the model's context of {max_len}")
    return ids, labels


#: GPU memory a job needs beyond its weights (activations, LoRA and optimizer state, CUDA)
GPU_HEADROOM = 2 << 30


def check_gpu_memory(src: str, qlora: bool) -> None:
    """Refuse (clearly) a job whose weights do not fit in the GPU memory left free, the
    server's own models included, before loading anything. Weights: the safetensors files
    (16-bit), a quarter of that in 4-bit for QLoRA."""
    import torch

    folder = Path(src)
    if not folder.is_dir():
        return
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    need = int(weights * (0.3 if qlora else 1.0)) + GPU_HEADROOM
    free, total = torch.cuda.mem_get_info()
    if need > free:
        raise TrainingError("not_enough_gpu_memory",
                            f"the job needs about {need / 2**30:.1f} GiB of GPU memory; "
                            f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB are free (the "
                            "server's loaded models included): unload a model and resume")


def main(config_path: str) -> int:
    global _OUT
    _die_with_parent()
    _OUT = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to the log, not the protocol
    sys.stdout = sys.stderr
    cfg = json.loads(Path(config_path).read_text())
    if cfg.get("nice"):
        try:  # training yields the CPU to the server's inference
            os.nice(int(cfg["nice"]))
        except OSError:
            pass
    try:
        return train(cfg)
    except TrainingError as e:
        emit("error", code=e.code, message=e.message)
        return 2
    except Exception as e:  # noqa: BLE001 - reported to the server, which fails the job
        import traceback

        traceback.print_exc()
        emit("error", code="training_failed", message=f"{type(e).__name__}: {e}")
        return 1


def train(cfg: dict) -> int:
    import torch

    threads = int(cfg.get("threads") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t_load = time.perf_counter()
    device = cfg.get("device") or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    src = cfg["hf_source"]
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except Exception as e:  # noqa: BLE001
        raise TrainingError("base_model_unavailable",
                            f"cannot load the tokenizer of {src}: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise TrainingError("no_chat_template", f"{src} has no chat template")
    qlora = False
    kwargs: dict[str, Any] = {}
    if device == "cuda":
        import importlib.util

        if cfg.get("qlora", True) and importlib.util.find_spec("bitsandbytes") is not None:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16)
            kwargs["device_map"] = {"": 0}
            qlora = True
        kwargs["dtype"] = torch.bfloat16
    else:
        kwargs["dtype"] = torch.float32
    if device == "cuda":
        check_gpu_memory(src, qlora)
    try:
        model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise TrainingError("base_model_unavailable", f"cannot load {src}: {e}") from None
    if qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    elif device == "cuda":
        model = model.to("cuda")  # type: ignore[arg-type]  # transformers' stub for .to
    max_len = int(cfg.get("max_len")
                  or getattr(model.config, "max_position_embeddings", None) or 2048)

    def load(path: str | None, what: str) -> list[tuple[list[int], list[int]]]:
        if not path:
            return []
        out = []
        for n, ex in enumerate(read_examples(Path(path)), 1):
            out.append(encode(tok, ex, max_len, n))
        return out

    data = load(cfg["train_path"], "training")
    valid = load(cfg.get("valid_path"), "validation")
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in cfg["targets"] if t in present]
    if not targets:
        raise TrainingError("unsupported_model", f"the model has none of the LoRA target "
                            f"modules {', '.join(cfg['targets'])}")
    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    lcfg = LoraConfig(r=int(cfg["rank"]), lora_alpha=float(cfg["alpha"]),  # type: ignore[arg-type]
                      target_modules=targets,
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    pm = get_peft_model(model, lcfg)
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(cfg["learning_rate"]), weight_decay=0.0)
    bs = int(cfg["batch_size"])
    epochs = int(cfg["n_epochs"])
    steps_per_epoch = math.ceil(len(data) / bs)
    total = steps_per_epoch * epochs
    warmup = min(10, total // 10)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    step, start_epoch, trained_tokens = 0, 0, 0
    if cfg.get("resume"):
        ck = Path(cfg["resume"])
        from safetensors.torch import load_file

        set_peft_model_state_dict(pm, load_file(str(ck / "adapter_model.safetensors")))
        state = torch.load(ck / "trainer_state.pt", weights_only=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, start_epoch = int(state["step"]), int(state["epoch"]) + 1
        trained_tokens = int(state["trained_tokens"])
        emit("message", message=f"Resumed from checkpoint at step {step}")
    emit("message", message=f"Training {len(data)} examples for {epochs} epoch(s), {total} "
         f"steps, LoRA rank {cfg['rank']} on {', '.join(targets)} "
         f"({'QLoRA 4-bit' if qlora else 'LoRA ' + str(kwargs['dtype']).split('.')[-1]} on "
         f"{device}; loaded in {time.perf_counter() - t_load:.1f}s)",
         data={"device": device, "qlora": qlora, "total_steps": total})
    pad = tok.pad_token_id

    def batch_tensors(items: list[tuple[list[int], list[int]]]):
        n = max(len(i) for i, _ in items)
        ids = torch.full((len(items), n), pad, dtype=torch.long)
        lab = torch.full((len(items), n), -100, dtype=torch.long)
        att = torch.zeros((len(items), n), dtype=torch.long)
        for r, (i, lb) in enumerate(items):
            ids[r, :len(i)] = torch.tensor(i)
            lab[r, :len(lb)] = torch.tensor(lb)
            att[r, :len(i)] = 1
        return ids.to(dev), lab.to(dev), att.to(dev)

    def loss_acc(ids, lab, att):
        out = pm(input_ids=ids, attention_mask=att)
        logits = out.logits[:, :-1].float()
        target = lab[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                 target.reshape(-1), ignore_index=-100)
        mask = target != -100
        acc = ((logits.argmax(-1) == target) & mask).sum().item() / max(1, mask.sum().item())
        return loss, acc

    def evaluate() -> tuple[float | None, float | None]:
        if not valid:
            return None, None
        pm.eval()
        losses, accs = [], []
        with torch.no_grad():
            for i in range(0, len(valid), bs):
                loss, acc = loss_acc(*batch_tensors(valid[i:i + bs]))
                losses.append(loss.item())
                accs.append(acc)
        pm.train()
        return sum(losses) / len(losses), sum(accs) / len(accs)

    every = max(1, int(cfg.get("event_every") or 10))
    out_dir = Path(cfg["out_dir"])
    pm.train()
    t0, tokens_run, steps_run = time.perf_counter(), 0, 0
    last_path: Path | None = Path(cfg["resume"]) if cfg.get("resume") else None
    last_gguf: str | None = None
    for epoch in range(start_epoch, epochs):
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(data), generator=g).tolist()
        e_loss, e_acc, e_n = 0.0, 0.0, 0
        for b in range(steps_per_epoch):
            items = [data[i] for i in order[b * bs:(b + 1) * bs]]
            ids, lab, att = batch_tensors(items)
            loss, acc = loss_acc(ids, lab, att)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            steps_run += 1
            n_tok = int(att.sum().item())
            trained_tokens += n_tok
            tokens_run += n_tok
            e_loss += loss.item()
            e_acc += acc
            e_n += 1
            if step % every == 0 or step == total:
                dt = time.perf_counter() - t0
                emit("metrics", step=step, total_steps=total, epoch=epoch + 1,
                     train_loss=round(loss.item(), 6), train_mean_token_accuracy=round(acc, 6),
                     learning_rate=sched.get_last_lr()[0],
                     tokens_per_second=round(tokens_run / dt, 1) if dt > 0 else None,
                     eta_seconds=round(dt / steps_run * (total - step), 1))
        v_loss, v_acc = evaluate()
        path = out_dir / f"ckpt-step-{step}"
        tmp = out_dir / f".ckpt-step-{step}.part"
        pm.save_pretrained(str(tmp), safe_serialization=True)
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "step": step, "epoch": epoch, "trained_tokens": trained_tokens},
                   tmp / "trainer_state.pt")
        if path.exists():
            import shutil

            shutil.rmtree(path)
        os.replace(tmp, path)
        last_gguf = None
        if cfg.get("base_gguf"):
            from llmp.models.lora import convert_peft_adapter

            last_gguf = str(convert_peft_adapter(path, cfg["base_gguf"], path / "adapter.gguf",
                                                 name=cfg.get("name") or path.name))
        metrics = {"step": step, "train_loss": round(e_loss / max(1, e_n), 6),
                   "train_mean_token_accuracy": round(e_acc / max(1, e_n), 6)}
        if v_loss is not None and v_acc is not None:
            metrics.update(valid_loss=round(v_loss, 6), valid_mean_token_accuracy=round(v_acc, 6),
                           full_valid_loss=round(v_loss, 6),
                           full_valid_mean_token_accuracy=round(v_acc, 6))
        emit("checkpoint", step=step, epoch=epoch + 1, path=str(path), gguf=last_gguf,
             metrics=metrics)
        last_path = path
    if last_path is None:
        raise TrainingError("no_steps", "nothing was trained")
    if last_gguf is None and cfg.get("base_gguf"):
        from llmp.models.lora import convert_peft_adapter

        last_gguf = str(convert_peft_adapter(last_path, cfg["base_gguf"],
                                             last_path / "adapter.gguf", name=cfg.get("name")))
    emit("done", path=str(last_path), gguf=last_gguf, trained_tokens=trained_tokens,
         steps=step, seconds=round(time.perf_counter() - t0, 3),
         bitsandbytes_imported="bitsandbytes" in sys.modules)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
