"""`Mast3rPrior`: the MASt3R network behind the `TwoViewPrior` interface.

The encoder runs once per frame (`encode`, cached by the caller on the frame); `decode` runs the two decoder
stacks and both heads for an ordered pair. ``decode_symmetric`` runs both orderings as one batch-2 decoder
call. Everything runs under ``torch.inference_mode()``. With ``cuda_graphs`` the encoder and both decodes
are captured once per image size and replayed (`prior/cuda_graphs.py`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor

from mslam_ns.model import Mast3rNet, RetrievalHead, load_mast3r, load_retrieval
from mslam_ns.model.layers import assume_grid_positions, grid_positions
from mslam_ns.prior.base import Encoding, PairPrediction, TwoViewPrior, ViewPrediction
from mslam_ns.prior.cuda_graphs import GraphedCall, cuda_capture

#: `SlamConfig.precision` -> autocast dtype (None: float32 throughout)
AMP_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _view(res: dict[str, Tensor], b: int, desc_dtype: torch.dtype) -> ViewPrediction:
    return ViewPrediction(
        X=res["pts3d"][b].float(),
        C=res["conf"][b].float(),
        D=res["desc"][b].to(desc_dtype),
        Q=res["desc_conf"][b].float(),
    )


class Mast3rPrior(TwoViewPrior):
    """MASt3R two-view prior.

    Args:
        net: the loaded network (its device is where everything runs).
        retrieval: optional retrieval head (enables `retrieval_features`).
        amp_dtype: optional autocast dtype (torch.bfloat16 / torch.float16) of the encoder and decoder, on
            the net's device (CPU or CUDA); None = float32. The predictions are returned in float32.
        desc_dtype: dtype of the returned descriptors ``D``.
        batch_symmetric: run both orderings of `decode_symmetric` as one batch-2 call.
        cuda_graphs: run the encoder, `decode` and `decode_symmetric` as CUDA graphs, one per image size
            (CUDA only); ``graph_capture`` replaces the capture (tests: `cuda_graphs.eager_capture`).
    """

    def __init__(
        self,
        net: Mast3rNet,
        retrieval: RetrievalHead | None = None,
        amp_dtype: torch.dtype | None = None,
        desc_dtype: torch.dtype = torch.float32,
        batch_symmetric: bool = True,
        cuda_graphs: bool = False,
        graph_capture=None,
    ) -> None:
        self.net = net.eval()
        self.retrieval = retrieval.eval() if retrieval is not None else None
        self.device = next(net.parameters()).device
        self.amp_dtype = amp_dtype
        self.desc_dtype = desc_dtype
        self.batch_symmetric = batch_symmetric
        self.desc_dim = net.cfg.local_feat_dim
        if cuda_graphs and self.device.type != "cuda" and graph_capture is None:
            raise ValueError(f"cuda_graphs needs the network on a CUDA device, not {self.device}")
        self.graphs: dict[str, GraphedCall] | None = None
        if cuda_graphs:
            cap = graph_capture or cuda_capture
            self.graphs = {
                "encode": GraphedCall(self._encode_fn, cap, "the encoder"),
                "decode": GraphedCall(partial(self._on_grid, net.decode), cap, "decode"),
                "decode_symmetric": GraphedCall(partial(self._on_grid, net.decode_symmetric), cap, "decode_symmetric"),
            }

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        retrieval_path: str | os.PathLike | None = None,
        device: torch.device | str = "cpu",
        **kwargs,
    ) -> Mast3rPrior:
        net = load_mast3r(path, device)
        retr = load_retrieval(retrieval_path, net) if retrieval_path is not None else None
        return cls(net, retr, **kwargs)

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        # autocast's cache of cast weights cannot outlive a CUDA graph capture (torch's graph notes)
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=self.graphs is None)

    # the graphed functions: tensors in, tensors out; positions are the regular grid, built inside
    def _grid(self, shape: tuple[int, int], B: int, device: torch.device) -> Tensor:
        p = self.net.cfg.patch_size
        return grid_positions(shape[0] // p, shape[1] // p, B, device)

    def _encode_fn(self, shape: tuple[int, int], x: Tensor) -> Tensor:
        return self.net.encode(x)[0]

    def _on_grid(self, decode, shape: tuple[int, int], fi: Tensor, fj: Tensor):
        """``decode`` (the net's `decode` / `decode_symmetric`) of fi, fj at the grid positions."""
        pos = self._grid(shape, fi.shape[0], fi.device)
        with assume_grid_positions():
            return decode(fi, pos, fj, pos, shape)

    def encode(self, image: Tensor, index: int) -> Encoding:
        """image [3, H, W] float32 in [0, 1] -> Encoding(data=(feat [N, C_enc], pos [N, 2]))."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image [3, H, W], got {tuple(image.shape)}")
        H, W = int(image.shape[1]), int(image.shape[2])
        with torch.inference_mode(), self._autocast():
            x = (image.to(self.device, torch.float32)[None] - 0.5) / 0.5  # [1, 3, H, W] in [-1, 1]
            if self.graphs is not None:
                feat, pos = self.graphs["encode"]((H, W), x), self._grid((H, W), 1, x.device)
            else:
                feat, pos = self.net.encode(x)
        return Encoding(index=index, shape=(H, W), data=(feat[0], pos[0]))

    def _unpack(self, enc: Encoding) -> tuple[Tensor, Tensor]:
        feat, pos = enc.data  # on the host when the map read a spilled keyframe back: moved (no-op otherwise)
        return feat[None].to(self.device), pos[None].to(self.device)  # [1, N, C], [1, N, 2]

    def decode(self, enc_i: Encoding, enc_j: Encoding) -> PairPrediction:
        """(X^i_i from head 1, X^j_i from head 2)."""
        if enc_i.shape != enc_j.shape:
            raise ValueError(f"image sizes differ: {enc_i.shape} vs {enc_j.shape}")
        fi, pi = self._unpack(enc_i)
        fj, pj = (fi, pi) if enc_j is enc_i else self._unpack(enc_j)
        with torch.inference_mode(), self._autocast():
            if self.graphs is not None:  # positions: the grid (every Encoding comes from `encode`)
                r1, r2 = self.graphs["decode"](enc_i.shape, fi, fj)
            else:
                r1, r2 = self.net.decode(fi, pi, fj, pj, enc_i.shape)
        return PairPrediction(_view(r1, 0, self.desc_dtype), _view(r2, 0, self.desc_dtype))

    def decode_symmetric(self, enc_i: Encoding, enc_j: Encoding) -> tuple[PairPrediction, PairPrediction]:
        """((X^i_i, X^j_i), (X^j_j, X^i_j)), both orderings in one batch-2 decoder call."""
        if not self.batch_symmetric:
            return self.decode(enc_i, enc_j), self.decode(enc_j, enc_i)
        if enc_i.shape != enc_j.shape:
            raise ValueError(f"image sizes differ: {enc_i.shape} vs {enc_j.shape}")
        fi, pi = self._unpack(enc_i)
        fj, pj = self._unpack(enc_j)
        with torch.inference_mode(), self._autocast():
            if self.graphs is not None:
                (r_ii, r_ji), (r_jj, r_ij) = self.graphs["decode_symmetric"](enc_i.shape, fi, fj)
            else:
                (r_ii, r_ji), (r_jj, r_ij) = self.net.decode_symmetric(fi, pi, fj, pj, enc_i.shape)
        d = self.desc_dtype
        return (
            PairPrediction(_view(r_ii, 0, d), _view(r_ji, 0, d)),
            PairPrediction(_view(r_jj, 0, d), _view(r_ij, 0, d)),
        )

    def decode_symmetric_batch(
        self, enc_i: Encoding, encs_j: Sequence[Encoding]
    ) -> list[tuple[PairPrediction, PairPrediction]]:
        """`decode_symmetric(enc_i, e)` for every e of `encs_j`, as ONE decoder call of batch 2 len(encs_j)
        (one pair: `decode_symmetric`). The heads still process their large maps one sample at a time."""
        if len(encs_j) <= 1 or not self.batch_symmetric:
            return [self.decode_symmetric(enc_i, e) for e in encs_j]
        if any(e.shape != enc_i.shape for e in encs_j):
            raise ValueError(f"image sizes differ: {enc_i.shape} vs {[e.shape for e in encs_j]}")
        K = len(encs_j)
        fi, pi = self._unpack(enc_i)
        fj, pj = (torch.cat(t) for t in zip(*(self._unpack(e) for e in encs_j)))
        with torch.inference_mode(), self._autocast():
            rep = (fi.expand(K, -1, -1), pi.expand(K, -1, -1))
            (r_ii, r_ji), (r_jj, r_ij) = self.net.decode_symmetric(*rep, fj, pj, enc_i.shape)
        d = self.desc_dtype
        return [
            (
                PairPrediction(_view(r_ii, k, d), _view(r_ji, k, d)),
                PairPrediction(_view(r_jj, k, d), _view(r_ij, k, d)),
            )
            for k in range(K)
        ]

    def decode_mono(self, enc_i: Encoding) -> PairPrediction:
        """The (i, i) pass."""
        return self.decode(enc_i, enc_i)

    def retrieval_features(self, enc_i: Encoding) -> Tensor | None:
        """Top-nfeat retrieval features [K, F_r] float32 (ASMK input), or None without a retrieval head."""
        if self.retrieval is None:
            return None
        feat, _ = self._unpack(enc_i)
        with torch.inference_mode():
            out = self.retrieval(feat.float())
        return out.topk_feat[0].float()
