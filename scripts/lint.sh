#!/usr/bin/env bash
# The lint and type gate: ruff, mypy, the import-linter layer contract (config in
# pyproject.toml). Runs from any directory; exits non-zero on the first failing tool.
#   scripts/lint.sh          check
#   scripts/lint.sh --fix    let ruff fix what it can first
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--fix" ]]; then
  python3 -m ruff check --fix llmp tests
fi
echo "== ruff";          python3 -m ruff check llmp tests
echo "== mypy";          python3 -m mypy
echo "== import-linter"; PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" lint-imports
