"""Transformer building blocks of MASt3R: LayerNorm, MLP, 2D RoPE, self- and cross-attention.

Module attribute names mirror the official state_dict keys (``qkv``, ``proj``, ``projq``/``projk``/``projv``,
``fc1``/``fc2``) so checkpoints load with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: LayerNorm epsilon of every encoder/decoder norm (docs/network.md pitfall 2: NOT PyTorch's default 1e-5)
LN_EPS = 1e-6
#: GELU flavour of every MLP (docs/network.md pitfall 3: the exact erf form, not "tanh")
GELU_APPROX = "none"


def layer_norm(dim: int) -> nn.LayerNorm:
    """Affine LayerNorm with the network's epsilon."""
    return nn.LayerNorm(dim, eps=LN_EPS)


class Mlp(nn.Module):
    """Linear -> GELU (erf) -> Linear."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, in_dim if out_dim is None else out_dim)

    def hidden(self, x: Tensor) -> Tensor:  # [..., in_dim] -> [..., hidden_dim]: GELU(fc1(x))
        h = self.fc1(x)
        if torch.is_grad_enabled():  # autograd needs GELU's input
            return F.gelu(h, approximate=GELU_APPROX)
        # inference: GELU in place (the same kernel, bit-identical): one hidden-size buffer instead of two
        return torch.ops.aten.gelu_(h, approximate=GELU_APPROX)

    def forward(self, x: Tensor) -> Tensor:  # [..., in_dim] -> [..., out_dim]
        return self.fc2(self.hidden(x))


# --------------------------------------------------------------------------------------------------- RoPE
class RopeTables:
    """cos / signed-sin tables of the 2D rotary embedding for one set of token positions.

    For a head vector of size d split into quarters [a, b, c, d] (a, b: y half; c, d: x half), rotate-half
    RoPE is ``t * cos + swap(t) * sin_signed`` with ``swap(t) = [b, a, d, c]`` and
    ``sin_signed = [-sin_y, sin_y, -sin_x, sin_x]``: the same products as the official
    ``t * cos + cat(-t2, t1) * sin`` (negation is exact), computed once per grid and shared by every block.
    """

    def __init__(self, cos: Tensor, sin: Tensor) -> None:
        self.cos = cos  # [N, d] (shared by the batch) or [B, N, d]
        self.sin = sin  # same shape as cos, sign pattern folded in

    def apply(self, t: Tensor) -> Tensor:
        """Rotate ``t`` [B, N, *heads, d] (token-major: applied before the heads are moved forward)."""
        d = t.shape[-1]
        extra = t.ndim - 3  # head axes between the token axis and the channel axis
        shape = (*self.cos.shape[:-1], *([1] * extra), d)
        cos, sin = self.cos.view(shape), self.sin.view(shape)
        swapped = t.unflatten(-1, (2, 2, d // 4)).flip(-2).flatten(-3)
        return torch.mul(t, cos).addcmul_(swapped, sin)


_ROPE_CACHE: dict[tuple, RopeTables] = {}
_ROPE_LOCK = threading.Lock()
#: set by `assume_grid_positions` (per thread): `tables_for` then skips its value test of the positions
_GRID_ASSUMED = threading.local()


@contextmanager
def assume_grid_positions() -> Iterator[None]:
    """Within this block `tables_for` takes positions of the grid's length to BE the regular grid, without
    reading their values (a device synchronisation, which a CUDA graph capture cannot contain). For callers
    that built the positions with `grid_positions` themselves (`prior/cuda_graphs.py`)."""
    prev = getattr(_GRID_ASSUMED, "on", False)
    _GRID_ASSUMED.on = True
    try:
        yield
    finally:
        _GRID_ASSUMED.on = prev


def _rope_1d(positions: Tensor, half: int, base: float, f0: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos, signed sin [M, half] for integer positions [M] (one axis, rotate-half pairing)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, device=positions.device).float() / half))
    ang = (positions.float()[:, None] * inv_freq[None, :]).to(dtype)  # [M, half/2]
    if f0 != 1.0:
        ang = ang * f0
    cos, sin = ang.cos(), ang.sin()
    return torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1)


def rope_tables(pos: Tensor, head_dim: int, base: float, f0: float, dtype: torch.dtype) -> RopeTables:
    """Tables for arbitrary positions ``pos`` [B, N, 2] (y, x) -> cos/sin [B, N, head_dim]."""
    half = head_dim // 2
    flat = pos.reshape(-1, 2)
    cy, sy = _rope_1d(flat[:, 0], half, base, f0, dtype)
    cx, sx = _rope_1d(flat[:, 1], half, base, f0, dtype)
    shape = (pos.shape[0], pos.shape[1], head_dim)
    return RopeTables(torch.cat((cy, cx), -1).reshape(shape), torch.cat((sy, sx), -1).reshape(shape))


def grid_positions(gh: int, gw: int, batch: int = 1, device: torch.device | str = "cpu") -> Tensor:
    """Integer (y, x) patch coordinates, row-major: [B, gh*gw, 2] int64."""
    ys, xs = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
    return torch.stack((ys.reshape(-1), xs.reshape(-1)), -1)[None].expand(batch, -1, -1)


def grid_rope_tables(
    gh: int, gw: int, head_dim: int, base: float, f0: float, device: torch.device, dtype: torch.dtype
) -> RopeTables:
    """Cached tables for the regular (gh x gw) patch grid: cos/sin [N, head_dim] (batch-independent)."""
    key = (gh, gw, head_dim, base, f0, str(device), dtype)
    tab = _ROPE_CACHE.get(key)
    if tab is None:
        with torch.inference_mode(False):  # normal tensors: the cache may be used with autograd later
            t = rope_tables(grid_positions(gh, gw, 1, device), head_dim, base, f0, dtype)
        tab = RopeTables(t.cos[0], t.sin[0])
        with _ROPE_LOCK:
            _ROPE_CACHE[key] = tab
    return tab


def tables_for(
    pos: Tensor, grid: tuple[int, int], head_dim: int, base: float, f0: float, dtype: torch.dtype
) -> RopeTables:
    """Tables for ``pos`` [B, N, 2]: the cached grid tables when ``pos`` is the regular grid, else computed."""
    gh, gw = grid
    if pos.shape[1] == gh * gw:
        if pos.is_meta or getattr(_GRID_ASSUMED, "on", False):  # meta: FLOP counting, values unknown
            return grid_rope_tables(gh, gw, head_dim, base, f0, pos.device, dtype)
        ref = grid_positions(gh, gw, 1, pos.device)
        if torch.equal(pos, ref.expand_as(pos)):
            return grid_rope_tables(gh, gw, head_dim, base, f0, pos.device, dtype)
    return rope_tables(pos, head_dim, base, f0, dtype)


# ---------------------------------------------------------------------------------------------- attention
class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection and RoPE on q and k."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: RopeTables | None) -> Tensor:  # x [B, N, C]
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads)  # [B, N, 3, h, d]
        qk = rope.apply(qkv[:, :, :2]) if rope is not None else qkv[:, :, :2]  # q and k rotated in one pass
        # [B, N, h, d] -> [B, h, N, d] views (SDPA takes strided inputs)
        q, k, v = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, N, d]
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class CrossAttention(nn.Module):
    """Multi-head cross-attention (queries from x, keys/values from the other view) with RoPE on q and k."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, mem: Tensor, rope_q: RopeTables | None, rope_k: RopeTables | None
    ) -> Tensor:  # x [B, Nq, C], mem [B, Nk, C]
        B, Nq, C = x.shape
        Nk = mem.shape[1]
        h = self.num_heads
        q = self.projq(x).view(B, Nq, h, C // h)  # [B, Nq, h, d]
        k = self.projk(mem).view(B, Nk, h, C // h)
        v = self.projv(mem).view(B, Nk, h, C // h)
        if rope_q is not None:
            q = rope_q.apply(q)
        if rope_k is not None:
            k = rope_k.apply(k)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(B, Nq, C))
