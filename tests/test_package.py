"""Package-level guarantees: cheap import, no nerfstudio/CUDA/compilation at import, a working CLI."""

import subprocess
import sys

import pytest


def _run_py(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_is_light():
    # importing the package (and its SLAM-facing subpackages) must not pull nerfstudio, compile or touch CUDA
    code = (
        "import sys, mslam_ns, mslam_ns.config, mslam_ns.prior, mslam_ns.cuda, mslam_ns.cuda._backend as b\n"
        "print('nerfstudio' in sys.modules, 'torch.utils.cpp_extension' in sys.modules, b._loaded == {})"
    )
    assert _run_py(code) == "False False True"


def test_import_does_not_import_torch_eagerly():
    assert _run_py("import sys, mslam_ns; print('torch' in sys.modules)") == "False"


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "mslam_ns.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("run", "demo", "eval", "doctor", "download", "synth", "infer"):
        assert name in out.stdout


def test_doctor_reports_versions_and_kernels():
    out = subprocess.run([sys.executable, "-m", "mslam_ns.cli", "doctor"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch" in out.stdout and "kernels:" in out.stdout
    assert "matching/cpu" in out.stdout and "gn/cpu" in out.stdout
    assert "cpu bf16" in out.stdout


def test_doctor_reads_the_cpus_bf16_flags(tmp_path):
    from mslam_ns.doctor import cpu_bf16_flags

    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 f16c\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_bf16_flags(str(f)) == ["avx512_bf16"]
    f.write_text("flags\t\t: fpu avx2 amx_bf16 amx_tile avx512_bf16\n")
    assert cpu_bf16_flags(str(f)) == ["avx512_bf16", "amx_bf16"]
    f.write_text("flags\t\t: fpu sse2 avx2 fma\n")
    assert cpu_bf16_flags(str(f)) == []
    assert cpu_bf16_flags(str(tmp_path / "missing")) is None


def test_kernel_mode_rejects_garbage(monkeypatch):
    from mslam_ns.cuda import _backend

    monkeypatch.setenv("MSLAM_NS_KERNELS", "fast")
    with pytest.raises(ValueError, match="MSLAM_NS_KERNELS"):
        _backend.kernel_mode()
