"""ImageTransform: pixel and intrinsics maps between a source image and its resized + cropped network image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mslam_ns.geometry.image_transform import ImageTransform

# 700x450 -> 512x329 -> crop rows 4..324 (the official pre-processing of a 700x450 image), and an upscale
# with a crop on both axes and unequal axis scales.
TRANSFORMS = [
    ImageTransform((700, 450), (512, 329), (0, 4, 512, 324)),
    ImageTransform((300, 200), (451, 301), (9, 6, 441, 294)),
]


@pytest.mark.parametrize("tf", TRANSFORMS)
def test_pixel_round_trip_numpy_and_torch(tf: ImageTransform) -> None:
    rng = np.random.default_rng(0)
    uv = rng.uniform(-0.5, 600, size=(5, 7, 2))  # [5, 7, 2] float64
    np.testing.assert_allclose(tf.to_original(tf.to_network(uv)), uv, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tf.to_network(tf.to_original(uv)), uv, rtol=0, atol=1e-12)
    t = torch.from_numpy(uv)
    out = tf.to_network(t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), tf.to_network(uv), rtol=0, atol=1e-12)
    t32 = t.float()
    assert tf.to_original(t32).dtype == torch.float32
    assert tf.to_network(np.array([[1, 2]])).dtype == np.float64  # integer pixels -> float64


def test_pixel_centre_convention_matches_pillow() -> None:
    # A linear intensity ramp resampled by Pillow's bilinear filter stays exactly linear in the interior when
    # the filter's sampled weights are symmetric (any upscale; integer downscale factors), so each output
    # pixel's value tells where its centre lies in the source image.
    for src_wh, out_wh in (((96, 60), (32, 20)), ((40, 30), (131, 97)), ((50, 40), (50, 150))):
        u, v = np.meshgrid(np.arange(src_wh[0]), np.arange(src_wh[1]))
        img_u = Image.fromarray((u * 1.0).astype(np.float32), mode="F").resize(out_wh, Image.Resampling.BILINEAR)
        img_v = Image.fromarray((v * 1.0).astype(np.float32), mode="F").resize(out_wh, Image.Resampling.BILINEAR)
        crop = (3, 2, out_wh[0] - 4, out_wh[1] - 3)
        tf = ImageTransform(src_wh, out_wh, crop)
        val_u = np.asarray(img_u)[crop[1] : crop[3], crop[0] : crop[2]]
        val_v = np.asarray(img_v)[crop[1] : crop[3], crop[0] : crop[2]]
        W, H = tf.network_size
        assert val_u.shape == (H, W)
        i, j = np.meshgrid(np.arange(W), np.arange(H))
        src = tf.to_original(np.stack([i, j], -1).astype(np.float64))  # [H, W, 2]
        inner = (src[..., 0] > 2) & (src[..., 0] < src_wh[0] - 3) & (src[..., 1] > 2) & (src[..., 1] < src_wh[1] - 3)
        assert inner.sum() > 100
        np.testing.assert_allclose(val_u[inner], src[..., 0][inner], atol=1e-3)
        np.testing.assert_allclose(val_v[inner], src[..., 1][inner], atol=1e-3)


def _project(K: np.ndarray, X: np.ndarray) -> np.ndarray:  # K [3, 3], X [N, 3] -> [N, 2]
    x = X @ K.T
    return x[:, :2] / x[:, 2:]


@pytest.mark.parametrize("tf", TRANSFORMS)
def test_intrinsics_map_agrees_with_pixel_map(tf: ImageTransform) -> None:
    rng = np.random.default_rng(1)
    K = np.array([[610.0, 1.5, 349.2], [0.0, 605.0, 226.1], [0.0, 0.0, 1.0]])  # with a little skew
    X = np.concatenate([rng.uniform(-2, 2, (50, 2)), rng.uniform(1, 6, (50, 1))], axis=1)  # [50, 3]
    K_net = tf.K_to_network(K)
    np.testing.assert_allclose(_project(K_net, X), tf.to_network(_project(K, X)), rtol=0, atol=1e-9)
    np.testing.assert_allclose(tf.K_to_original(K_net), K, rtol=0, atol=1e-9)
    np.testing.assert_allclose(_project(tf.K_to_original(K_net), X), _project(K, X), rtol=0, atol=1e-9)
    # batched, torch
    Kb = torch.from_numpy(np.stack([K, 2 * K]))  # [2, 3, 3]
    Kb[1, 2] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    out = tf.K_to_network(Kb)
    assert out.shape == (2, 3, 3) and out.dtype == torch.float64
    np.testing.assert_allclose(out[0].numpy(), K_net, rtol=0, atol=1e-12)
    assert tf.K_to_network(Kb.float()).dtype == torch.float32


def test_sizes_identity_and_validation() -> None:
    tf = TRANSFORMS[0]
    assert tf.network_size == (512, 320)
    assert tf.scale == (512 / 700, 329 / 450)
    ident = ImageTransform.identity(64, 48)
    uv = np.array([[0.0, 0.0], [63.5, 47.25]])
    np.testing.assert_array_equal(ident.to_network(uv), uv)
    np.testing.assert_array_equal(ident.K_to_network(np.eye(3)), np.eye(3))
    with pytest.raises(ValueError, match="empty crop"):
        ImageTransform((10, 10), (10, 10), (5, 0, 5, 10))
    with pytest.raises(ValueError, match="positive"):
        ImageTransform((0, 10), (10, 10), (0, 0, 10, 10))
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        tf.to_network(np.zeros((4, 3)))


def test_json_round_trip() -> None:
    for tf in TRANSFORMS:
        d = json.loads(json.dumps(tf.to_dict()))
        back = ImageTransform.from_dict(d)
        assert back == tf and back.to_dict() == tf.to_dict()
        assert ImageTransform.from_json(tf.to_json()) == tf
    with pytest.raises(ValueError, match="bad dict"):
        ImageTransform.from_dict({"source_size": [1, 2]})
