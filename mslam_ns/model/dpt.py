"""The DPT branch of each MASt3R head: 4 hooked token maps -> 3D points + confidence logit per pixel.

Attribute names mirror the official state_dict (``act_postprocess``, ``scratch.layer{k}_rn`` aliased as
``scratch.layer_rn.{k-1}``, ``scratch.refinenet{1..4}.resConfUnit{1,2}.conv{1,2}``, ``out_conv``, ``head``).
All bilinear upsamplings use align_corners=True; refinenet4's output is cropped to layer 3's size.

Memory: the low-resolution fusion blocks run on the whole batch, everything from H/4 up one sample at a
time, and the two full-resolution stages (refinenet1's upsampling -> ``head.0``, and ``head.1``'s
upsampling -> ``head.2`` -> ReLU -> ``head.4``) in row bands (`conv3x3_on_up2`): the 2x-upsampled maps
(256 ch at H/2 and 128 ch at H, 48 + 96 MiB per 512x384 image) never exist whole, one band at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: hard-coded by the official head factory, whatever the encoder/decoder sizes
LAYER_DIMS = (96, 192, 384, 768)
FEATURE_DIM = 256
LAST_DIM = 128
#: align_corners of every bilinear upsampling (docs/network.md pitfall 6)
ALIGN_CORNERS = True


#: target size in bytes of one row band of an upsampled map in `conv3x3_on_up2` (at least one row a band)
BAND_BYTES = 4 << 20


def _up2(x: Tensor) -> Tensor:  # [B, C, h, w] -> [B, C, 2h, 2w]
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=ALIGN_CORNERS)


def _up2_row_weights(h: int, lo: int, hi: int, pad_top: int, pad_bottom: int) -> tuple[Tensor, int]:
    """(A [pad_top + hi - lo + pad_bottom, m] float32 on the CPU, first): output rows [lo, hi) of a 2x linear
    upsampling of h rows are ``A @ rows[first : first + m]``; the padding rows of A are zero.

    Source positions and weights as ``F.interpolate(scale_factor=2, mode="bilinear")`` computes them.
    """
    o = torch.arange(lo, hi, dtype=torch.float32)
    if ALIGN_CORNERS:
        src = o * ((h - 1) / (2 * h - 1) if h > 1 else 0.0)
    else:
        src = ((o + 0.5) * 0.5 - 0.5).clamp_(min=0.0)
    i0 = src.long().clamp_(max=h - 1)  # src >= 0: truncation is floor
    i1 = (i0 + 1).clamp_(max=h - 1)
    w1 = (src - i0).clamp_(0.0, 1.0)
    first = int(i0[0]) if hi > lo else 0
    A = torch.zeros(pad_top + hi - lo + pad_bottom, int(i1[-1]) - first + 1 if hi > lo else 1)
    r = torch.arange(pad_top, pad_top + hi - lo)
    A.index_put_((r, i0 - first), 1.0 - w1, accumulate=True)
    A.index_put_((r, i1 - first), w1, accumulate=True)
    return A, first


#: `_up2_row_weights` on a device: a band's weights are built and copied there once per run, not per call
#: (no host-to-device copy inside a decode, which a CUDA graph capture could not contain)
_UP2_CACHE: dict[tuple, tuple[Tensor, int]] = {}
_UP2_LOCK = threading.Lock()


def _up2_weights_on(
    h: int, lo: int, hi: int, pad_top: int, pad_bottom: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, int]:
    key = (h, lo, hi, pad_top, pad_bottom, str(device), dtype, ALIGN_CORNERS)
    hit = _UP2_CACHE.get(key)
    if hit is None:
        A, first = _up2_row_weights(h, lo, hi, pad_top, pad_bottom)
        with torch.inference_mode(False):  # a normal tensor: the cache may serve autograd later
            hit = (A.to(device=device, dtype=dtype), first)
        with _UP2_LOCK:
            _UP2_CACHE[key] = hit
    return hit


def up2_rows(x: Tensor, lo: int, hi: int, pad_top: int = 0, pad_bottom: int = 0) -> Tensor:
    """Rows [lo, hi) of ``_up2(x)`` (x [B, C, h, w]) with ``pad_top`` / ``pad_bottom`` zero rows around them:
    [B, C, pad_top + hi - lo + pad_bottom, 2w], channels-last. Equal to slicing ``_up2(x)`` up to rounding.

    Separable: the rows are interpolated by one small matrix product (two weights a row), then the columns
    by ``F.interpolate`` with an identity row mapping (each row weighs 1 x itself + 0 x its neighbour).
    """
    B, C, h, w = x.shape
    A, first = _up2_weights_on(h, lo, hi, pad_top, pad_bottom, x.device, x.dtype)
    src = x.permute(0, 2, 3, 1)[:, first : first + A.shape[1]].reshape(B, A.shape[1], w * C)  # [B, m, w*C]
    rows = torch.matmul(A, src)  # [B, R, w*C]
    rows = rows.view(B, A.shape[0], w, C).permute(0, 3, 1, 2)  # [B, C, R, w] channels-last
    return F.interpolate(rows, size=(A.shape[0], 2 * w), mode="bilinear", align_corners=ALIGN_CORNERS)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type without autocast (meta: FLOP counting)
        return False


def _float32_layer(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)`` in float32 even under autocast: the per-pixel output layer, whose outputs are the
    predictions (in bf16 they would carry its 8-bit mantissa's 0.4% steps). A 1x1 conv: cheap."""
    if x.dtype == torch.float32 and not _autocast_enabled(x.device.type):
        return layer(x)
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.float())


