"""`mslam-ns`: the command-line front end. Thin: parse, call, print, exit code.

Each subcommand is a plain function living next to the code it drives; this file only lists them, so that
`mslam-ns --help` stays cheap and no subcommand imports another's dependencies.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("mslam_ns.slam.commands", "run"),
    "demo": ("mslam_ns.slam.commands", "demo"),
    "eval": ("mslam_ns.eval.commands", "evaluate"),
    "synth": ("mslam_ns.io.synthetic", "synth_command"),
    "infer": ("mslam_ns.model.commands", "infer"),
    "download": ("mslam_ns.model.weights", "download_command"),
    "doctor": ("mslam_ns.doctor", "doctor"),
}


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2, no traceback."""


def _load(name: str):
    module, func = COMMANDS[name]
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the chosen subcommand's module (others may need heavy dependencies).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen in COMMANDS:
        funcs = {chosen: _load(chosen)}
    else:
        funcs = {}
        for name in COMMANDS:
            try:
                funcs[name] = _load(name)
            except Exception as e:  # a broken optional part must not hide the others
                print(f"mslam-ns: subcommand {name!r} unavailable: {e}", file=sys.stderr)
    try:
        result = tyro.extras.subcommand_cli_from_dict(
            funcs, args=argv, prog="mslam-ns", config=(tyro.conf.PositionalRequiredArgs,)
        )
    except UserError as e:
        print(f"mslam-ns: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mslam-ns: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
