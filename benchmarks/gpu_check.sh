#!/bin/bash
# GPU benchmark of the engine: run ON THE DEVICE MACHINE from the checkout's root.
#   (here, before the device call)  bash /work/shared/device/prepare.sh
#       mkdir -p .gpu/pylib && for m in gguf sqlite_utils sqlite_fts4 click_default_group tabulate pluggy dateutil six; do
#         cp -r "$(python3 -c "import $m,os;print(os.path.dirname($m.__file__) if $m.__file__.endswith('__init__.py') else $m.__file__)")" .gpu/pylib/; done
#     (the device's Python lacks these pure-Python packages; `llmp serve` needs them)
#   (device call, carry [".gpu"])   bash benchmarks/gpu_check.sh
# Synthesizes the 1b preset (Llama-3.2-1B shape, 128k vocab), quantizes it to Q4_K_M with the
# pack's llama-quantize, then measures under the same load (128 prompt + 128 generated tokens):
#   llmp bench (engine in-process, backend sampling) at 1,4,16,64 streams,
#   llama-batched-bench at B=1,4,16,64, llama-server -np 64 via `llmp bench --url`,
#   llama-bench tg128 (the single-stream reference), and `llmp serve` over HTTP at 1,16,64
#   (issue 4's HTTP-overhead target: >= 95% of in-process at 1 stream, >= 90% at 16).
set -euo pipefail
source .gpu/on-device.sh
export PYTHONPATH=$PWD:$PWD/.gpu/pylib:${PYTHONPATH:-}
export LLMP_HOME=${LLMP_HOME:-/tmp/llmp-gpu-home}
OUT=${OUT:-/tmp/llmp-gpu-out}
mkdir -p "$LLMP_HOME/models" "$OUT"
F16=$LLMP_HOME/models/synth-1b-f16.gguf
Q4=$LLMP_HOME/models/synth-1b-Q4_K_M.gguf
[ -f "$F16" ] || python3 -c "from llmp.models.synth import synthesize; synthesize('1b', '$F16', dtype='f16')"
[ -f "$Q4" ] || llama-quantize "$F16" "$Q4" Q4_K_M > "$OUT/quantize.log" 2>&1
BENCH="python3 -c 'import typer; from llmp.cli.bench import bench; typer.run(bench)'"

echo "== llama-bench tg128 / pp512"
llama-bench -m "$Q4" -ngl 99 -fa 1 -p 512 -n 128 -o md 2>/dev/null | tee "$OUT/llama-bench.md"

echo "== llama-batched-bench, 128 prompt + 128 generated per sequence"
llama-batched-bench -m "$Q4" -ngl 99 -fa on -c 20000 -b 2048 -ub 512 -npp 128 -ntg 128 -npl 1,4,16,64 \
  2>/dev/null | tee "$OUT/batched-bench.txt"

echo "== llama-server -np 64 and llmp's engine, same load"
llama-server -m "$Q4" -ngl 99 -fa on -np 64 -c $((64 * 300)) --port 18080 --host 127.0.0.1 \
  > "$OUT/llama-server.log" 2>&1 &
SRV=$!
trap 'kill $SRV 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf http://127.0.0.1:18080/health >/dev/null 2>&1 && break; sleep 1; done
eval "$BENCH" --model "$Q4" --concurrency 1,4,16,64 --prompt-tokens 128 --gen-tokens 128 --requests 64 \
  --no-baseline --url http://127.0.0.1:18080 --backend-sampling | tee "$OUT/llmp-bench.txt"

echo "== llmp engine with CPU sampling (for the GPU-sampling gain)"
eval "$BENCH" --model "$Q4" --concurrency 1,64 --prompt-tokens 128 --gen-tokens 128 --requests 64 \
  --no-baseline --cpu-sampling | tee "$OUT/llmp-bench-cpu-sampling.txt"

echo "== llmp serve over HTTP (same load) against the in-process engine"
export LLMP_ADMIN_KEY=sk-gpucheckgpucheckgpucheckgpucheck00
LLMP_N_SLOTS=64 LLMP_SLOT_CTX=300 python3 -c 'from llmp.cli.main import run; run()' serve \
  --host 127.0.0.1 --port 18090 --model "$Q4" > "$OUT/llmp-serve.log" 2>&1 &
LLMP_SRV=$!
trap 'kill $SRV $LLMP_SRV 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf http://127.0.0.1:18090/health >/dev/null 2>&1 && break; sleep 1; done
MID=$(curl -s -H "Authorization: Bearer $LLMP_ADMIN_KEY" http://127.0.0.1:18090/v1/models \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
eval "$BENCH" --model "$Q4" --concurrency 1,16,64 --prompt-tokens 128 --gen-tokens 128 --requests 64 \
  --no-baseline --url http://127.0.0.1:18090 --url-model "$MID" --api-key "$LLMP_ADMIN_KEY" \
  --backend-sampling | tee "$OUT/llmp-serve-bench.txt"
