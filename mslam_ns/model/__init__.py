"""The MASt3R network (our implementation): safe checkpoint loading, encoder/decoder/heads, retrieval head.

    net = load_mast3r("MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth")
    feat1, pos1 = net.encode(img1)            # img [B, 3, H, W] in [-1, 1]
    res1, res2 = net.decode(feat1, pos1, feat2, pos2, (H, W))

Importing this package is cheap (torch and the network modules load on first use), so siblings such as
``mslam_ns.model.weights`` and ``mslam_ns.model.preprocess`` stay light.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mslam_ns.model.ctor import CtorError, Mast3rConfig, parse_model_string
    from mslam_ns.model.mast3r import Mast3rNet
    from mslam_ns.model.retrieval import RetrievalHead, RetrievalOutput

__all__ = [
    "CtorError",
    "Mast3rConfig",
    "Mast3rNet",
    "RetrievalHead",
    "RetrievalOutput",
    "build_mast3r",
    "load_mast3r",
    "load_retrieval",
    "parse_model_string",
]

_LAZY = {
    "CtorError": "mslam_ns.model.ctor",
    "Mast3rConfig": "mslam_ns.model.ctor",
    "parse_model_string": "mslam_ns.model.ctor",
    "Mast3rNet": "mslam_ns.model.mast3r",
    "RetrievalHead": "mslam_ns.model.retrieval",
    "RetrievalOutput": "mslam_ns.model.retrieval",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mslam_ns.model' has no attribute {name!r}")


def build_mast3r(cfg: Mast3rConfig, device: torch.device | str = "cpu") -> Mast3rNet:
    """An UNINITIALISED network (``torch.empty`` weights) for ``cfg``; fill it with `load_mast3r` or by hand."""
    import torch

    from mslam_ns.model.mast3r import Mast3rNet

    with torch.device("meta"):
        net = Mast3rNet(cfg)
    return net.to_empty(device=device).optimise_layout_().eval()


def load_mast3r(path: str | os.PathLike, device: torch.device | str = "cpu") -> Mast3rNet:
    """Load an official MASt3R checkpoint safely (no eval, no arbitrary unpickling) -> eval-mode network.

    Raises `CheckpointError` (a `UserError` and a `ValueError`) naming the file for unreadable or unsafe
    files, unsupported constructors and any key or shape that does not fit the model.
    """
    import torch

    from mslam_ns.model.checkpoint import CheckpointError, load_weights, model_string, read_checkpoint, state_dict_of
    from mslam_ns.model.ctor import CtorError, parse_model_string
    from mslam_ns.model.mast3r import Mast3rNet

    ckpt = read_checkpoint(path)
    try:
        cfg = parse_model_string(model_string(ckpt, path))
    except CtorError as e:
        raise CheckpointError(f"{path}: {e}") from None
    sd = state_dict_of(ckpt, path)
    with torch.device("meta"):
        net = Mast3rNet(cfg)
    load_weights(net, sd, path)
    return net.to(device).optimise_layout_().eval()


def load_retrieval(path: str | os.PathLike, net: Mast3rNet) -> RetrievalHead:
    """Load an official retrieval checkpoint matching ``net``'s encoder; placed on ``net``'s device."""
    from mslam_ns.model.retrieval import load_retrieval as _load

    head = _load(path, net.cfg.enc_embed_dim)
    return head.to(next(net.parameters()).device)
