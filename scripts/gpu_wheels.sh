#!/usr/bin/env bash
# Fetch, HERE (where pip reaches a registry), what the GPU machine lacks for keyframe retrieval, into .whl/
# (git-ignored), for scripts/gpu_check.sh to install there from that folder without a registry:
#   asmk (source: it builds a small Cython extension, which gpu_check.sh compiles there with that machine's
#   Python, Cython and compiler), faiss-cpu (an abi3 wheel, any CPython >= 3.10) and pyaml (pure Python).
# The GPU machine's python3 is CPython 3.12 on x86-64 with numpy, PyYAML, Cython and setuptools already there.
# Then name .whl in the device call's carry:  bash scripts/gpu_wheels.sh  (about 19 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
rm -f .whl/*
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "faiss-cpu==1.15.1" "pyaml>=23"
$PY -m pip download -q --no-deps --no-binary=asmk -d .whl "asmk==0.1.1"
ls -l .whl
