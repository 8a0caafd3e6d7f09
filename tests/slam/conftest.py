"""Shared fixtures of the SLAM frontend tests: a small synthetic sequence and the oracle prior."""

from __future__ import annotations

from pathlib import Path

import pytest

SEQ_FRAMES = 30
SEQ_W, SEQ_H = 160, 120
IMG_SIZE = 128  # network image 128 x 96


@pytest.fixture(scope="session")
def synthetic_seq(tmp_path_factory) -> Path:
    """A SEQ_FRAMES-frame synthetic TUM-layout sequence (160x120), generated once per test session."""
    from mslam_ns.io.synthetic import generate_sequence

    return Path(generate_sequence(tmp_path_factory.mktemp("seq") / "seq", SEQ_FRAMES, SEQ_W, SEQ_H, 0))


@pytest.fixture(scope="session")
def synthetic_source(synthetic_seq):
    from mslam_ns.io.sources import open_source

    return open_source(synthetic_seq)
