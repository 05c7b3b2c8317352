#!/usr/bin/env bash
# Install llmp into the current Python (3.11+) environment.
#   ./install.sh          the product
#   ./install.sh --dev    the product and what the test suite needs (with the `finetune`
#                         extra: torch, transformers, peft; `qlora` too on a CUDA build)
# llama-cpp-python is built from source: with CUDA when `nvidia-smi -L` lists a GPU, for the
# CPU otherwise (nvcc alone is not a GPU). Force either with LLMP_CUDA=1 or LLMP_CUDA=0.
# The CPU code is built for x86-64-v3 (AVX2, FMA, F16C), not -march=native: pip caches the
# wheel by the package's URL alone, so a cache filled on one CPU must run on another.
# LLMP_NATIVE=1 builds for this CPU only (and never caches that wheel).
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
portable="-DGGML_NATIVE=OFF"
case "$(uname -m)" in
  x86_64|amd64) portable="$portable -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF" ;;
esac
nocache=""
if [ "${LLMP_NATIVE:-0}" = 1 ]; then portable="-DGGML_NATIVE=ON"; nocache="--no-cache-dir"; fi
export CMAKE_ARGS="$portable $CMAKE_ARGS"
echo "llmp: installing; the first build of llama.cpp takes minutes (about 5 on 2 cores) and pip prints nothing meanwhile"
"$py" -m pip install --quiet --disable-pip-version-check $nocache -e ".${extras}"
# A wheel from pip's cache may have been built elsewhere for a CPU with more instructions than
# this one (it then dies with SIGILL mid-inference): check what it was built with against what
# this CPU has, and rebuild it here when they differ.
if ! "$py" - <<'PY'
import sys, llama_cpp
info = llama_cpp.llama_print_system_info().decode().upper()
try:
    flags = open("/proc/cpuinfo").read().lower()
except OSError:
    sys.exit(0)
need = {"AVX512 = 1": "avx512f", "AVX512_VBMI = 1": "avx512vbmi", "AVX512_VNNI = 1": "avx512_vnni",
        "AVX512_BF16 = 1": "avx512_bf16", "AVX_VNNI = 1": "avx_vnni", "AVX2 = 1": "avx2",
        "AMX_INT8 = 1": "amx_int8", "FMA = 1": "fma", "F16C = 1": "f16c", "BMI2 = 1": "bmi2"}
missing = [f for k, f in need.items() if k in info and f not in flags]
if missing:
    print("llmp: the cached llama.cpp build needs", ", ".join(missing), "which this CPU lacks; rebuilding", file=sys.stderr)
    sys.exit(1)
PY
then
  "$py" -m pip cache remove llama_cpp_python >/dev/null 2>&1 || true
  "$py" -m pip install --quiet --disable-pip-version-check --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==0.3.36"
fi
if [ "$cuda" = 1 ] && ! "$py" -c "import llama_cpp,sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)"; then
  # a CPU wheel from pip's cache was taken: rebuild this one package with CUDA
  "$py" -m pip install --quiet --disable-pip-version-check --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==0.3.36"
fi
echo "llmp: installed ($("$py" -c 'import llama_cpp; print("GPU offload" if llama_cpp.llama_supports_gpu_offload() else "CPU")'))"
