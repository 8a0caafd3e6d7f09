"""The commands layer: the `mslam-ns` subcommands, on top of everything else.

`run`, `demo` (`commands.run`), `eval` (`commands.eval`), `export` (`commands.export`); the shared SLAM driving
code in `commands.slam`; the typed options and `--config FILE` loading in `commands.options`. No lower layer
imports this package, and the command modules import each other only through `commands.slam`/`options`.
"""
