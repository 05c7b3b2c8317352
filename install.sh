#!/usr/bin/env bash
# Install llmp into the current Python (3.11+) environment.
#   ./install.sh          the product
#   ./install.sh --dev    the product and what the test suite needs (with the `finetune`
#                         extra: torch, transformers, peft; `qlora` too on a CUDA build)
# llama-cpp-python is built from source: with CUDA when `nvidia-smi -L` lists a GPU, for the
# CPU otherwise (nvcc alone is not a GPU). Force either with LLMP_CUDA=1 or LLMP_CUDA=0.
set -euo pipefail
cd "$(dirname "$0")"
py="${PYTHON:-python3}"
dev=0
[ "${1:-}" = "--dev" ] && dev=1
cuda="${LLMP_CUDA:-auto}"
if [ "$cuda" = auto ]; then
  cuda=0
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then cuda=1; fi
fi
extras=""
if [ "$dev" = 1 ]; then
  extras="[dev]"
  [ "$cuda" = 1 ] && extras="[dev,qlora]"
fi
if [ "$cuda" = 1 ]; then
  echo "llmp: building llama.cpp with CUDA (set LLMP_CUDA=0 for a CPU build)"
  export CMAKE_ARGS="-DGGML_CUDA=on ${CMAKE_ARGS:-}"
else
  echo "llmp: building llama.cpp for the CPU (set LLMP_CUDA=1 to force CUDA)"
  export CMAKE_ARGS="-DGGML_CUDA=off ${CMAKE_ARGS:-}"
fi
"$py" -m pip install --quiet --disable-pip-version-check -e ".${extras}"
if [ "$cuda" = 1 ] && ! "$py" -c "import llama_cpp,sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)"; then
  # a CPU wheel from pip's cache was taken: rebuild this one package with CUDA
  "$py" -m pip install --quiet --disable-pip-version-check --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==0.3.36"
fi
echo "llmp: installed ($("$py" -c 'import llama_cpp; print("GPU offload" if llama_cpp.llama_supports_gpu_offload() else "CPU")'))"
