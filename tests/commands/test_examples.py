"""Every script in examples/ runs (small synthetic inputs, oracle prior)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _run(name: str, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def seq(tmp_path_factory) -> Path:
    from mslam_ns.io.synthetic import generate_sequence

    return generate_sequence(tmp_path_factory.mktemp("ex") / "seq", 16, 160, 120, seed=4)


def test_every_example_has_a_test():
    tested = {"python_api.py", "export_and_train.py", "evaluate_ground_truth.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_python_api(seq):
    r = _run("python_api.py", str(seq), "--prior", "oracle", "--img-size", "128")
    assert "16 frames" in r.stdout and "intrinsics" in r.stdout


def test_export_and_train(seq, tmp_path):
    pytest.importorskip("nerfstudio")
    r = _run("export_and_train.py", str(seq), str(tmp_path / "w"), "--prior", "oracle", "--img-size", "128")
    meta = json.loads((tmp_path / "w" / "nerfstudio" / "transforms.json").read_text())
    assert len(meta["frames"]) == 16 and "ns-train splatfacto" in r.stdout


def test_evaluate_ground_truth(tmp_path):
    r = _run(
        "evaluate_ground_truth.py", str(tmp_path / "w"), "--frames", "16", "--size", "160", "120", "--img-size", "128"
    )
    assert "ATE RMSE" in r.stdout
    from mslam_ns.io.rundir import RunDir

    assert RunDir(tmp_path / "w" / "run").read_eval()["all_frames"]["n_matched"] == 16
