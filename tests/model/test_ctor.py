"""Constructor-string parsing: official strings parse, rewrites apply, anything executable is refused."""

from __future__ import annotations

import math

import pytest

from mslam_ns.model.ctor import CtorError, parse_call, parse_model_string, rewrite_like_official_loader

OFFICIAL = (
    "AsymmetricMASt3R(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
    "head_type='catmlp+dpt', output_mode='pts3d+desc24', depth_mode=('exp', -inf, inf), "
    "conf_mode=('exp', 1, inf), enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, "
    "dec_depth=12, dec_num_heads=12, two_confs=True, desc_conf_mode=('exp', 0, inf))"
)


def test_parse_call_literals():
    name, kw = parse_call("M(a='x', b=(1, -2.5, inf, -inf), c=True, d=None, e=1e-6, f=\"y\", g=[3], h=())")
    assert name == "M"
    assert kw["a"] == "x" and kw["f"] == "y"
    assert kw["b"][:2] == (1, -2.5) and kw["b"][2] == math.inf and kw["b"][3] == -math.inf
    assert kw["c"] is True and kw["d"] is None and kw["e"] == 1e-6 and kw["g"] == (3,) and kw["h"] == ()


def test_official_string_gives_vitl_config():
    cfg = parse_model_string(OFFICIAL)
    assert (cfg.enc_embed_dim, cfg.enc_depth, cfg.enc_num_heads) == (1024, 24, 16)
    assert (cfg.dec_embed_dim, cfg.dec_depth, cfg.dec_num_heads) == (768, 12, 12)
    assert cfg.rope_freq == 100.0 and cfg.local_feat_dim == 24 and cfg.two_confs
    assert cfg.depth_mode == ("exp", -math.inf, math.inf) and cfg.conf_mode == ("exp", 1.0, math.inf)
    assert cfg.desc_conf_mode == ("exp", 0.0, math.inf)
    assert cfg.dpt_hooks == (0, 6, 9, 12)


def test_desc_conf_mode_defaults_to_conf_mode():
    cfg = parse_model_string(OFFICIAL.replace(", desc_conf_mode=('exp', 0, inf)", ""))
    assert cfg.desc_conf_mode == ("exp", 1.0, math.inf)


def test_official_loader_rewrite():
    s = rewrite_like_official_loader(OFFICIAL)
    assert "ManyAR_PatchEmbed" not in s and "PatchEmbedDust3R" in s and s.endswith(", landscape_only=False)")
    assert "landscape_only=False" in rewrite_like_official_loader(OFFICIAL[:-1] + ", landscape_only=True)")
    assert parse_model_string(OFFICIAL[:-1] + ", landscape_only=True)") == parse_model_string(OFFICIAL)


@pytest.mark.parametrize(
    "bad",
    [
        "__import__('os').system('echo hi')",
        "AsymmetricMASt3R(enc_depth=__import__('os').system('echo hi'))",
        "AsymmetricMASt3R(enc_depth=open('x'))",
        "AsymmetricMASt3R(enc_depth=foo)",
        "AsymmetricMASt3R(enc_depth=2); import os",
        "AsymmetricMASt3R(enc_depth=1+1)",
        "AsymmetricMASt3R(**{'a': 1})",
        "AsymmetricMASt3R(enc_depth=2",
        "AsymmetricMASt3R(enc_depth=2, enc_depth=3)",
        "AsymmetricMASt3R(x=f'{1}')",
    ],
)
def test_non_literal_constructs_are_refused(bad):
    with pytest.raises(CtorError):
        parse_model_string(bad)


@pytest.mark.parametrize(
    "bad,what",
    [
        (OFFICIAL.replace("AsymmetricMASt3R", "AsymmetricCroCo3DStereo"), "unknown model class"),
        (OFFICIAL.replace("catmlp+dpt", "linear"), "head_type"),
        (OFFICIAL.replace("RoPE100", "cosine"), "pos_embed"),
        (OFFICIAL.replace("pts3d+desc24", "pts3d"), "output_mode"),
        (OFFICIAL.replace("dec_depth=12", "dec_depth=8"), "dec_depth"),
        (OFFICIAL[:-1] + ", wpose=False)", "wpose"),
    ],
)
def test_unsupported_options_are_refused_with_a_reason(bad, what):
    with pytest.raises(CtorError, match=what):
        parse_model_string(bad)
