"""How the compiled kernels are built and loaded. The only module that knows about compilers.

Each feature folder (``matching/``, ``gn/``) has one C++ CPU source and one CUDA source that loop over the
same per-element bodies (headers in ``include/`` and in the feature folder, marked ``MSLAM_HD`` for host and
device). They are built with ``torch.utils.cpp_extension.load`` into a cache directory:

* ahead of time by ``mslam-ns doctor --build`` (the README's set-up runs it), or
* on first use, with a one-line message, when no build is cached.

Importing ``mslam_ns`` never compiles. If a build fails (no compiler, no CUDA toolkit), the op falls back to
its PyTorch twin with a one-time warning. ``MSLAM_NS_KERNELS`` forces a choice:
``auto`` (default: compiled if it builds, else twin), ``torch`` (always the twin), ``compiled`` (fail loudly
if the compiled kernel is unavailable; used by tests and benchmarks).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

CUDA_DIR = Path(__file__).resolve().parent
INCLUDE_DIR = CUDA_DIR / "include"


@dataclass(frozen=True)
class Extension:
    """One compiled extension: a CPU build and a CUDA build of the same ops."""

    name: str
    cpu_sources: tuple[str, ...]  # relative to CUDA_DIR
    cuda_sources: tuple[str, ...]  # relative to CUDA_DIR
    headers: tuple[str, ...] = ()  # relative to CUDA_DIR; part of the build hash


# Registry of every extension. Each feature folder owns its own entry.
EXTENSIONS: dict[str, Extension] = {
    "matching": Extension(
        "matching",
        cpu_sources=("matching/matching_cpu.cpp",),
        cuda_sources=("matching/matching_cuda.cu",),
        headers=("include/common.h", "include/checks.h", "matching/matching.h", "matching/matching_checks.h"),
    ),
    "gn": Extension(
        "gn",
        cpu_sources=("gn/gn_cpu.cpp",),
        cuda_sources=("gn/gn_cuda.cu",),
        headers=("include/common.h", "include/checks.h", "include/sim3.h", "gn/gn.h", "gn/gn_checks.h"),
    ),
}

_lock = threading.Lock()
_loaded: dict[tuple[str, str], ModuleType | None] = {}
_errors: dict[tuple[str, str], str] = {}
_warned: set[tuple[str, str]] = set()


def kernel_mode() -> str:
    """'auto', 'torch' or 'compiled' (from MSLAM_NS_KERNELS)."""
    mode = os.environ.get("MSLAM_NS_KERNELS", "auto").strip().lower() or "auto"
    if mode not in ("auto", "torch", "compiled"):
        raise ValueError(f"MSLAM_NS_KERNELS must be auto, torch or compiled, not {mode!r}")
    return mode


def cache_root() -> Path:
    """Root of mslam_ns's caches (kernels, checkpoints): $MSLAM_NS_CACHE or ~/.cache/mslam_ns."""
    env = os.environ.get("MSLAM_NS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mslam_ns"


def find_cuda_home() -> Path | None:
    """The CUDA toolkit directory nvcc belongs to (resolves wrapper scripts and symlinks), or None."""
    candidates: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(os.path.realpath(nvcc)).parent.parent)
    candidates += [Path("/usr/local/cuda")] + sorted(Path("/usr/local").glob("cuda-*"), reverse=True)
    for c in candidates:
        if (c / "bin" / "nvcc").exists() and (c / "include" / "cuda_runtime.h").exists():
            return c
    return None


def _nvidia_wheel_includes() -> list[str]:
    """Include dirs of the `nvidia-*` wheels that a CUDA torch brings (cusparse.h and friends)."""
    out = []
    for p in sys.path:
        root = Path(p) / "nvidia"
        if root.is_dir():
            out += [str(d) for d in sorted(root.glob("*/include")) if d.is_dir()]
    return out


