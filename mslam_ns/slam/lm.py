"""The ONE Levenberg-Marquardt loop, used by frame tracking (one 7x7 pose) and the keyframe graph (sparse).

The caller supplies three functions:
- ``linearize(x) -> (A, b, cost, count)``: normal matrix, right-hand side ``b = -J^T W r``, robust cost and
  the number of contributing residuals at ``x`` (A may be dense or sparse: only ``solve`` looks at it);
- ``solve(A, b, damping) -> dx | None``: the damped step, or None when the factorisation fails;
- ``retract(x, dx) -> x'``: apply the step (``T <- Exp(dx) T`` for Sim(3) poses).

A step is accepted when the cost does not increase (damping / 10), otherwise the damping is multiplied by
10 and the step retried. Stops after ``cfg.max_iters`` evaluations, on a step below ``cfg.delta_norm``, on
a relative cost decrease below ``cfg.rel_error``, or when the damping passes ``max_damping`` (no better
point nearby). Numerical failures never raise: they set ``failed`` and keep the best ``x`` found.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mslam_ns.config import LMConfig

__all__ = ["LMResult", "levenberg_marquardt"]

_DAMPING_MIN = 1e-12


@dataclass
class LMResult:
    x: Any
    """The best point found (the start when no step was accepted)."""
    iterations: int = 0
    cost: float = float("nan")
    cost_history: list[float] = field(default_factory=list)
    """Cost at the start and after every accepted step."""
    converged: bool = False
    failed: bool = False
    reason: str = ""


def levenberg_marquardt(
    x0: Any,
    linearize: Callable[[Any], tuple[Any, Any, float, int]],
    solve: Callable[[Any, Any, float], Any | None],
    retract: Callable[[Any, Any], Any],
    step_norm: Callable[[Any], float],
    cfg: LMConfig,
    max_damping: float = 1e10,
) -> LMResult:
    """Minimise a robust least-squares cost from ``x0`` (see the module docstring)."""
    A, b, cost, count = linearize(x0)
    res = LMResult(x0, cost=cost, cost_history=[cost])
    if not math.isfinite(cost):
        res.failed, res.reason = True, "non-finite cost"
        return res
    if count == 0:
        res.failed, res.reason = True, "no valid residuals"
        return res
    lam = max(float(cfg.damping), _DAMPING_MIN)
    x = x0
    for it in range(1, int(cfg.max_iters) + 1):
        res.iterations = it
        dx = solve(A, b, lam)
        if dx is None:
            lam *= 10.0
            if lam > max_damping:
                res.failed, res.reason = True, "factorisation failed at every damping"
                break
            continue
        step = float(step_norm(dx))
        if not math.isfinite(step):
            res.failed, res.reason = True, "non-finite step"
            break
        if step < cfg.delta_norm:
            res.converged, res.reason = True, "small step"
            break
        x_new = retract(x, dx)
        A2, b2, cost2, count2 = linearize(x_new)
        if math.isfinite(cost2) and cost2 <= cost and count2 > 0:
            rel = (cost - cost2) / max(cost, 1e-300)
            x, A, b, cost = x_new, A2, b2, cost2
            res.cost_history.append(cost)
            lam = max(lam / 10.0, _DAMPING_MIN)
            if rel < cfg.rel_error:
                res.converged, res.reason = True, "small relative cost change"
                break
        else:
            lam *= 10.0
            if lam > max_damping:
                res.converged, res.reason = True, "no descent step at maximum damping"
                break
    else:
        res.reason = "iteration limit"
    res.x, res.cost = x, cost
    return res
