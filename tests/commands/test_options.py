"""`--config FILE` and the typed options: SlamConfig exposed field by field, nothing re-listed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mslam_ns.commands.options import RunOptions, SlamOptions, load_options, options_to_dict, to_slam_config
from mslam_ns.config import SlamConfig
from mslam_ns.errors import UserError


def _leaves(cls, prefix=""):
    for f in dataclasses.fields(cls):
        v = getattr(cls(), f.name)
        if dataclasses.is_dataclass(v):
            yield from _leaves(type(v), prefix + f.name + ".")
        else:
            yield prefix + f.name


def test_every_slam_config_field_is_a_flag(capsys):
    from mslam_ns.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for leaf in _leaves(SlamConfig):
        flag = "--" + leaf.replace("_", "-")
        assert flag in text, flag


def test_slam_options_repeat_no_default():
    """SlamOptions adds only 'auto' to mode; all other defaults are SlamConfig's own objects."""
    own = {f.name for f in dataclasses.fields(SlamOptions)} - {f.name for f in dataclasses.fields(SlamConfig)}
    assert not own
    src = (Path(__file__).resolve().parents[2] / "mslam_ns" / "commands" / "options.py").read_text()
    assert "img_size: int" not in src and "512" not in src
    assert to_slam_config(SlamOptions(), "rays") == SlamConfig()


def test_config_round_trip(tmp_path):
    o = load_options(
        RunOptions, None, dataset="x", prior="mast3r", slam={"img_size": 224, "tracking": {"lm": {"max_iters": 7}}}
    )
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(options_to_dict(o)))
    back = load_options(RunOptions, p)
    assert back == dataclasses.replace(o, dataset=Path("x"))
    assert back.slam.tracking.lm.max_iters == 7 and back.slam.backend.lm == SlamConfig().backend.lm


def test_top_level_and_grouped_slam_keys_are_the_same(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("img_size: 200\nmatching: {refine: false}\n")
    b.write_text("slam: {img_size: 200, matching: {refine: false}}\n")
    assert load_options(RunOptions, a) == load_options(RunOptions, b)


@pytest.mark.parametrize("text", ["stride: 1.5\n", "quiet: 3\n", "matching: 4\n", ": :\n  - [\n"])
def test_bad_values_name_the_file(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(UserError, match=str(p)):
        load_options(RunOptions, p)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_options(RunOptions, tmp_path / "nope.yaml")
