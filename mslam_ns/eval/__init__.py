"""Trajectory evaluation: Sim(3)-aligned ATE computed as evo's ``evo_ape tum GT EST -as`` does.

`mslam_ns.eval.ate` holds the metric (no GPL code: evo is only a test-time oracle); `mslam_ns.commands.eval`
the ``mslam-ns eval`` subcommand.
"""

from mslam_ns.eval.ate import AteResult, ate, umeyama

__all__ = ["AteResult", "ate", "umeyama"]
