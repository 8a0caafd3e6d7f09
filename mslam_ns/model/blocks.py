"""Pre-norm transformer blocks: the encoder block and the decoder block (self- + cross-attention).

Residual additions go into the branch's fresh output (`_residual`: the same sums as ``x + branch``,
one buffer fewer per step).
"""

from __future__ import annotations

from torch import Tensor, nn

from mslam_ns.model.layers import CrossAttention, Mlp, RopeTables, SelfAttention, layer_norm


def _residual(branch: Tensor, x: Tensor) -> Tensor:
    """``x + branch``, written into ``branch`` (a fresh output) when no type promotion is involved."""
    return branch.add_(x) if branch.dtype == x.dtype and branch.shape == x.shape else x + branch


class EncoderBlock(nn.Module):
    """x = x + Attn(LN1(x)); x = x + MLP(LN2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, rope: RopeTables | None) -> Tensor:  # [B, N, C]
        x = _residual(self.attn(self.norm1(x), rope), x)
        return _residual(self.mlp(self.norm2(x)), x)


class DecoderBlock(nn.Module):
    """Self-attention on the view's tokens, cross-attention to the other view's (``norm_y``-ed) tokens, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_mem: bool = True) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = layer_norm(dim)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm3 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y: nn.Module = layer_norm(dim) if norm_mem else nn.Identity()

    def forward(
        self, x: Tensor, mem: Tensor, rope_x: RopeTables | None, rope_mem: RopeTables | None
    ) -> Tensor:  # x [B, N, C], mem [B, M, C] -> [B, N, C]
        x = _residual(self.attn(self.norm1(x), rope_x), x)
        x = _residual(self.cross_attn(self.norm2(x), self.norm_y(mem), rope_x, rope_mem), x)
        return _residual(self.mlp(self.norm3(x)), x)