def _build_hash(ext: Extension, device_type: str) -> str:
    h = hashlib.sha256()
    h.update(torch.__version__.encode())
    h.update(device_type.encode())
    if device_type == "cpu":
        h.update(_cpu_signature().encode())
    files = ext.cpu_sources if device_type == "cpu" else ext.cuda_sources
    for rel in sorted(set(files + ext.headers)):
        path = CUDA_DIR / rel
        if path.exists():
            h.update(rel.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def build_dir(name: str, device_type: str) -> Path:
    ext = EXTENSIONS[name]
    return cache_root() / "kernels" / f"{name}_{device_type}_{_build_hash(ext, device_type)}"


def _cpu_flags() -> list[str]:
    # No FMA contraction: the compiled kernels keep the PyTorch twins' rounding. (-march=native was measured:
    # no gain on the GN kernels; the matching kernel picks AVX2 at run time by itself.) No errno from sqrtf:
    # a loop calling it can then vectorise (project_match's first pass); nothing reads errno.
    return ["-O3", "-fopenmp", "-std=c++20", "-ffp-contract=off", "-fno-math-errno"]


def _cpu_signature() -> str:
    """What a CPU build depends on besides its sources."""
    return " ".join(_cpu_flags()) + " " + platform.machine()


def _cuda_flags() -> list[str]:
    return ["-O3", "--use_fast_math", "-std=c++20", "--expt-relaxed-constexpr"]


def _cpp_extension():
    """torch.utils.cpp_extension, imported after pointing CUDA_HOME at the real toolkit.

    torch guesses CUDA_HOME once, at import, from nvcc's location; a wrapper script in /usr/local/bin makes it
    guess /usr/local, which breaks CUDA builds. Resolve it ourselves first.
    """
    if "torch.utils.cpp_extension" not in sys.modules and not os.environ.get("CUDA_HOME"):
        home = find_cuda_home()
        if home is not None:
            os.environ["CUDA_HOME"] = str(home)
    if not torch.cuda.is_available():  # its "No CUDA runtime is found" warning is expected on CPU machines
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    return cpp_extension


def _compile(name: str, device_type: str, verbose: bool = False) -> ModuleType:
    cpp_extension = _cpp_extension()

    ext = EXTENSIONS[name]
    bdir = build_dir(name, device_type)
    bdir.mkdir(parents=True, exist_ok=True)
    module_name = f"mslam_ns_{name}_{device_type}"
    if device_type == "cpu":
        return cpp_extension.load(
            name=module_name,
            sources=[str(CUDA_DIR / s) for s in ext.cpu_sources],
            extra_cflags=_cpu_flags(),
            extra_ldflags=["-fopenmp"],
            extra_include_paths=[str(INCLUDE_DIR), str(CUDA_DIR)],
            build_directory=str(bdir),
            with_cuda=False,
            verbose=verbose,
        )
    if find_cuda_home() is None:
        raise RuntimeError("no CUDA toolkit (nvcc) found; set CUDA_HOME")
    return cpp_extension.load(
        name=module_name,
        sources=[str(CUDA_DIR / s) for s in ext.cuda_sources],
        extra_cflags=["-O3", "-std=c++20"],
        extra_cuda_cflags=_cuda_flags(),
        extra_include_paths=[str(INCLUDE_DIR), str(CUDA_DIR)] + _nvidia_wheel_includes(),
        build_directory=str(bdir),
        with_cuda=True,
        verbose=verbose,
    )


def _prune_stale_builds(name: str, device_type: str) -> None:
    """Remove builds of this extension made from older sources or flags (they are never loaded again)."""
    current = build_dir(name, device_type)
    for d in current.parent.glob(f"{name}_{device_type}_*"):
        if d != current and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)


