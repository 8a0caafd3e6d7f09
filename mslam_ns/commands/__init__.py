"""The commands layer: the `mslam-ns` subcommands, on top of everything else.

`run`, `demo` (`commands.run`), `eval` (`commands.eval`), `export` (`commands.export`), `synth`
(`commands.synth`), `infer` (`commands.infer`), `download` (`commands.download`); the run driver shared with
the nerfstudio plugin in `commands.slam`; the typed options and `--config FILE` loading in `commands.options`.
No lower layer imports this package; `mslam_ns.nerfstudio` uses only `commands.slam`/`options`, which import no
other command module, and the command modules import each other only through those two
(docs/architecture.md, "Boundaries").
"""
