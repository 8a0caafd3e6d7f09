"""Make any call into gsplat's CUDA-backed functions fail at once instead of starting a ~30 minute JIT build.

gsplat 1.4 loads its CUDA code lazily: the first call of a CUDA-backed function imports
``gsplat.cuda._backend``, which (when nvcc is on PATH and no build is cached) compiles all of gsplat's CUDA
sources. `forbid_gsplat_cuda` puts a stand-in module under that name, so such a call raises
`GsplatCudaForbidden` immediately. gsplat's pure-PyTorch pieces (``gsplat.cuda._torch_impl``) and its
strategies' tensor bookkeeping do not import the backend and keep working.

The CPU model path installs it (a CPU run never wants that build), and the tests install it before
touching gsplat.
"""

from __future__ import annotations

import sys
import types

__all__ = ["GsplatCudaForbidden", "forbid_gsplat_cuda", "gsplat_cuda_forbidden"]

_BACKEND = "gsplat.cuda._backend"


class GsplatCudaForbidden(RuntimeError):
    """A gsplat CUDA-backed function was called where only the CPU rasteriser may run."""


class _ForbiddenBackend(types.ModuleType):
    def __getattr__(self, name: str):  # called for every attribute the module does not have, e.g. `_C`
        if name.startswith("__"):
            raise AttributeError(name)
        raise GsplatCudaForbidden(
            f"gsplat CUDA backend requested ({name!r}) on a CPU path; mslam_ns's CPU rasteriser must be used "
            "(the call would start a ~30 minute JIT build of gsplat's CUDA code)"
        )


def forbid_gsplat_cuda() -> bool:
    """Install the stand-in backend; return False (and change nothing) if the real backend is already loaded."""
    mod = sys.modules.get(_BACKEND)
    if mod is not None and not isinstance(mod, _ForbiddenBackend):
        return False
    sys.modules[_BACKEND] = _ForbiddenBackend(_BACKEND)
    return True


def gsplat_cuda_forbidden() -> bool:
    """True when the stand-in backend is installed."""
    return isinstance(sys.modules.get(_BACKEND), _ForbiddenBackend)
