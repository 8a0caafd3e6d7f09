"""Safe loading of official MASt3R checkpoints (``{'model': state_dict, 'args': Namespace(model=...)}``).

``torch.load`` always runs with ``weights_only=True``; ``argparse.Namespace`` is the only extra class allowed
(the official checkpoints pickle their training arguments). A file that needs anything else is refused
without executing it.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mslam_ns.errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be used (unreadable, unsafe, wrong layout or shapes), naming the file.

    A `UserError` (the command line prints one line and exits with code 2) and a `ValueError`.
    """


#: (alias, canonical) suffixes of the DPT convs registered twice by the official module
_ALIASES = tuple((f"dpt.scratch.layer_rn.{k - 1}.weight", f"dpt.scratch.layer{k}_rn.weight") for k in range(1, 5))


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_PROTO = 0x80  # the PROTO opcode a legacy torch.save / a pickle file starts with


def _refusal(err: pickle.UnpicklingError) -> str:
    """Why the safe unpickler refused a file, in our words (never PyTorch's advice to load it unsafely)."""
    msg = str(err)
    m = re.search(r"GLOBAL ([\w.]+)", msg)
    if m:
        return f"it references {m.group(1)}, which a checkpoint never needs (nothing in it was run)"
    m = re.search(r"Unsupported (?:operand|class|global)[: ]+([^\s.]+)", msg)
    if m:
        return f"it uses pickle content a plain checkpoint does not ({m.group(0).strip()}; nothing in it was run)"
    return "it holds pickled objects other than tensors and plain containers (nothing in it was run)"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if "weights_only" not in line else type(e).__name__


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with ``argparse.Namespace`` allowed; CheckpointError names the file.

    The file's format is checked first (a torch zip archive or a pickle), so random bytes are reported as
    such; a file the safe unpickler refuses is reported with the global it wanted, never with advice to load
    it unsafely.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror or e})") from None
    if not head:
        raise CheckpointError(f"{path}: not a torch checkpoint (the file is empty)")
    if head != _ZIP_MAGIC and head[0] != _PICKLE_PROTO:
        raise CheckpointError(f"{path}: not a torch checkpoint (neither a torch.save zip archive nor a pickle)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note about the pickle protocol of a foreign file
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to load: {_refusal(e)}") from None
    except Exception as e:  # zip/pickle/struct errors of a corrupt or foreign file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({_first_line(e)})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return dict(obj)


def model_string(ckpt: Mapping[str, Any], path: str | os.PathLike) -> str:
    """The constructor string ``ckpt['args'].model``."""
    args = ckpt.get("args")
    s = getattr(args, "model", None) if args is not None else None
    if not isinstance(s, str):
        raise CheckpointError(f"{path}: checkpoint has no 'args.model' constructor string")
    return s


def state_dict_of(ckpt: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Tensor]:
    sd = ckpt.get("model")
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: checkpoint has no 'model' state_dict of tensors")
    return dict(sd)


def normalise_state_dict(sd: dict[str, Tensor], path: str | os.PathLike) -> dict[str, Tensor]:
    """Fill the DPT aliases and ``dec_blocks2`` (copied from ``dec_blocks`` when absent); float32 weights."""
    sd = dict(sd)
    if not any(k.startswith("dec_blocks2.") for k in sd):
        for k in [k for k in sd if k.startswith("dec_blocks.")]:
            sd["dec_blocks2." + k[len("dec_blocks.") :]] = sd[k]
    for head in ("downstream_head1.", "downstream_head2."):
        for alias, canon in _ALIASES:
            a, c = head + alias, head + canon
            if a in sd and c not in sd:
                sd[c] = sd[a]
            elif c in sd and a not in sd:
                sd[a] = sd[c]
            elif a in sd and c in sd and sd[a] is not sd[c]:
                if sd[a].shape != sd[c].shape or not torch.equal(sd[a], sd[c]):
                    raise CheckpointError(f"{path}: aliased keys {a!r} and {c!r} hold different tensors")
    for k, v in sd.items():
        if v.is_floating_point() and v.dtype != torch.float32:
            sd[k] = v.float()
    return sd


def check_against(model: nn.Module, sd: Mapping[str, Tensor], path: str | os.PathLike) -> None:
    """Raise CheckpointError naming the file and the first missing / unexpected / wrong-shape key."""
    expected = model.state_dict(keep_vars=True)
    for k, v in expected.items():
        if k not in sd:
            raise CheckpointError(f"{path}: missing key {k!r} (model expects shape {tuple(v.shape)})")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: key {k!r} has shape {tuple(sd[k].shape)}, model expects {tuple(v.shape)}")
    for k in sd:
        if k not in expected:
            raise CheckpointError(f"{path}: unexpected key {k!r} (does not fit the model)")


def load_weights(model: nn.Module, sd: dict[str, Tensor], path: str | os.PathLike) -> nn.Module:
    """Validate then load ``sd`` strictly (``assign=True`` so a meta-device model gets the real tensors)."""
    sd = normalise_state_dict(sd, path)
    check_against(model, sd, path)
    model.load_state_dict(sd, strict=True, assign=True)
    return model
