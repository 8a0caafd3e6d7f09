"""CI guard: every CUDA source compiles with nvcc against torch's headers (compile only: no GPU here)."""

import pytest
import torch

from mslam_ns.cuda import _backend

pytestmark = pytest.mark.skipif(
    _backend.find_cuda_home() is None or torch.version.cuda is None,
    reason="needs a CUDA device or toolchain (nvcc and a CUDA build of torch; a compile-only check)",
)


def test_cuda_sources_compile():
    # every source at once, one nvcc per core (each is one long single-threaded host + device compile)
    names = sorted(_backend.EXTENSIONS)
    results = _backend.nvcc_compile_check(arch="sm_80", names=names, jobs=2)
    for name in names:
        sources = _backend.EXTENSIONS[name].cuda_sources  # the keys of results: paths relative to the CUDA dir
        assert sources and set(sources) <= set(results), f"CUDA sources of {name} not compiled: {sources}"
    failed = {src: err for src, err in results.items() if err != "ok"}
    assert not failed, "\n\n".join(f"{src}:\n{err[-3000:]}" for src, err in failed.items())
