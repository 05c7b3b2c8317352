"""Tiny Hugging Face models built in the tests: transformers random-init llama / qwen2 with a
small byte-level BPE tokenizer trained on the spot, and PEFT LoRA adapters on them."""
from __future__ import annotations

import json
from pathlib import Path

CORPUS = ("The quick brown fox jumps over the lazy dog. Hello, how are you today? I am fine. "
          "def main():\n    return 42\n" "Paris is the capital of France. 1234 5678 "
          "café naïve résumé — “quotes” emoji 🦙 ") * 20
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
             r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
            r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
VOCAB = 320  # trained tokens + specials; the model's vocab_size pads it to 336


def make_tokenizer(folder: Path, regex: str, *, bos: bool) -> int:
    """Train a byte-level BPE tokenizer with the given pre-tokenizer regex; save it as a
    transformers fast tokenizer in `folder`. Returns its size."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                   eos_token="<|im_end|>", pad_token="<|end_of_text|>")
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["add_bos_token"] = bos
    cfg_path.write_text(json.dumps(cfg))
    return len(tok.get_vocab())


def make_model(folder: Path, arch: str, *, seed: int = 0, hidden: int = 64) -> Path:
    """A 2-layer random-init `llama` or `qwen2` model saved (safetensors) with its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB + 16, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, rms_norm_eps=1e-5, initializer_range=0.2,
                  tie_word_embeddings=False)
    if arch == "llama":
        make_tokenizer(folder, LLAMA3_RE, bos=True)
        cfg = LlamaConfig(**common, rope_theta=10000.0, bos_token_id=0, eos_token_id=3)
        model = LlamaForCausalLM(cfg)
    else:
        make_tokenizer(folder, QWEN2_RE, bos=False)
        cfg = Qwen2Config(**common, rope_theta=10000.0, bos_token_id=0, eos_token_id=3)
        model = Qwen2ForCausalLM(cfg)
        with torch.no_grad():  # qwen2's q/k/v biases start at zero: make them matter
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0.0, 0.2)
    with torch.no_grad():  # norms start at one: vary them too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model = model.to(torch.float32).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def make_lora(base: Path, folder: Path, *, seed: int = 1, r: int = 4, alpha: float = 8.0,
              targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                          "up_proj", "down_proj"),
              **extra: object) -> Path:
    """A PEFT LoRA on `base` with random non-zero A and B (B is zero at init: randomized)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                     task_type="CAUSAL_LM", **extra)  # type: ignore[arg-type]
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.normal_(0.0, 0.3)
    pm.save_pretrained(folder)
    return folder


def hf_logits(folder: Path, ids: list[int], adapter: Path | None = None,
              scale: float = 1.0):
    """transformers' (or PEFT's) logits for every position of `ids`, float64 numpy."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    with torch.no_grad():
        out = model(torch.tensor([ids])).logits[0]
    return out.double().numpy()


def hf_greedy(folder: Path, ids: list[int], n: int, adapter: Path | None = None) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq])).logits[0, -1]
            seq.append(int(torch.argmax(logits)))
    return seq[len(ids):]
