#!/usr/bin/env bash
# The longer schemathesis run against a real `llmp serve` (tests/test_fuzz.py is the bounded
# one): every operation of /openapi.json, all phases, more examples and a larger time budget.
#   benchmarks/fuzz.sh [MAX_TIME_S (default 600)] [MAX_EXAMPLES (default 100)] [-- st args]
set -euo pipefail
cd "$(dirname "$0")/.."
max_time="${1:-600}"
max_examples="${2:-100}"
shift $(( $# > 2 ? 2 : $# ))
exec python3 benchmarks/fuzz.py --max-time "$max_time" --max-examples "$max_examples" "$@"
