"""The full ViT-L 512 model (built on the meta device) has exactly the official keys and shapes."""

from __future__ import annotations

import re

import torch

from mslam_ns.model import Mast3rNet, parse_model_string
from tests.model._fixtures import require_root


def _read_shapes(path) -> tuple[str, dict[str, tuple[int, ...]], list[tuple[str, str]]]:
    ctor, shapes, aliases = "", {}, []
    for line in path.read_text().splitlines():
        if line.startswith("# constructor"):
            ctor = line.split(": ", 1)[1]
        elif m := re.match(r"#\s+(\S+) == (\S+)$", line):
            aliases.append((m.group(1), m.group(2)))
        elif line and not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            assert dtype == "float32"
            shapes[key] = tuple(int(v) for v in re.findall(r"\d+", shape))
    return ctor, shapes, aliases


def test_vitl512_state_dict_matches_official_list():
    ctor, official, aliases = _read_shapes(require_root() / "mast3r_vitl512_state_dict_shapes.txt")
    assert len(official) == 1017 and len(aliases) == 8
    with torch.device("meta"):
        net = Mast3rNet(parse_model_string(ctor))
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert set(ours) - set(official) == set(), "keys the official model does not have"
    assert set(official) - set(ours) == set(), "official keys we lack"
    bad = [k for k in official if ours[k] != official[k]]
    assert not bad, f"shape mismatches: {bad[:5]}"
    sd = net.state_dict(keep_vars=True)
    for a, b in aliases:  # the same tensor under two names
        assert sd[a] is sd[b]
    unique = {id(p): p.numel() for p in net.parameters()}
    assert sum(unique.values()) == 688_638_856