def _summarise_build_error(e: Exception) -> str:
    """The informative line of a failed build: the first compiler 'error', else the last line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln or "#error" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else type(e).__name__


def _is_built(name: str, device_type: str) -> bool:
    bdir = build_dir(name, device_type)
    return bdir.is_dir() and any(bdir.glob(f"mslam_ns_{name}_{device_type}*.so"))


def load(name: str, device_type: str, *, build: bool = True, verbose: bool = False) -> ModuleType | None:
    """The compiled module of extension `name` for 'cpu' or 'cuda', or None if unavailable.

    Builds on first use (logging one line) unless `build` is False. Never raises for a failed build in
    'auto' mode: the error is remembered (see `status`) and None is returned.
    """
    key = (name, device_type)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        if device_type == "cuda" and not torch.cuda.is_available():
            _errors[key] = "torch has no CUDA device"
            _loaded[key] = None
            return None
        if not build and not _is_built(name, device_type):
            return None
        try:
            if not _is_built(name, device_type):
                log.info("compiling the %s '%s' kernels (once; cached in %s)", device_type, name, cache_root())
            mod = _compile(name, device_type, verbose=verbose)
            _prune_stale_builds(name, device_type)
        except Exception as e:  # noqa: BLE001 - any build failure means "fall back"
            _errors[key] = _summarise_build_error(e)
            _loaded[key] = None
            return None
        _loaded[key] = mod
        return mod


def get(name: str, device: torch.device | str) -> ModuleType | None:
    """The module to use for tensors on `device` under the current MSLAM_NS_KERNELS mode.

    None means: use the PyTorch twin. In 'compiled' mode a missing kernel raises instead.
    """
    device_type = torch.device(device).type
    mode = kernel_mode()
    if mode == "torch":
        return None
    if device_type not in ("cpu", "cuda"):
        return None
    mod = load(name, device_type)
    if mod is None:
        if mode == "compiled":
            raise RuntimeError(
                f"compiled {device_type} '{name}' kernels unavailable: {_errors.get((name, device_type), '?')}"
            )
        key = (name, device_type)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(
                f"mslam_ns: {device_type} '{name}' kernels unavailable "
                f"({_errors.get(key, 'not built')}); using the PyTorch implementation",
                RuntimeWarning,
                stacklevel=3,
            )
    return mod


def build_all(cuda: bool | None = None, verbose: bool = False) -> dict[str, str]:
    """Build every extension for CPU (and CUDA when available). Returns {'name/device': 'ok' | error}."""
    if cuda is None:
        cuda = torch.cuda.is_available()
    out = {}
    for name in EXTENSIONS:
        for dev in ("cpu", "cuda") if cuda else ("cpu",):
            _loaded.pop((name, dev), None)
            mod = load(name, dev, verbose=verbose)
            out[f"{name}/{dev}"] = "ok" if mod is not None else f"FAILED: {_errors.get((name, dev))}"
    return out


def status() -> dict[str, str]:
    """For `mslam-ns doctor`: per extension and device, 'built', 'not built' or the build error."""
    out = {}
    for name in EXTENSIONS:
        for dev in ("cpu", "cuda"):
            key = (name, dev)
            if _loaded.get(key) is not None or _is_built(name, dev):
                out[f"{name}/{dev}"] = "built"
            elif key in _errors:
                out[f"{name}/{dev}"] = f"unavailable: {_errors[key]}"
            else:
                out[f"{name}/{dev}"] = "not built"
    return out


def nvcc_compile_check(arch: str = "sm_80", names: list[str] | None = None, jobs: int = 2) -> dict[str, str]:
    """Compile (not link) every CUDA source with nvcc against torch's headers, without a GPU.

    Used by CI so that a CUDA syntax or template error fails the suite. Returns {source: 'ok' | error}.
    """
    from concurrent.futures import ThreadPoolExecutor

    cpp_extension = _cpp_extension()

    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise RuntimeError("nvcc not found: cannot compile the CUDA sources")
    includes = (
        cpp_extension.include_paths(device_type="cuda")
        if _accepts_device_type()
        else cpp_extension.include_paths(cuda=True)
    )
    includes = list(includes) + [str(INCLUDE_DIR), str(CUDA_DIR), str(cuda_home / "include")]
    includes += _nvidia_wheel_includes()
    import sysconfig

    includes.append(sysconfig.get_paths()["include"])
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    sources = []
    for name in names or list(EXTENSIONS):
        sources += [CUDA_DIR / s for s in EXTENSIONS[name].cuda_sources]

    def one(src: Path) -> tuple[str, str]:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                str(cuda_home / "bin" / "nvcc"),
                "-c",
                str(src),
                "-o",
                str(Path(tmp) / "out.o"),
                f"-arch={arch}",
                "-DTORCH_EXTENSION_NAME=mslam_check",
                "-DTORCH_API_INCLUDE_EXTENSION_H",
                f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
                "-Xcompiler",
                "-fPIC",
            ] + _cuda_flags()
            cmd += [f"-I{p}" for p in includes]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                return str(src.relative_to(CUDA_DIR)), (proc.stderr or proc.stdout).strip()
            return str(src.relative_to(CUDA_DIR)), "ok"

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(pool.map(one, sources))


def _accepts_device_type() -> bool:
    import inspect

    return "device_type" in inspect.signature(_cpp_extension().include_paths).parameters
