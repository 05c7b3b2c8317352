#!/usr/bin/env bash
# The lint and type gate: ruff, mypy, the import-linter layer contract (all configured in
# pyproject.toml). Runs all three from any directory and exits non-zero if any failed.
#   scripts/lint.sh          check
#   scripts/lint.sh --fix    let ruff fix what it can first
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--fix" ]]; then
  python3 -m ruff check --fix llmp tests
fi
failed=()
echo "== ruff (llmp, tests)"
python3 -m ruff check llmp tests || failed+=(ruff)
echo "== mypy (llmp)"
python3 -m mypy || failed+=(mypy)
echo "== import-linter (the layer tower)"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python3 -c "from importlinter.cli import lint_imports_command; lint_imports_command()" || failed+=(import-linter)
if ((${#failed[@]})); then
  echo "lint gate failed: ${failed[*]}" >&2
  exit 1
fi
echo "lint gate passed"
