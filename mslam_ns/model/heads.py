"""A MASt3R downstream head: DPT (points + conf) and the catmlp local-feature branch, plus activations.

Memory: `Mast3rHead.forward` activates the DPT output as soon as it exists, then runs the local-feature MLP
(`Mast3rHead.local_features`) over chunks of patch rows and groups of output channels, writing straight
into the pixel-shuffled results: neither the MLP's whole raw output, nor the pixel-shuffled local map,
nor the concatenated raw map are ever built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mslam_ns.model.ctor import Mast3rConfig
from mslam_ns.model.dpt import DPT
from mslam_ns.model.layers import Mlp

#: the most bytes of local-feature MLP hidden activations at once (one chunk of patch rows); the ViT-L
#: head has 21 MiB of them per 512x384 image: one chunk per image, two for decode_symmetric's batch of two
LOCAL_CHUNK_BYTES = 24 << 20
#: output channels (of F + 1) of the local-feature MLP's output layer computed at a time
LOCAL_GROUP_CHANNELS = 5


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


def points(dpt_raw: Tensor, cfg: Mast3rConfig) -> dict[str, Tensor]:
    """dpt_raw [B, 4, H, W] -> pts3d [B,H,W,3], conf [B,H,W]."""
    fmap = dpt_raw.permute(0, 2, 3, 1)  # [B, H, W, 4] (a view)
    return {"pts3d": _depth_act(fmap[..., 0:3], cfg.depth_mode), "conf": _conf_act(fmap[..., 3], cfg.conf_mode)}


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

    def forward_unchunked(self, tokens: list[Tensor], hw: tuple[int, int]) -> dict[str, Tensor]:
        """`forward` the plain way (whole local map, pixel shuffle, one concatenated raw map): the reference
        the chunked `forward` is tested against."""
        p = self.cfg.patch_size
        H, W = hw
        dpt, local = self.raw(tokens, hw)
        B = local.shape[0]
        local = F.pixel_shuffle(local.transpose(1, 2).reshape(B, -1, H // p, W // p), p)  # [B, F+1, H, W]
        return postprocess(torch.cat((dpt, local), dim=1), self.cfg)

    def local_features(
        self, enc: Tensor, dec: Tensor, grid: tuple[int, int], chunk_rows: int | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(desc [B,H,W,F] unit norm, desc_conf [B,H,W] or None without two_confs) from enc [B,N,C_enc] and
        dec_L [B,N,C_dec].

        The MLP runs on ``chunk_rows`` patch rows at a time (default: as few even chunks as keep the hidden
        activations within `LOCAL_CHUNK_BYTES`: every chunk reads all MLP weights, 225 MiB for ViT-L, so
        chunks are few and large), its output layer in groups of `LOCAL_GROUP_CHANNELS` output channels
        written straight into the pixel-shuffled results, which are then normalised in place.
        """
        cfg = self.cfg
        mlp = self.head_local_features
        p, nf, nc = cfg.patch_size, cfg.local_feat_dim, self.local_out
        gh, gw = grid
        B = enc.shape[0]
        if chunk_rows is None:
            total = B * gh * gw * mlp.fc1.out_features * enc.element_size()
            chunk_rows = -(-gh // max(1, -(-total // LOCAL_CHUNK_BYTES)))
        desc = desc_conf = None
        for y0 in range(0, gh, chunk_rows):
            y1 = min(y0 + chunk_rows, gh)
            ry, rows = y1 - y0, slice(y0 * gw, y1 * gw)
            h = mlp.hidden(torch.cat((enc[:, rows], dec[:, rows]), dim=-1))  # [B, n, hidden]
            for c0 in range(0, nc, LOCAL_GROUP_CHANNELS):
                c1 = min(c0 + LOCAL_GROUP_CHANNELS, nc)
                cols = slice(c0 * p * p, c1 * p * p)
                y = F.linear(h, mlp.fc2.weight[cols], mlp.fc2.bias[cols])  # [B, n, (c1 - c0)*p*p]
                # pixel shuffle as a view: channel c*p*p + i*p + j of token (y, x) is pixel (y*p + i, x*p + j)
                v = y.view(B, ry, gw, c1 - c0, p, p).permute(0, 1, 4, 2, 5, 3)  # [B, y, i, x, j, c]
                if desc is None:  # float32 under autocast too: normalised and activated in float32
                    desc = y.new_empty(B, gh * p, gw * p, nf, dtype=torch.float32)
                    desc_conf = y.new_empty(B, gh * p, gw * p, dtype=torch.float32) if cfg.two_confs else None
                if c0 < nf:
                    k = min(c1, nf)
                    desc[:, y0 * p : y1 * p].view(B, ry, p, gw, p, nf)[..., c0:k].copy_(v[..., : k - c0])
                if desc_conf is not None and c0 <= nf < c1:
                    conf = _conf_act(v[..., nf - c0].float(), cfg.desc_conf_mode)
                    desc_conf[:, y0 * p : y1 * p].view(B, ry, p, gw, p).copy_(conf)
                del y, v
            del h
            d = desc[:, y0 * p : y1 * p]
            d.div_(d.norm(dim=-1, keepdim=True))  # no epsilon, as the official head
        assert desc is not None
        return desc, desc_conf

    def forward(self, tokens: list[Tensor | None], hw: tuple[int, int], consume: bool = False) -> dict[str, Tensor]:
        """tokens: [enc, dec_1, ..., dec_L (dec_norm'ed)], each [B, N, C] (entries neither a DPT hook nor
        enc / dec_L may be None); hw = (H, W) of the image. ``consume``: empty ``tokens`` as the inputs
        stop being needed (the DPT-only layers once the DPT has run, the rest at the end), so a caller that
        keeps no other reference to them frees them early.

        -> pts3d [B,H,W,3], conf [B,H,W], desc [B,H,W,F], desc_conf [B,H,W] (all contiguous).
        """
        p = self.cfg.patch_size
        grid = (hw[0] // p, hw[1] // p)
        enc, dec = tokens[0], tokens[-1]
        assert enc is not None and dec is not None
        out = points(self.dpt(tokens, grid), self.cfg)  # the raw DPT map is freed here
        if consume:
            tokens.clear()
        out["desc"], desc_conf = self.local_features(enc, dec, grid)
        out["desc_conf"] = desc_conf if desc_conf is not None else out["conf"].clone()
        return out
