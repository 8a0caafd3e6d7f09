"""`mslam-ns doctor`: what users paste into bug reports (versions, kernel backends, caches)."""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str] | None:
    """The CPU's bfloat16 instruction flags (avx512_bf16, amx_bf16) from `cpuinfo`; None where it is unreadable
    (not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    return [x for x in ("avx512_bf16", "amx_bf16") if x in flags]


def doctor(build: bool = False, cuda_compile_check: bool = False) -> int:
    """Print versions, which kernel backend each op uses on each device, and where caches live.

    Args:
        build: Build the compiled kernels now (CPU; CUDA too when a GPU is present).
        cuda_compile_check: Compile (without linking or running) every CUDA source with nvcc.
    """
    import torch

    from mslam_ns import __version__
    from mslam_ns.cuda import _backend

    lines = [
        f"mslam_ns     {__version__}",
        f"python       {sys.version.split()[0]} ({platform.platform()})",
        f"torch        {torch.__version__} (CUDA build {torch.version.cuda}, "
        f"device available: {torch.cuda.is_available()}, threads {torch.get_num_threads()})",
    ]
    if torch.cuda.is_available():
        lines.append(f"gpu          {torch.cuda.get_device_name(0)}")
    for pkg in ("nerfstudio", "gsplat", "numpy", "pillow", "tyro", "av", "viser"):
        lines.append(f"{pkg:<12} {_version(pkg)}")
    cuda_home = _backend.find_cuda_home()
    lines.append(f"nvcc         {cuda_home / 'bin' / 'nvcc' if cuda_home else 'not found'}")
    bf16 = cpu_bf16_flags()
    if bf16 is None:
        lines.append("cpu bf16     unknown (no /proc/cpuinfo)")
    elif bf16:
        lines.append(f"cpu bf16     {', '.join(bf16)}: --precision bf16 runs the network faster on this CPU")
    else:
        lines.append("cpu bf16     none: --precision bf16 would be slower on this CPU (keep fp32)")
    lines.append(f"kernel mode  {_backend.kernel_mode()} (MSLAM_NS_KERNELS)")
    lines.append(f"cache        {_backend.cache_root()} (MSLAM_NS_CACHE)")
    from mslam_ns.model import weights

    ckpt_dir = weights.checkpoint_dir()
    cached = [name for name, entry in weights.WEIGHTS.items() if weights.is_cached(entry)]
    lines.append(f"checkpoints  {ckpt_dir} (MSLAM_NS_CHECKPOINTS); cached: {', '.join(cached) or 'none'}")
    print("\n".join(lines))
    failed = False
    if build:
        print("building kernels ...")
        for key, res in _backend.build_all().items():
            print(f"  {key:<14} {res}")
            failed |= res != "ok"
    status = _backend.status()
    print("kernels:")
    for key, res in status.items():
        name, dev = key.split("/")
        use = "compiled" if res == "built" else "pytorch twin"
        if dev == "cuda" and not torch.cuda.is_available():
            use = "n/a (no CUDA device)"
        print(f"  {key:<14} {res:<40} -> {use}")
    if cuda_compile_check:
        print("nvcc compile check:")
        for src, res in _backend.nvcc_compile_check().items():
            print(f"  {src:<28} {res if res == 'ok' else 'FAILED'}")
            if res != "ok":
                print(res)
                failed = True
    return 1 if failed else 0
