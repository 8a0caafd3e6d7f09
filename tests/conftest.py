"""Suite-wide rule: on CI (``CI=true``, set by ``.ci/run``) the only acceptable skip is one whose reason starts
with "needs a CUDA device": a test of the CUDA build, on a machine without a CUDA device or without the CUDA
toolchain ("needs a CUDA device or toolchain (nvcc)"). Every CUDA kernel has a CPU twin that runs there.

Any other skip (a missing fixture, a missing optional package, an ``importorskip``) would let a core path go
untested while the suite stays green, so there it is reported as a failure naming the reason. Outside CI
skips stay skips (a developer without the video extra can still run the rest).
"""

from __future__ import annotations

import os

import pytest

#: How the one kind of skip allowed on CI starts (every CUDA test has a CPU twin that runs).
ALLOWED_SKIP = "needs a CUDA device"


def _strict() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason given to the skip (pytest reports it as "Skipped: <reason>")."""
    longrepr = report.longrepr
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ").strip()


def _forbid(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and _strict():
        reason = _skip_reason(report)
        if not reason.startswith(ALLOWED_SKIP):
            report.outcome = "failed"
            report.longrepr = (
                f"skip not allowed on CI (CI=true): {reason}\n"
                f"Only a reason starting '{ALLOWED_SKIP}' may skip; install what the test needs or fix its cause."
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if not hasattr(report, "wasxfail"):  # an xfail is reported as skipped; it is not a skip
        _forbid(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    _forbid(outcome.get_result())  # a module-level importorskip / pytest.skip(allow_module_level=True)
