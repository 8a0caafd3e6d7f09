"""`mslam-ns`: the command-line front end. Thin: parse, call, print, exit code.

Each subcommand is a plain function in the commands layer (`mslam_ns.commands`; `view` and `doctor` live in
the viewer's and the doctor's own top-level modules); this file only lists them, so that `mslam-ns --help`
stays cheap and no subcommand imports another's dependencies. A function with an `options` attribute (a
dataclass, e.g. `RunOptions`) takes that dataclass: its defaults may come from `--config FILE` (YAML), flags
override them.
"""

from __future__ import annotations

import importlib
import sys

from mslam_ns.errors import UserError  # noqa: F401  (re-exported: `mslam_ns.cli.UserError`)

# name -> (module, function)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("mslam_ns.commands.run", "run"),
    "demo": ("mslam_ns.commands.run", "demo"),
    "eval": ("mslam_ns.commands.eval", "evaluate"),
    "export": ("mslam_ns.commands.export", "export"),
    "synth": ("mslam_ns.commands.synth", "synth_command"),
    "infer": ("mslam_ns.commands.infer", "infer"),
    "download": ("mslam_ns.commands.download", "download_command"),
    "doctor": ("mslam_ns.doctor", "doctor"),
    "view": ("mslam_ns.viewer.app", "view"),
}


def _load(name: str):
    module, func = COMMANDS[name]
    return getattr(importlib.import_module(module), func)


def _pop_config(argv: list[str]) -> tuple[list[str], str | None]:
    """argv without `--config FILE` / `--config=FILE`, and FILE (None when absent)."""
    rest, cfg, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            cfg, i = argv[i + 1], i + 2
            continue
        if a.startswith("--config="):
            cfg = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return rest, cfg


def parse_options(cls: type, argv: list[str], prog: str):
    """Parse an options dataclass: defaults from `--config FILE` (if given), then the flags."""
    from pathlib import Path

    import tyro

    from mslam_ns.commands.options import load_options

    rest, cfg = _pop_config(argv)
    default = load_options(cls, None if cfg is None else Path(cfg))
    if cfg is not None and any(a in ("-h", "--help") for a in rest):
        rest = [a for a in rest if a not in ("-h", "--help")] + ["--help"]
    opts = tyro.cli(cls, args=rest, default=default, prog=prog, config=(tyro.conf.PositionalRequiredArgs,))
    if hasattr(opts, "config") and cfg is not None:
        opts.config = Path(cfg)
    return opts


def main(argv: list[str] | None = None) -> int:
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the chosen subcommand's module (others may need heavy dependencies).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    try:
        if chosen in COMMANDS:
            func = _load(chosen)
            opts_cls = getattr(func, "options", None)
            if opts_cls is not None:
                rest = list(argv)
                rest.remove(chosen)
                result = func(parse_options(opts_cls, rest, f"mslam-ns {chosen}"))
                return int(result or 0)
            funcs = {chosen: func}
        else:
            funcs = {}
            for name in COMMANDS:
                try:
                    f = _load(name)
                    funcs[name] = getattr(f, "options", None) or f
                except Exception as e:  # a broken optional part must not hide the others
                    print(f"mslam-ns: subcommand {name!r} unavailable: {e}", file=sys.stderr)
        result = tyro.extras.subcommand_cli_from_dict(
            funcs, args=argv, prog="mslam-ns", config=(tyro.conf.PositionalRequiredArgs,)
        )
    except UserError as e:
        print(f"mslam-ns: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mslam-ns: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permissions...: outputs are written atomically, so nothing is half-done
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"mslam-ns: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    return int(result or 0)


def entrypoint() -> None:
    import logging

    # Library code logs through `logging` (quiet inside ns-train); the command line shows INFO and above.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("faiss", "faiss.loader", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