def band_rows(x: Tensor, band_bytes: int | None = None) -> int:
    """Rows of ``_up2(x)`` per band so that one band of it holds about ``band_bytes`` (default BAND_BYTES)."""
    B, C, _, w = x.shape
    per_row = max(1, B * C * 2 * w * x.element_size())
    return max(1, (BAND_BYTES if band_bytes is None else band_bytes) // per_row)


def conv3x3_on_up2(
    x: Tensor, conv: nn.Conv2d, tail: Callable[[Tensor], Tensor] | None = None, rows: int | None = None
) -> Tensor:
    """``tail(conv(_up2(x)))`` computed in bands of ``rows`` output rows (default `band_rows`).

    ``conv`` is a 3x3, stride-1, padding-1 convolution and ``tail`` works per pixel (1x1 convs, activations),
    so each band needs only its rows of the upsampled map plus one halo row on each side (zero rows at the
    image borders: the conv's own padding). x [B, C, h, w] -> [B, C_out, 2h, 2w] channels-last.
    """
    if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.groups != 1:
        raise ValueError("conv3x3_on_up2 needs a 3x3 / stride 1 / padding 1 convolution")
    B, _, h, w = x.shape
    H2, W2 = 2 * h, 2 * w
    step = rows if rows is not None else band_rows(x)
    out: Tensor | None = None
    for r0 in range(0, H2, step):
        r1 = min(r0 + step, H2)
        band = up2_rows(x, max(r0 - 1, 0), min(r1 + 1, H2), int(r0 == 0), int(r1 == H2))
        y = F.conv2d(band, conv.weight, conv.bias, padding=(0, 1))  # [B, C_out, r1 - r0, W2]
        del band
        if tail is not None:
            y = tail(y)
        if out is None:
            out = torch.empty(
                (B, y.shape[1], H2, W2), dtype=y.dtype, device=y.device, memory_format=torch.channels_last
            )
        out[:, :, r0:r1] = y
        del y
    assert out is not None
    return out


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x))))."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # the first ReLU must not touch x (the skip uses the un-activated input); the others work in place
        return self.conv2(F.relu(self.conv1(F.relu(x)), inplace=True)).add_(x)


class FusionBlock(nn.Module):
    """(prev path [+ RCU1(skip)]) -> RCU2 -> x2 bilinear -> 1x1 out_conv.

    The 1x1 ``out_conv`` is applied BEFORE the upsampling: both are linear per pixel and the bilinear
    weights sum to one, so the result is the same up to rounding while the conv runs on 4x fewer pixels.
    """

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(ch)
        self.resConfUnit2 = ResidualConvUnit(ch)
        self.out_conv = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = self.resConfUnit1(skip).add_(x)
        return _up2(self.out_conv(self.resConfUnit2(x)))


