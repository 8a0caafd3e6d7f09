"""Fixtures of the viewer tests: a synthetic run folder and headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.viewer import scenes


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    return scenes.make_run_dir(tmp_path / "run")


def _find_or_install_chromium() -> str | None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        # Same step as scripts/setup.sh, for a machine set up before it had it.
        subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
            shell=True,
            capture_output=True,
            timeout=900,
        )
        exe = shutil.which("chromium")
    return exe


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = _find_or_install_chromium()
    if exe is None:
        pytest.skip(
            "headless Chromium is not installed and cannot be installed here (needs root and apt-get: "
            "`apt-get install chromium`); a local run skips the browser test, on CI (CI=true) this is a failure"
        )
    return exe


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--enable-unsafe-swiftshader",
    "--use-angle=swiftshader",
    "--window-size=1200,800",
]


class Browser:
    """Headless Chromium driven over the DevTools protocol: load a page, wait for it, take screenshots.

    (`--screenshot` with a virtual-time budget races the websocket on a loaded machine: the page may be
    captured before the viewer's first messages arrive. Waiting in real time for the page's own text does not.)
    """

    def __init__(self, chromium: str, profile: Path):
        import re

        self.proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        port = None
        for _ in range(200):
            line = self.proc.stderr.readline()
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                port = int(m.group(1))
                break
            if not line and self.proc.poll() is not None:
                break
        assert port is not None, "chromium did not start its DevTools endpoint"
        self.port = port
        self._id = 0
        self.ws = None

    def _page_ws(self) -> str:
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        return pages[0]["webSocketDebuggerUrl"]

    def call(self, method: str, **params):
        import json

        from websockets.sync.client import connect

        if self.ws is None:
            self.ws = connect(self._page_ws(), max_size=None, open_timeout=20)
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self._id:
                assert "error" not in msg, msg
                return msg.get("result", {})

    def open(self, url: str, ready_text: str, timeout_s: float = 60.0) -> None:
        """Navigate to `url` and wait until the page's text contains `ready_text`."""
        import json
        import time

        self.call("Emulation.setDeviceMetricsOverride", width=1200, height=800, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        expr = f"document.body !== null && document.body.innerText.includes({json.dumps(ready_text)})"
        while time.monotonic() < deadline:
            if self.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value"):
                return
            time.sleep(0.25)
        raise AssertionError(f"the page never showed {ready_text!r} within {timeout_s} s")

    def screenshot(self, out: Path) -> np.ndarray:  # [H, W, 3] uint8
        import base64
        import io

        from PIL import Image

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        out.write_bytes(data)
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture()
def browser(chromium: str, tmp_path: Path):
    b = Browser(chromium, tmp_path / "profile")
    yield b
    b.close()
