#!/usr/bin/env bash
# Regenerates requirements.lock (every transitive dependency of the package and its [test]
# extra, pinned, for Linux x86-64 + CPython 3.11) from pyproject.toml with uv, then rewrites
# the pins of envs/*.yaml from it, so one set of versions is installed and tested everywhere.
#   pip install uv && bash tools/update_lock.sh
# tests/test_envs.py fails when the lock, pyproject.toml and envs/*.yaml disagree.
set -euo pipefail
cd "$(dirname "$0")/.."
uv pip compile pyproject.toml --extra test \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --custom-compile-command "bash tools/update_lock.sh" \
    --upgrade-package brainage-rnc -o requirements.lock.new
{
    cat <<'HEADER'
# requirements.lock: the tested release of every package brainage-rnc installs (Linux x86-64,
# CPython 3.11), used as pip constraints:   pip install -c requirements.lock -e .
# torch==2.13.0 is satisfied by the CPU build (2.13.0+cpu) and by PyPI's CUDA build; the
# CUDA libraries that build pulls on a GPU cluster (nvidia-*, triton) are pinned here too, and
# a CPU-only machine never installs them (constraints only limit what is installed).
HEADER
    cat requirements.lock.new
} > requirements.lock
rm requirements.lock.new
python3 tools/envs_from_lock.py