class Scratch(nn.Module):
    def __init__(self, in_dims: tuple[int, ...], feat: int) -> None:
        super().__init__()
        self.layer1_rn = nn.Conv2d(in_dims[0], feat, 3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(in_dims[1], feat, 3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(in_dims[2], feat, 3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(in_dims[3], feat, 3, padding=1, bias=False)
        # the official module registers the same convs a second time under this list (8 aliased keys)
        self.layer_rn = nn.ModuleList([self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn])
        self.refinenet1 = FusionBlock(feat)
        self.refinenet2 = FusionBlock(feat)
        self.refinenet3 = FusionBlock(feat)
        self.refinenet4 = FusionBlock(feat)


class _Up2Bilinear(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _up2(x)


class DPT(nn.Module):
    """Dense prediction head over hooks ``hooks`` of [enc, dec_1, ..., dec_L]."""

    def __init__(
        self,
        hooks: tuple[int, ...],
        dim_tokens: tuple[int, ...],
        num_channels: int = 4,
        layer_dims: tuple[int, ...] = LAYER_DIMS,
        feature_dim: int = FEATURE_DIM,
        last_dim: int = LAST_DIM,
    ) -> None:
        super().__init__()
        self.hooks = tuple(hooks)
        ld = layer_dims
        self.act_postprocess = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(dim_tokens[0], ld[0], 1), nn.ConvTranspose2d(ld[0], ld[0], 4, stride=4)),
                nn.Sequential(nn.Conv2d(dim_tokens[1], ld[1], 1), nn.ConvTranspose2d(ld[1], ld[1], 2, stride=2)),
                nn.Sequential(nn.Conv2d(dim_tokens[2], ld[2], 1)),
                nn.Sequential(nn.Conv2d(dim_tokens[3], ld[3], 1), nn.Conv2d(ld[3], ld[3], 3, stride=2, padding=1)),
            ]
        )
        self.scratch = Scratch(tuple(ld), feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1),
            _Up2Bilinear(),
            nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(last_dim, num_channels, 1),
        )

    def _layer(self, i: int, tokens: list[Tensor | None], grid: tuple[int, int], b: slice = slice(None)) -> Tensor:
        t = tokens[self.hooks[i]]  # [B, N, C]
        if t is None:
            raise ValueError(f"DPT hook {self.hooks[i]} missing from the token list")
        fmap = t[b].transpose(1, 2).unflatten(2, grid)  # [B, C, gh, gw] (channels-last strides)
        return self.scratch.layer_rn[i](self.act_postprocess[i](fmap))

    def _fuse(self, k: int, p: Tensor, tokens: list[Tensor | None], grid: tuple[int, int], b: slice) -> Tensor:
        """refinenet{k+1} before its x2 upsampling, with hooked map k of the samples ``b`` as the skip.

        resConfUnit1(skip) + p is computed as conv2(relu(conv1(relu(skip)))) + (skip + p) (the same sum,
        rounded in another order) so that p and skip are one buffer while the convolutions run.
        """
        rn = (self.scratch.refinenet1, self.scratch.refinenet2, self.scratch.refinenet3, self.scratch.refinenet4)[k]
        if k < 3:
            skip = self._layer(k, tokens, grid, b)  # a fresh map: updated in place
            act = F.relu(skip)
            p = skip.add_(p)
            del skip
            rcu = rn.resConfUnit1
            act = F.relu(rcu.conv1(act), inplace=True)
            p = rcu.conv2(act).add_(p)
            del act
        p = rn.resConfUnit2(p)  # every step rebinds p: its input is freed as soon as it has run
        return rn.out_conv(p)

    def forward(self, tokens: list[Tensor | None], grid: tuple[int, int]) -> Tensor:
        """tokens: [enc [B,N,C0], dec_1..dec_L [B,N,C]] (entries not in ``hooks`` may be None);
        grid = (H/16, W/16) -> [B, num_channels, H, W] (channels-last).

        Memory: the low-resolution fusion blocks (refinenet4..2, up to H/8) run on the whole batch; from
        refinenet2's upsampling on (H/4 and up) the batch is processed one sample at a time, the two
        full-resolution stages in row bands (`conv3x3_on_up2`). Each hooked map is projected only when its
        fusion block needs it.
        """
        gh, gw = grid
        every = slice(None)
        p = self._fuse(3, self._layer(3, tokens, grid), tokens, grid, every)
        p = _up2(p)[:, :, :gh, :gw]  # refinenet4's output cropped to layer 3's size (gh x gw)
        p = self._fuse(2, p, tokens, grid, every)
        p = self._fuse(1, _up2(p), tokens, grid, every)  # [B, F, H/8, W/8] before refinenet2's x2
        head = self.head
        out: Tensor | None = None
        for i in range(p.shape[0]):
            b = slice(i, i + 1)
            q = self._fuse(0, _up2(p[b]), tokens, grid, b)
            q = conv3x3_on_up2(q, head[0])  # refinenet1's x2 upsampling -> head.0, in row bands
            q = conv3x3_on_up2(q, head[2], tail=lambda y: _float32_layer(head[4], head[3](y)))  # head.1 -> .4
            if out is None:
                out = torch.empty(
                    (p.shape[0], *q.shape[1:]), dtype=q.dtype, device=q.device, memory_format=torch.channels_last
                )
            out[b] = q
            del q
        assert out is not None
        return out
