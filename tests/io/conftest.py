"""Small helpers shared by the io tests (tiny images written into tmp_path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def save_rgb(path: Path, value: int, size: tuple[int, int] = (8, 6)) -> np.ndarray:
    """Write a [h, w, 3] uint8 image whose pixels encode `value` and their position; return it."""
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = value % 256
    img[..., 1] = np.arange(w)[None, :] * 7 % 256
    img[..., 2] = np.arange(h)[:, None] * 11 % 256
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return img


def save_depth16(path: Path, raw: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(raw, dtype=np.uint16)).save(path)


def assert_one_line_error(exc: BaseException, *needles: str) -> None:
    """A user-facing error: one line, names what it should, no traceback-style text."""
    msg = str(exc)
    assert "\n" not in msg, msg
    assert "Traceback" not in msg and 'File "' not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
