"""The MASt3R retrieval head: encoder tokens -> whitened local features + attention, top-k for ASMK.

Official layout of the retrieval checkpoint: ``{'model': {prewhiten.m, prewhiten.p, [projector.*],
[postwhiten.*]}, 'args': Namespace(prewhiten, hdims, residual, postwhiten, featweights, nfeat, ...)}``.
Whitening runs in float64 (docs/network.md section 7).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mslam_ns.model.checkpoint import CheckpointError, read_checkpoint


class Whitener(nn.Module):
    """x -> (x - m) @ p in float64, cast back to the input dtype."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.zeros(1, dim, dtype=torch.float64))
        self.p = nn.Parameter(torch.eye(dim, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:  # [..., dim]
        return ((x.double() - self.m) @ self.p).to(x.dtype)


@dataclass
class RetrievalOutput:
    feat: Tensor  # [B, N, F] projected (and post-whitened) features
    attn: Tensor  # [B, N] attention = L2 norm of the projector output
    topk_feat: Tensor  # [B, K, F]
    topk_attn: Tensor  # [B, K]
    topk_idx: Tensor  # [B, K] int64
    global_desc: Tensor  # [B, F] L2-normalised attention-weighted sum (weighted SPoC)


class RetrievalHead(nn.Module):
    """Prewhiten -> projector (optional MLP) [+ residual] -> attention -> postwhiten -> top-nfeat."""

    def __init__(
        self, dim: int, prewhiten: bool, hdims: list[int], residual: bool, postwhiten: bool, nfeat: int
    ) -> None:
        super().__init__()
        self.prewhiten: nn.Module = Whitener(dim) if prewhiten else nn.Identity()
        if hdims:
            layers: list[nn.Module] = []
            d = dim
            for h in hdims[:-1]:
                layers += [nn.Linear(d, h), nn.LayerNorm(h), nn.GELU()]
                d = h
            layers.append(nn.Linear(d, hdims[-1]))
            self.projector: nn.Module = nn.Sequential(*layers)
            out_dim = hdims[-1]
        else:
            self.projector = nn.Identity()
            out_dim = dim
        if residual and out_dim != dim:
            raise ValueError("residual retrieval projector needs hdims[-1] == encoder dim")
        self.residual = residual
        self.postwhiten: nn.Module = Whitener(out_dim) if postwhiten else nn.Identity()
        self.nfeat = nfeat

    def forward(self, feat: Tensor) -> RetrievalOutput:  # [B, N, C] encoder tokens after enc_norm
        x = self.prewhiten(feat)
        y = self.projector(x)
        if self.residual:
            y = y + x
        attn = y.norm(dim=-1)  # [B, N]
        y = self.postwhiten(y)
        n = feat.shape[1]
        k = self.nfeat if self.nfeat >= 0 else int(-self.nfeat * n)
        k = max(1, min(k, n))
        topk_attn, idx = torch.topk(attn, k, dim=1)
        topk_feat = torch.gather(y, 1, idx[..., None].expand(-1, -1, y.shape[-1]))
        g = F.normalize((y * attn[..., None]).sum(1), dim=-1)
        return RetrievalOutput(y, attn, topk_feat, topk_attn, idx, g)


def _parse_hdims(h: object) -> list[int]:
    if h is None or h == "":
        return []
    if isinstance(h, (list, tuple)):
        return [int(v) for v in h]
    return [int(v) for v in str(h).split("_") if v]


def load_retrieval(path: str | os.PathLike, dim: int) -> RetrievalHead:
    """Load an official retrieval checkpoint for an encoder of width ``dim``; CheckpointError names the file."""
    ckpt = read_checkpoint(path)
    args = ckpt.get("args")
    sd = ckpt.get("model")
    if args is None or not isinstance(sd, dict):
        raise CheckpointError(f"{path}: not a retrieval checkpoint (needs 'model' and 'args')")
    featweights = getattr(args, "featweights", "l2norm")
    if featweights != "l2norm":
        raise CheckpointError(f"{path}: unsupported retrieval featweights {featweights!r}")
    head = RetrievalHead(
        dim,
        prewhiten=getattr(args, "prewhiten", None) is not None,
        hdims=_parse_hdims(getattr(args, "hdims", "")),
        residual=bool(getattr(args, "residual", False)),
        postwhiten=getattr(args, "postwhiten", None) is not None,
        nfeat=int(getattr(args, "nfeat", 300)),
    )
    sd = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    expected = head.state_dict()
    for k, v in expected.items():
        if k not in sd:
            raise CheckpointError(f"{path}: missing key {k!r}")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: key {k!r} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
    for k in sd:
        if k not in expected:
            raise CheckpointError(f"{path}: unexpected key {k!r}")
    head.load_state_dict(sd, strict=True)
    return head.eval()
