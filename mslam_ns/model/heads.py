"""A MASt3R downstream head: DPT (points + conf) and the catmlp local-feature branch, plus activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mslam_ns.model.ctor import Mast3rConfig
from mslam_ns.model.dpt import DPT
from mslam_ns.model.layers import Mlp


def _conf_act(x: Tensor, mode: tuple[str, float, float]) -> Tensor:
    name, vmin, vmax = mode
    if name == "exp":
        return vmin + x.exp().clip(max=vmax - vmin)
    if name == "sigmoid":
        return (vmax - vmin) * torch.sigmoid(x) + vmin
    raise ValueError(f"unsupported confidence mode {mode!r}")


def _depth_act(xyz: Tensor, mode: tuple[str, float, float]) -> Tensor:  # [..., 3]
    name = mode[0]
    if name == "linear":
        return xyz
    d = xyz.norm(dim=-1, keepdim=True)
    xyz = xyz / d.clip(min=1e-8)
    if name == "square":
        return xyz * d.square()
    if name == "exp":
        return xyz * torch.expm1(d)
    raise ValueError(f"unsupported depth mode {mode!r}")


def postprocess(raw: Tensor, cfg: Mast3rConfig) -> dict[str, Tensor]:
    """raw [B, 4 + F + two_confs, H, W] -> pts3d [B,H,W,3], conf [B,H,W], desc [B,H,W,F], desc_conf [B,H,W]."""
    fmap = raw.permute(0, 2, 3, 1)  # [B, H, W, ch] (a view)
    nf = cfg.local_feat_dim
    out = {"pts3d": _depth_act(fmap[..., 0:3], cfg.depth_mode), "conf": _conf_act(fmap[..., 3], cfg.conf_mode)}
    desc = fmap[..., 4 : 4 + nf]
    out["desc"] = desc / desc.norm(dim=-1, keepdim=True)  # no epsilon, as the official head
    if cfg.two_confs:
        out["desc_conf"] = _conf_act(fmap[..., 4 + nf], cfg.desc_conf_mode)
    else:
        out["desc_conf"] = out["conf"].clone()
    return out


class Mast3rHead(nn.Module):
    """``downstream_head{1,2}``: ``dpt`` over hooked tokens and ``head_local_features`` over concat(enc, dec_L)."""

    def __init__(self, cfg: Mast3rConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ed, dd = cfg.enc_embed_dim, cfg.dec_embed_dim
        self.dpt = DPT(cfg.dpt_hooks, (ed, dd, dd, dd), num_channels=4)
        idim = ed + dd
        self.local_out = cfg.local_feat_dim + int(cfg.two_confs)
        self.head_local_features = Mlp(idim, int(cfg.hidden_dim_factor * idim), self.local_out * cfg.patch_size**2)

    def raw(self, tokens: list[Tensor], hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """-> (dpt_raw [B, 4, H, W], local_raw [B, N, (F+1)*p*p]) before activations."""
        p = self.cfg.patch_size
        grid = (hw[0] // p, hw[1] // p)
        dpt = self.dpt(tokens, grid)
        local = self.head_local_features(torch.cat((tokens[0], tokens[-1]), dim=-1))
        return dpt, local

    def forward(self, tokens: list[Tensor], hw: tuple[int, int]) -> dict[str, Tensor]:
        """tokens: [enc, dec_1, ..., dec_L (dec_norm'ed)], each [B, N, C]; hw = (H, W) of the image."""
        p = self.cfg.patch_size
        H, W = hw
        dpt, local = self.raw(tokens, hw)
        B = local.shape[0]
        local = F.pixel_shuffle(local.transpose(1, 2).reshape(B, -1, H // p, W // p), p)  # [B, F+1, H, W]
        return postprocess(torch.cat((dpt, local), dim=1), self.cfg)
