#!/usr/bin/env bash
# The linters CI runs before the tests (configuration in pyproject.toml; ./setup.sh
# installs the pinned ruff and mypy into .venv). `./lint.sh --fix` applies ruff's safe
# fixes and the formatter instead of only checking.
set -euo pipefail
cd "$(dirname "$0")"
TARGETS=(minikubenet tests bench)
if [ "${1:-}" = "--fix" ]; then
  .venv/bin/ruff check --fix "${TARGETS[@]}"
  .venv/bin/ruff format "${TARGETS[@]}"
fi
.venv/bin/ruff check "${TARGETS[@]}"
.venv/bin/ruff format --check "${TARGETS[@]}"
.venv/bin/mypy
echo "lint.sh: ruff and mypy clean"
