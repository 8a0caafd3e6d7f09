"""The DPT branch of each MASt3R head: 4 hooked token maps -> 3D points + confidence logit per pixel.

Attribute names mirror the official state_dict (``act_postprocess``, ``scratch.layer{k}_rn`` aliased as
``scratch.layer_rn.{k-1}``, ``scratch.refinenet{1..4}.resConfUnit{1,2}.conv{1,2}``, ``out_conv``, ``head``).
All bilinear upsamplings use align_corners=True; refinenet4's output is cropped to layer 3's size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

#: hard-coded by the official head factory, whatever the encoder/decoder sizes
LAYER_DIMS = (96, 192, 384, 768)
FEATURE_DIM = 256
LAST_DIM = 128
#: align_corners of every bilinear upsampling (docs/network.md pitfall 6)
ALIGN_CORNERS = True


def _up2(x: Tensor) -> Tensor:  # [B, C, h, w] -> [B, C, 2h, 2w]
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=ALIGN_CORNERS)


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

    def forward(self, tokens: list[Tensor], grid: tuple[int, int]) -> Tensor:
        """tokens: [enc [B,N,C0], dec_1..dec_L [B,N,C]]; grid = (H/16, W/16) -> [B, num_channels, H, W]."""
        gh, gw = grid
        layers = []
        for i, hook in enumerate(self.hooks):
            t = tokens[hook]  # [B, N, C]
            fmap = t.transpose(1, 2).unflatten(2, (gh, gw))  # [B, C, gh, gw]
            layers.append(self.scratch.layer_rn[i](self.act_postprocess[i](fmap)))
        s = self.scratch
        p4 = s.refinenet4(layers[3])[:, :, : layers[2].shape[2], : layers[2].shape[3]]
        p3 = s.refinenet3(p4, layers[2])
        p2 = s.refinenet2(p3, layers[1])
        p1 = s.refinenet1(p2, layers[0])
        return self.head(p1)
