"""Safe checkpoint loading: unsafe pickles refused unexecuted; wrong/missing keys named; official quirks."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from mslam_ns.model import Mast3rConfig, load_mast3r
from mslam_ns.model.checkpoint import read_checkpoint
from tests.model._fixtures import require_root


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny_ckpt():
    d = require_root() / "tiny_A"
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(d / "checkpoint.pth", map_location="cpu", weights_only=True)
    return ckpt


def _save(tmp_path: Path, ckpt: dict, name: str = "ck.pth") -> Path:
    p = tmp_path / name
    torch.save(ckpt, p)
    return p


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": argparse.Namespace(model="x"), "payload": _Evil(marker)}, p)
    with pytest.raises(ValueError, match="evil.pth: refused"):
        load_mast3r(p)
    with pytest.raises(ValueError, match="refused"):
        read_checkpoint(p)
    assert not marker.exists(), "the pickled payload was executed"


def test_garbage_file_is_a_clear_error(tmp_path):
    p = tmp_path / "garbage.pth"
    p.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_mast3r(p)
    with pytest.raises(ValueError, match="not found"):
        load_mast3r(tmp_path / "missing.pth")


def test_wrong_shape_key_is_named(tmp_path, tiny_ckpt):
    sd = dict(tiny_ckpt["model"])
    sd["enc_blocks.1.mlp.fc1.weight"] = torch.zeros(3, 3)
    p = _save(tmp_path, {**tiny_ckpt, "model": sd})
    with pytest.raises(ValueError, match=r"ck\.pth: key 'enc_blocks\.1\.mlp\.fc1\.weight' has shape \(3, 3\)"):
        load_mast3r(p)


def test_missing_key_is_named(tmp_path, tiny_ckpt):
    sd = {k: v for k, v in tiny_ckpt["model"].items() if k != "enc_norm.bias"}
    p = _save(tmp_path, {**tiny_ckpt, "model": sd})
    with pytest.raises(ValueError, match=r"ck\.pth: missing key 'enc_norm\.bias'"):
        load_mast3r(p)


def test_unexpected_key_is_named(tmp_path, tiny_ckpt):
    sd = {**tiny_ckpt["model"], "extra.weight": torch.zeros(1)}
    p = _save(tmp_path, {**tiny_ckpt, "model": sd})
    with pytest.raises(ValueError, match=r"unexpected key 'extra\.weight'"):
        load_mast3r(p)


def test_bad_constructor_in_checkpoint_is_refused(tmp_path, tiny_ckpt):
    args = argparse.Namespace(model="__import__('os').system('true')")
    p = _save(tmp_path, {**tiny_ckpt, "args": args})
    with pytest.raises(ValueError, match="ck.pth"):
        load_mast3r(p)


def test_aliases_dec_blocks2_copy_and_extra_entries(tmp_path, tiny_ckpt):
    """Without the alias keys and without dec_blocks2 (a DUSt3R-style file) it still loads, copying
    dec_blocks into dec_blocks2; `epoch` and other top-level entries are ignored."""
    sd = tiny_ckpt["model"]
    ref = load_mast3r(require_root() / "tiny_A" / "checkpoint.pth")
    stripped = {k: v for k, v in sd.items() if ".layer_rn." not in k and not k.startswith("dec_blocks2.")}
    assert len(stripped) < len(sd)
    p = _save(tmp_path, {"model": stripped, "args": tiny_ckpt["args"], "epoch": 3, "best_so_far": 1.0})
    net = load_mast3r(p)
    got = net.state_dict()
    assert set(got) == set(ref.state_dict())
    assert torch.equal(got["dec_blocks2.3.attn.qkv.weight"], sd["dec_blocks.3.attn.qkv.weight"])
    assert torch.equal(
        got["downstream_head2.dpt.scratch.layer_rn.2.weight"], sd["downstream_head2.dpt.scratch.layer3_rn.weight"]
    )
    # the aliases share one parameter, as in the official module
    assert net.downstream_head1.dpt.scratch.layer_rn[0] is net.downstream_head1.dpt.scratch.layer1_rn


def test_conflicting_aliases_are_refused(tmp_path, tiny_ckpt):
    sd = dict(tiny_ckpt["model"])
    k = "downstream_head1.dpt.scratch.layer_rn.0.weight"
    sd[k] = sd[k].clone() + 1
    p = _save(tmp_path, {**tiny_ckpt, "model": sd})
    with pytest.raises(ValueError, match="aliased"):
        load_mast3r(p)


def test_config_dataclass_defaults_are_the_vitl_model():
    cfg = Mast3rConfig()
    assert cfg.dpt_hooks == (0, 6, 9, 12) and cfg.local_feat_dim == 24
