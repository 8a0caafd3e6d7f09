"""Packaging hook: install `mslam_ns_process_data.pth` next to the package (everything else is in
pyproject.toml). The .pth makes `ns-process-data mslam` available (see mslam_ns/nerfstudio/_ns_hook.py);
setuptools has no declarative way to ship a top-level .pth, so build_py (wheels) and editable_wheel
(`pip install -e`) add it. `pip uninstall mslam_ns` removes it with the rest of the package's files.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py

PTH = "mslam_ns_process_data.pth"
HERE = Path(__file__).resolve().parent


class build_py(_build_py):
    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            self.copy_file(str(HERE / PTH), str(Path(self.build_lib) / PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outs.append(str(Path(self.build_lib) / PTH))
        return outs


cmdclass: dict = {"build_py": build_py}

try:
    from setuptools.command.editable_wheel import editable_wheel as _editable_wheel

    class _WithPth:
        """Wraps setuptools' editable strategy so that the editable wheel also carries the .pth."""

        def __init__(self, inner):
            self.inner = inner

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def __call__(self, wheel, files, mapping):
            self.inner(wheel, files, mapping)
            wheel.writestr(PTH, (HERE / PTH).read_text(encoding="utf-8"))

    class editable_wheel(_editable_wheel):
        def _select_strategy(self, *args, **kwargs):
            return _WithPth(super()._select_strategy(*args, **kwargs))

    cmdclass["editable_wheel"] = editable_wheel
except ImportError:  # very old setuptools: no PEP 660 editable installs
    pass

setup(cmdclass=cmdclass)
