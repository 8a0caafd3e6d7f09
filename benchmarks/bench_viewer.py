"""Live-viewer benchmark: how much the live viewer slows tracking down, as a ratio measured in one run.

The same synthetic sequence is run through a `SlamSystem` (oracle prior) alternately without and with a
live viewer attached to its shared map (`start_live_viewer`, default rate 2 Hz), optionally with a headless
Chromium connected so that the scene really goes over the websocket. Reported: wall time per frame of
`SlamSystem.step` in both conditions (medians over the repeats, after one discarded warm-up run) and their
ratio; the process CPU time per frame (every thread: tracking, the viewer thread and viser's server) and its
ratio; and the viewer thread's own CPU time as a share of the process CPU time (thread CPU clocks: the
figure that other processes on a busy machine disturb least), with its number of updates. Goal: <= 1.05
("a few percent"). On a shared, loaded machine single runs vary by more than that: read the medians.

Usage: .venv/bin/python benchmarks/bench_viewer.py [--frames 16] [--size 160] [--repeats 2] [--browser]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mslam_ns.config import SlamConfig  # noqa: E402
from mslam_ns.io.sources import open_source  # noqa: E402
from mslam_ns.io.synthetic import generate_sequence  # noqa: E402
from mslam_ns.prior.oracle import OraclePrior  # noqa: E402
from mslam_ns.slam.system import SlamSystem  # noqa: E402
from mslam_ns.viewer.live import start_live_viewer  # noqa: E402
from mslam_ns.viewer.server import free_port  # noqa: E402


def one_run(src, prior, size: int, viewer: bool, rate: float, browser: str | None, tmp: Path) -> dict:
    system = SlamSystem(prior, SlamConfig(mode="rays", img_size=size))
    handle = proc = None
    if viewer:
        handle = start_live_viewer(system.map, port=free_port(), max_rate_hz=rate)
        if browser:  # a real client: keeps the page open (and receiving) for the whole run
            proc = subprocess.Popen(
                [
                    browser,
                    "--headless",
                    "--no-sandbox",
                    "--enable-unsafe-swiftshader",
                    "--use-angle=swiftshader",
                    "--window-size=800,600",
                    f"--user-data-dir={tmp / f'profile{time.monotonic_ns()}'}",
                    "--remote-debugging-port=0",
                    handle.url,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            t0 = time.monotonic()
            while handle.client_count() == 0 and time.monotonic() - t0 < 30:
                time.sleep(0.1)
    step_s = 0.0
    cpu0 = time.process_time()
    try:
        for i in range(len(src)):
            t0 = time.perf_counter()
            system.step(src[i])
            step_s += time.perf_counter() - t0
        out = {
            "step_ms": 1e3 * step_s / len(src),
            "cpu_ms": 1e3 * (time.process_time() - cpu0) / len(src),
            "keyframes": system.map.num_keyframes(),
        }
        if handle is not None:
            handle.wait_until_current(10.0)
            out.update(
                updates=handle.updates,
                viewer_thread_s=handle.update_seconds,
                viewer_cpu_share=handle.update_cpu_seconds / max(time.process_time() - cpu0, 1e-9),
                clients=handle.client_count(),
                cloud_messages=handle.scene.stats.cloud_messages,
            )
        return out
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        if handle is not None:
            handle.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=160, help="network long side (image 4:3 at this width)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per condition, interleaved")
    ap.add_argument("--rate", type=float, default=2.0, help="viewer update rate (Hz)")
    ap.add_argument("--browser", action="store_true", help="connect a headless Chromium during the runs")
    a = ap.parse_args()
    browser = shutil.which("chromium") if a.browser else None
    if a.browser and browser is None:
        print("chromium not found: running without a connected browser")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        seq = generate_sequence(tmp / "seq", a.frames, a.size, a.size * 3 // 4, 0)
        src = open_source(seq)
        prior = OraclePrior.from_source(src, size=a.size, noise="mast3r", seed=0)
        one_run(src, prior, a.size, False, a.rate, None, tmp)  # warm-up: kernel loading, first-call costs
        rows: dict[bool, list[dict]] = {False: [], True: []}
        for r in range(a.repeats):
            for viewer in (False, True):
                row = one_run(src, prior, a.size, viewer, a.rate, browser, tmp)
                rows[viewer].append(row)
                extra = (
                    f", viewer: {row['updates']} updates, {row['viewer_thread_s']:.2f} s in its thread "
                    f"= {100 * row['viewer_cpu_share']:.1f}% of the process CPU, "
                    f"{row['cloud_messages']} point-cloud messages, {row['clients']} browser(s)"
                    if viewer
                    else ""
                )
                print(
                    f"  repeat {r} viewer {'on ' if viewer else 'off'}: {row['step_ms']:.1f} ms/frame "
                    f"(process CPU {row['cpu_ms']:.1f} ms/frame) "
                    f"({row['keyframes']} keyframes{extra})",
                    flush=True,
                )
    off = statistics.median(x["step_ms"] for x in rows[False])
    on = statistics.median(x["step_ms"] for x in rows[True])
    pairs = [b["step_ms"] / o["step_ms"] for o, b in zip(rows[False], rows[True])]
    cpu_off = statistics.median(x["cpu_ms"] for x in rows[False])
    cpu_on = statistics.median(x["cpu_ms"] for x in rows[True])
    print(
        f"{a.frames} frames, network {a.size}px: tracking {off:.1f} ms/frame without the viewer, {on:.1f} "
        f"with it: wall ratio {on / off:.3f} (per repeat: {', '.join(f'{p:.3f}' for p in pairs)}); "
        f"process CPU (all threads, the viewer's included) {cpu_off:.1f} -> {cpu_on:.1f} ms/frame: "
        f"ratio {cpu_on / cpu_off:.3f}; the viewer thread's own CPU time: "
        f"{100 * statistics.median(x['viewer_cpu_share'] for x in rows[True]):.1f}% of the process CPU "
        f"(goal: ratios <= 1.05)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
