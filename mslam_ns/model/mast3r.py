"""The MASt3R two-view network: ViT encoder, two cross-attending decoder stacks, two heads.

``encode`` runs once per image; ``decode`` runs per ordered pair on cached encodings. Parameter names
mirror the official state_dict so an official checkpoint loads with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mslam_ns.model.blocks import DecoderBlock, EncoderBlock
from mslam_ns.model.ctor import Mast3rConfig
from mslam_ns.model.heads import Mast3rHead
from mslam_ns.model.layers import grid_positions, grid_rope_tables, layer_norm, tables_for

Result = dict[str, Tensor]
"""pts3d [B,H,W,3], conf [B,H,W], desc [B,H,W,F], desc_conf [B,H,W]."""


class PatchEmbed(nn.Module):
    """16x16/16 conv, tokens flattened row-major (y outer, x inner); no norm, no positional embedding."""

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, img: Tensor) -> Tensor:  # [B, 3, H, W] -> [B, N, C]
        H, W = img.shape[-2:]
        if H % self.patch or W % self.patch:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {self.patch}")
        return self.proj(img).flatten(2).transpose(1, 2)


class Mast3rNet(nn.Module):
    """MASt3R (catmlp+dpt, RoPE) for inference."""

    def __init__(self, cfg: Mast3rConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ed, dd = cfg.enc_embed_dim, cfg.dec_embed_dim
        self.patch_embed = PatchEmbed(ed, cfg.patch_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))  # training-only; kept for strict loading
        self.enc_blocks = nn.ModuleList(
            [EncoderBlock(ed, cfg.enc_num_heads, cfg.mlp_ratio) for _ in range(cfg.enc_depth)]
        )
        self.enc_norm = layer_norm(ed)
        self.decoder_embed = nn.Linear(ed, dd)
        self.dec_blocks = nn.ModuleList(
            [DecoderBlock(dd, cfg.dec_num_heads, cfg.mlp_ratio, cfg.norm_im2_in_dec) for _ in range(cfg.dec_depth)]
        )
        self.dec_blocks2 = nn.ModuleList(
            [DecoderBlock(dd, cfg.dec_num_heads, cfg.mlp_ratio, cfg.norm_im2_in_dec) for _ in range(cfg.dec_depth)]
        )
        self.dec_norm = layer_norm(dd)
        self.downstream_head1 = Mast3rHead(cfg)
        self.downstream_head2 = Mast3rHead(cfg)

    def optimise_layout_(self) -> Mast3rNet:
        """Store the DPT conv weights channels-last (the hooked token maps already are): no layout
        conversions inside the convolutions. Call after loading weights; returns self."""
        for head in (self.downstream_head1, self.downstream_head2):
            head.dpt.to(memory_format=torch.channels_last)
        return self

    # ------------------------------------------------------------------------------------------ encoder
    def encode(self, img: Tensor, trace: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """img [B, 3, H, W] in [-1, 1] -> (feat [B, N, C_enc] after enc_norm, pos [B, N, 2] int64 (y, x)).

        If ``trace`` is a dict, intermediates are stored in it: ``patch_embed`` [B,N,C], ``blocks_out``
        [depth, B, N, C] (before enc_norm).
        """
        cfg = self.cfg
        B, _, H, W = img.shape
        gh, gw = H // cfg.patch_size, W // cfg.patch_size
        x = self.patch_embed(img)
        pos = grid_positions(gh, gw, B, img.device).contiguous()
        rope = grid_rope_tables(
            gh, gw, cfg.enc_embed_dim // cfg.enc_num_heads, cfg.rope_freq, cfg.rope_f0, x.device, x.dtype
        )
        if trace is not None:
            trace["patch_embed"] = x
            outs = []
        for blk in self.enc_blocks:
            x = blk(x, rope)
            if trace is not None:
                outs.append(x)
        if trace is not None:
            trace["blocks_out"] = torch.stack(outs)
        return self.enc_norm(x), pos

    # ------------------------------------------------------------------------------------------ decoder
    def decode_tokens(
        self,
        feat1: Tensor,
        pos1: Tensor,
        feat2: Tensor,
        pos2: Tensor,
        grid: tuple[int, int],
        trace: dict[str, Tensor] | None = None,
        keep: frozenset[int] | None = None,
    ) -> tuple[list[Tensor | None], list[Tensor | None]]:
        """Run both decoder stacks in parallel (layer i of each reads layer i-1 of both).

        feat*: [B, N, C_enc], pos*: [B, N, 2]. Returns the head inputs per view:
        [enc (C_enc), dec_1, ..., dec_L (dec_norm'ed)], each [B, N, C]. With ``keep`` (layer indices,
        1..L), the other decoder layers are None in the lists (and freed as soon as the next one exists);
        dec_L is always kept.
        """
        if feat1 is feat2:
            f1 = f2 = self.decoder_embed(feat1)
        else:
            f1, f2 = self.decoder_embed(feat1), self.decoder_embed(feat2)
        if trace is not None:
            trace["embed1"], trace["embed2"] = f1, f2
        out1, out2 = self._run_decoder(f1, f2, pos1, pos2, grid, keep)
        return [feat1, *out1], [feat2, *out2]

    def _run_decoder(
        self,
        f1: Tensor,
        f2: Tensor,
        pos1: Tensor,
        pos2: Tensor,
        grid: tuple[int, int],
        keep: frozenset[int] | None,
    ) -> tuple[list[Tensor | None], list[Tensor | None]]:
        """Decoder embeddings f* [B, N, C_dec] -> ([dec_1, ..., dec_L], same for view 2); None where not kept."""
        cfg = self.cfg
        hd = cfg.dec_embed_dim // cfg.dec_num_heads
        r1 = tables_for(pos1, grid, hd, cfg.rope_freq, cfg.rope_f0, f1.dtype)
        r2 = r1 if pos2 is pos1 else tables_for(pos2, grid, hd, cfg.rope_freq, cfg.rope_f0, f2.dtype)
        out1: list[Tensor | None] = []
        out2: list[Tensor | None] = []
        for i, (blk1, blk2) in enumerate(zip(self.dec_blocks, self.dec_blocks2), start=1):
            f1, f2 = blk1(f1, f2, r1, r2), blk2(f2, f1, r2, r1)
            kept = keep is None or i in keep
            out1.append(f1 if kept else None)
            out2.append(f2 if kept else None)
        out1[-1], out2[-1] = self.dec_norm(f1), self.dec_norm(f2)
        return out1, out2

    def head_layers(self) -> frozenset[int]:
        """Decoder layers (1..L) the heads read: the DPT hooks and dec_L."""
        return frozenset(h for h in (*self.cfg.dpt_hooks, self.cfg.dec_depth) if h > 0)

    def decode(
        self, feat1: Tensor, pos1: Tensor, feat2: Tensor, pos2: Tensor, shape: tuple[int, int]
    ) -> tuple[Result, Result]:
        """Asymmetric pass, image 1 as view 1: (res1 = X^1_1 from head 1, res2 = X^2_1 from head 2).

        feat*: [B, N, C_enc], pos*: [B, N, 2], shape = (H, W) of the images. Only the decoder layers the
        heads read are kept, and each is freed as soon as its head no longer needs it.
        """
        H, W = shape
        p = self.cfg.patch_size
        d1, d2 = self.decode_tokens(feat1, pos1, feat2, pos2, (H // p, W // p), keep=self.head_layers())
        res1 = self.downstream_head1(d1, (H, W), consume=True)
        return res1, self.downstream_head2(d2, (H, W), consume=True)

    def decode_symmetric(
        self, feat_i: Tensor, pos_i: Tensor, feat_j: Tensor, pos_j: Tensor, shape: tuple[int, int]
    ) -> tuple[tuple[Result, Result], tuple[Result, Result]]:
        """Both orderings as ONE batched decoder call: ((res_ii, res_ji), (res_jj, res_ij)).

        feat_*: [B, N, C_enc] (results keep batch B per ordering). The decoder runs on the batch of both
        orderings and each head runs once on that batch (the batching gain); only the decoder layers the heads
        read are kept, each head processes its large maps one sample at a time (`DPT.forward`) and in
        chunks (`Mast3rHead.local_features`), and each layer is freed as soon as its head no longer needs it.
        """
        H, W = shape
        p = self.cfg.patch_size
        B = feat_i.shape[0]
        e1 = torch.cat((feat_i, feat_j))  # view 1 of (i, j) and of (j, i)
        emb = self.decoder_embed(e1)
        emb2 = torch.cat((emb[B:], emb[:B]))  # decoder_embed is per token: reuse it for the swapped batch
        p1 = torch.cat((pos_i, pos_j))
        p2 = torch.cat((pos_j, pos_i))
        t1, t2 = self._run_decoder(emb, emb2, p1, p2, (H // p, W // p), self.head_layers())
        del emb, emb2
        # each head once on the batch of both orderings (the heads process large maps sample by sample);
        # the heads consume their lists, so each layer is freed as soon as no head needs it any more
        d1, t1 = [e1, *t1], []
        del e1
        r1 = self.downstream_head1(d1, (H, W), consume=True)
        d2, t2 = [torch.cat((feat_j, feat_i)), *t2], []
        r2 = self.downstream_head2(d2, (H, W), consume=True)
        first = {k: v[:B] for k, v in r1.items()}, {k: v[:B] for k, v in r2.items()}
        second = {k: v[B:] for k, v in r1.items()}, {k: v[B:] for k, v in r2.items()}
        return first, second

    def forward(self, img1: Tensor, img2: Tensor) -> tuple[Result, Result]:
        """Convenience: encode both images [B, 3, H, W] and decode the (1, 2) ordering."""
        f1, p1 = self.encode(img1)
        f2, p2 = self.encode(img2)
        return self.decode(f1, p1, f2, p2, (img1.shape[-2], img1.shape[-1]))
