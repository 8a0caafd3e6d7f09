"""Import hook that adds `mslam` to nerfstudio's `ns-process-data` (loaded by `mslam_ns_process_data.pth`).

It runs at every interpreter start in the environment, so it does almost nothing: it puts one finder on
`sys.meta_path` that reacts only to the import of `nerfstudio.scripts.process_data`, lets the normal
machinery load that module, and then calls `mslam_ns.nerfstudio.process_data.extend_commands` on it.
nerfstudio's `entrypoint()` reads the module's `Commands` when it is called, so it sees the extension.
Every failure is swallowed (logged at debug level): a broken mslam_ns must never break `ns-process-data`.
"""

from __future__ import annotations

import sys

_TARGET = "nerfstudio.scripts.process_data"


class _ProcessDataHook:
    """A meta-path finder for one module name; it defers to the other finders and wraps the loader."""

    _busy = False

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != _TARGET or cls._busy:
            return None
        cls._busy = True
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is cls or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        finally:
            cls._busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            try:
                from mslam_ns.nerfstudio.process_data import extend_commands

                extend_commands(module)
            except Exception:  # noqa: BLE001 - never break nerfstudio
                import logging

                logging.getLogger(__name__).debug("could not add 'mslam' to ns-process-data", exc_info=True)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Put the hook on `sys.meta_path` once (or extend the module right away if it is already imported)."""
    try:
        mod = sys.modules.get(_TARGET)
        if mod is not None:
            from mslam_ns.nerfstudio.process_data import extend_commands

            extend_commands(mod)
        elif not any(f is _ProcessDataHook for f in sys.meta_path):
            sys.meta_path.insert(0, _ProcessDataHook)
    except Exception:  # noqa: BLE001
        pass


install()
