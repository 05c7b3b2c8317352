"""Which guard (safety classifier) family a model's metadata names: the profile
(`llmp.engine.guard.PROFILES`) a GGUF gets when it is registered, or when
`llmp models set-guard ID` is run without `--profile`."""
from __future__ import annotations


def detect(name: str | None, template: str | None) -> str | None:
    """The guard profile a model's name or chat template suggests, else None."""
    text = f"{name or ''}\n{template or ''}".lower()
    if "qwen3guard" in text or "qwen3-guard" in text:
        return "qwen3-guard"
    lg3 = "llama-guard-3" in text or "llama guard 3" in text or "llama-guard3" in text
    if (lg3 and "1b" in text) or ("unsafe content categories" in text and
                                  "selectattr('type', 'equalto', 'text')" in text):
        return "llama-guard-3-1b"
    if lg3 or ("unsafe content categories" in text and
               "s14: code interpreter abuse" in text):
        return "llama-guard-3"
    return None
