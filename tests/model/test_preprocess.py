"""The official MASt3R pre-processing: bit-exact against the fixture made with dust3r's load_images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mslam_ns.errors import UserError
from mslam_ns.model.preprocess import (
    MIN_FRAME_SIDE,
    plan_transform,
    preprocess_image,
    to_network_input,
    to_unit_float,
    true_shape,
)
from tests.model._fixtures import FIXTURE_ROOT

CASES = ["land_640x480", "odd_700x450", "square_500x500", "portrait_300x400"]


FIX = FIXTURE_ROOT / "preprocess"


def _smooth_rgb(w: int, h: int, seed: int = 0) -> np.ndarray:  # [h, w, 3] uint8
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    base = np.stack([np.sin(6 * u) * 0.5 + 0.5, v, (u * v) ** 0.5], -1) * 200 + 20
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------- official fixture
@pytest.mark.parametrize("case", CASES)
def test_bit_exact_with_official_load_images(case: str) -> None:
    expected = np.load(FIX / "expected.npz")
    meta = json.loads((FIX / "meta.json").read_text())["cases"][case]
    src = FIX / f"src_{case}.png"
    u8, tf = preprocess_image(src, size=512)
    assert u8.dtype == np.uint8 and u8.flags.c_contiguous
    np.testing.assert_array_equal(u8, expected[f"{case}.u8"])
    np.testing.assert_array_equal(true_shape(u8), expected[f"{case}.true_shape"])
    assert tf.source_size == tuple(meta["src_wh"])
    assert tf.network_size == (meta["out_hw"][1], meta["out_hw"][0])
    # network input: (u8 / 255 - 0.5) / 0.5 in float32, 1x3xHxW, bit-exact
    x = to_network_input(u8)
    ref = (expected[f"{case}.u8"].astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 3, *u8.shape[:2])
    np.testing.assert_array_equal(x[0].numpy(), ref.transpose(2, 0, 1))
    # the same from a PIL image and from an array
    with Image.open(src) as im:
        np.testing.assert_array_equal(preprocess_image(im)[0], u8)
        np.testing.assert_array_equal(preprocess_image(np.asarray(im.convert("RGB")))[0], u8)


def test_network_input_matches_torchvision() -> None:
    tv = pytest.importorskip("torchvision.transforms")
    u8 = _smooth_rgb(48, 32)
    ref = tv.Compose([tv.ToTensor(), tv.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])(u8)
    assert torch.equal(to_network_input(u8)[0], ref)
    assert torch.equal(to_unit_float(u8), tv.ToTensor()(u8))
    assert torch.equal(to_network_input(torch.from_numpy(u8)), to_network_input(u8))


def test_unit_float_and_range() -> None:
    u8 = np.array([[[0, 128, 255]]], dtype=np.uint8)
    unit = np.float32([0, 128, 255]) / np.float32(255)
    np.testing.assert_array_equal(to_unit_float(u8)[:, 0, 0].numpy(), unit)
    expected = (unit - np.float32(0.5)) / np.float32(0.5)
    np.testing.assert_array_equal(to_network_input(u8)[0, :, 0, 0].numpy(), expected)
    with pytest.raises(ValueError, match="uint8"):
        to_network_input(u8.astype(np.float32))


# ------------------------------------------------------------------------------------------ input kinds
def test_grayscale_alpha_palette_sixteen_bit(tmp_path: Path) -> None:
    rgb = _smooth_rgb(200, 150)
    gray = rgb[..., 1]
    ref_rgb, tf_rgb = preprocess_image(rgb)
    # alpha is dropped (as Pillow's convert("RGB") does), whatever it holds
    rgba = np.concatenate([rgb, np.random.default_rng(3).integers(0, 256, (150, 200, 1), dtype=np.uint8)], -1)
    np.testing.assert_array_equal(preprocess_image(rgba)[0], ref_rgb)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(preprocess_image(tmp_path / "a.png")[0], ref_rgb)
    # grayscale -> three equal channels
    ref_gray = preprocess_image(np.repeat(gray[..., None], 3, -1))[0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    for img in (gray, gray[..., None], tmp_path / "g.png"):
        np.testing.assert_array_equal(preprocess_image(img)[0], ref_gray)
    # 16-bit (PNG "I;16" and uint16 arrays): v * 257 is exactly the 8-bit value v
    g16 = gray.astype(np.uint16) * 257
    Image.fromarray(g16).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    np.testing.assert_array_equal(preprocess_image(tmp_path / "g16.png")[0], ref_gray)
    np.testing.assert_array_equal(preprocess_image(g16)[0], ref_gray)
    np.testing.assert_array_equal(preprocess_image(np.repeat(g16[..., None], 3, -1))[0], ref_gray)
    # palette image -> its colours
    pal = Image.fromarray(rgb).quantize(64)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(
        preprocess_image(tmp_path / "p.png")[0], preprocess_image(np.asarray(pal.convert("RGB")))[0]
    )
    # floats in [0, 1] (MASt3R-SLAM's frames): truncating conversion to uint8
    np.testing.assert_array_equal(preprocess_image((rgb.astype(np.float64) + 0.25) / 255)[0], ref_rgb)
    assert tf_rgb == plan_transform(200, 150)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    rgb = _smooth_rgb(160, 120)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(rgb).save(tmp_path / "rot.png", exif=exif)
    upright = np.rot90(rgb, k=-1)  # what a viewer shows: 120 wide, 160 high
    u8, tf = preprocess_image(tmp_path / "rot.png")
    assert tf.source_size == (120, 160)
    np.testing.assert_array_equal(u8, preprocess_image(np.ascontiguousarray(upright))[0])


def test_bad_files_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.png: no such image file"):
        preprocess_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"bad\.png: cannot read image"):
        preprocess_image(tmp_path / "bad.png")
    Image.fromarray(np.zeros((2, 400, 3), np.uint8)).save(tmp_path / "thin.png")
    with pytest.raises(UserError, match=r"thin\.png: a 400x2 image is too thin"):
        preprocess_image(tmp_path / "thin.png", min_side=1)


def test_frames_below_the_minimum_size_are_refused(tmp_path: Path) -> None:
    """A 16x12 frame would be enlarged 32x: refused with one line naming the file, for files and arrays."""
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(
        UserError,
        match=r"tiny\.png: frames are 16x12 pixels, smaller than the minimum of "
        rf"{MIN_FRAME_SIDE} per side \(the network would see them enlarged 32x\)",
    ):
        preprocess_image(tmp_path / "tiny.png")
    with pytest.raises(ValueError, match="16x12"):  # arrays too (an ImageSizeError is both)
        preprocess_image(np.zeros((12, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=f"31x{MIN_FRAME_SIDE}"):
        plan_transform(31, MIN_FRAME_SIDE)
    assert plan_transform(MIN_FRAME_SIDE, MIN_FRAME_SIDE).network_size == (512, 384)  # the minimum itself is fine


# ---------------------------------------------------------------------------------------- sizes / maps
@pytest.mark.parametrize("size", [512, 384, 256, 160, 400, 96])
@pytest.mark.parametrize("wh", [(640, 480), (700, 450), (500, 500), (300, 400), (1920, 1080), (123, 77)])
def test_any_size_gives_centred_multiples_of_16(size: int, wh: tuple[int, int]) -> None:
    tf = plan_transform(*wh, size=size)
    w, h = tf.network_size
    assert w % 16 == 0 and h % 16 == 0 and 0 < w <= size and 0 < h <= size
    assert max(tf.resized_size) == size
    assert max(w, h) > size - 16
    if wh[0] == wh[1]:
        assert abs(h / w - 0.75) < 16 / w  # square -> 4:3 (landscape)
    x0, y0, x1, y1 = tf.crop_box
    rw, rh = tf.resized_size
    assert abs(x0 - (rw - x1)) <= 1 and abs(y0 - (rh - y1)) <= 1  # centred
    sq = plan_transform(*wh, size=size, square_ok=True)
    if wh[0] == wh[1]:
        assert sq.network_size[0] == sq.network_size[1]


def test_size_224_mode_short_side_and_square_crop() -> None:
    for wh in ((640, 480), (480, 640), (1000, 300), (224, 224)):
        tf = plan_transform(*wh, size=224)
        assert min(tf.resized_size) == 224
        assert tf.network_size == (224, 224)
    u8, tf = preprocess_image(_smooth_rgb(320, 240), size=224)
    assert u8.shape == (224, 224, 3) and tf.resized_size == (299, 224)


def test_transform_matches_pixels() -> None:
    # Ramps R = 4u, G = 6v on a 64x41 source; upscaled x8 (BICUBIC reproduces linear functions in the
    # interior) and cropped 4 rows at the top: each network pixel's value says where it came from.
    u, v = np.meshgrid(np.arange(64), np.arange(41))
    src = np.stack([4 * u, 6 * v, np.zeros_like(u)], -1).astype(np.uint8)
    u8, tf = preprocess_image(src, size=512)
    assert tf.crop_box == (0, 4, 512, 324) and u8.shape == (320, 512, 3)
    i, j = np.meshgrid(np.arange(512), np.arange(320))
    orig = tf.to_original(np.stack([i, j], -1).astype(np.float64))  # [320, 512, 2]
    inner = (orig[..., 0] > 3) & (orig[..., 0] < 60) & (orig[..., 1] > 3) & (orig[..., 1] < 37)
    np.testing.assert_allclose(u8[..., 0][inner], 4 * orig[..., 0][inner], atol=0.6)
    np.testing.assert_allclose(u8[..., 1][inner], 6 * orig[..., 1][inner], atol=0.6)
