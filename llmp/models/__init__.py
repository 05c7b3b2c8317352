"""Model files: GGUF metadata (`gguf_meta`), the registry (`registry`), hub pulls (`hub`),
quantization (`quantize`) and synthetic models (`synth`).

Import the submodule you need; this package imports nothing heavy by itself.
"""
