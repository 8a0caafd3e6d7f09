#!/usr/bin/env bash
# One-shot set-up on a fresh machine: a virtual environment in .venv with torch, mslam_ns and its extras,
# then the compiled CPU kernels. Idempotent: re-running it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
# No pip cache: torch alone is several GB, and a second copy of every wheel in ~/.cache has filled a CI disk.
export PIP_NO_CACHE_DIR=1
stamp="$VENV/.mslam_ns_setup"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# Keep a torch that is already there; otherwise take the torch/torchvision pair known to work together
# (on these machines it comes from the local disk; elsewhere from PyPI).
if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
"$VENV/bin/python" -m pip install -q -e ".[dev,video,nerfstudio,viewer]"
# The editable build leaves a stale mslam_ns.egg-info in the checkout; run from here, importlib.metadata
# would find it before the installed dist-info (hiding entry points and the recorded .pth hook).
rm -rf mslam_ns.egg-info
# open3d (used by nerfstudio's point-cloud loading) needs libusb; install it where we may.
if ! ldconfig -p 2>/dev/null | grep -q libusb-1.0 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq libusb-1.0-0) >/dev/null 2>&1 || echo "note: could not install libusb-1.0-0"
fi
# The viewer's browser test loads the page in headless Chromium (Debian's package); install it where we may.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "note: could not install chromium: the viewer's browser test skips locally and FAILS on CI (CI=true)"
fi
# Build the compiled CPU kernels now (and CUDA ones where a GPU is present); failures fall back to PyTorch.
"$VENV/bin/mslam-ns" doctor --build || echo "note: kernel build failed; the PyTorch implementations will be used"
touch "$stamp"
