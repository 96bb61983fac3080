#!/usr/bin/env bash
# The whole test suite: lint, type check of the pure parts, import layering, then every test
# (unit, property, and the integration tests on real libvirt, QEMU guests and nftables; needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
V=.venv/bin
echo "== ruff"; $V/ruff check src tests bench
echo "== mypy (pure parts)"; $V/mypy
echo "== import layering"; $V/lint-imports
echo "== pytest"; $V/pytest "$@"
