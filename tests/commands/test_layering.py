"""The layering the README promises, read from the import statements of every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "mslam_ns"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _modules():
    for p in sorted(PKG.rglob("*.py")):
        yield ".".join(p.relative_to(PKG.parent).with_suffix("").parts), p


TOP = ("mslam_ns.commands", "mslam_ns.cli", "mslam_ns.nerfstudio", "mslam_ns.viewer", "mslam_ns.doctor")


def test_lower_layers_never_import_the_commands_or_the_cli():
    bad = []
    for name, p in _modules():
        if name.startswith(TOP):
            continue
        for imp in _imports(p):
            if imp.startswith(("mslam_ns.commands", "mslam_ns.cli")):
                bad.append(f"{name} imports {imp}")
    assert not bad, bad


def test_command_modules_do_not_import_each_other():
    """eval and run/export share only `commands.slam` / `commands.options` (and the old homes are gone)."""
    assert not (PKG / "slam" / "commands.py").exists() and not (PKG / "eval" / "commands.py").exists()
    shared = ("mslam_ns.commands.slam", "mslam_ns.commands.options")
    for name, p in _modules():
        if not name.startswith("mslam_ns.commands."):
            continue
        for imp in _imports(p):
            if imp.startswith("mslam_ns.commands.") and not imp.startswith(shared):
                assert imp.startswith(name), f"{name} imports {imp}"
    for imp in _imports(PKG / "eval" / "ate.py"):
        assert not imp.startswith("mslam_ns.slam")


def test_no_axis_flip_outside_the_conventions_module():
    flip = re.compile(r"diag\(\s*\[\s*1(\.0)?\s*,\s*-1|\[\s*1(\.0)?\s*,\s*-1(\.0)?\s*,\s*-1(\.0)?\s*[,\]]")
    hits = [
        name
        for name, p in _modules()
        if name != "mslam_ns.geometry.conventions" and flip.search(p.read_text(encoding="utf-8"))
    ]
    assert not hits, hits


def test_run_folder_file_names_live_only_in_rundir():
    names = ("trajectory.txt", "keyframes.txt", "frames.txt", "points.ply", "summary.json", "edges.txt")
    hits = [
        f"{name}: {n}"
        for name, p in _modules()
        if name != "mslam_ns.io.rundir"
        for n in names
        if f'"{n}"' in p.read_text(encoding="utf-8")
    ]
    assert not hits, hits
