"""The report in a real headless Chromium: it loads without console errors and draws a non-blank page.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` with a small
stdlib client. When Chromium is missing, the session installs Debian's package if it runs as
root with apt-get; otherwise the tests are skipped with the reason.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time

import cv2
import numpy as np
import pytest

from onnxsight.report import ReportData, ReportOptions, write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_TIMEOUT = 900
SMALL = ReportOptions(images=3, predictions=6, feature_images=1, smooth_samples=4, ig_steps=8, saliency_count=10,
                      saliency_classes=1, topk_units=1, k=3, embed_count=60, embed_method="pca", maximize_steps=10,
                      gradcheck_layers=("dense_1",))


def _find() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    found = _find()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Chromium is not installed and this session cannot apt-get it (needs root); "
                    "install Debian's 'chromium' package to run the browser checks")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with open("/tmp/onnxsight-chromium-install.lock", "w") as lock:  # pytest-xdist workers install once
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _find() or _install(env)


def _install(env: dict) -> str:
    try:
        for command in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "chromium"]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
            if done.returncode == 0 and _find():
                return _find()
    except subprocess.TimeoutExpired:
        pytest.skip(f"installing Chromium with apt-get took over {INSTALL_TIMEOUT} s")
    pytest.skip(f"apt-get could not install Chromium: {done.stderr.strip().splitlines()[-1:] or done.returncode}")


class DevTools:
    """A minimal Chrome DevTools protocol client: JSON messages separated by NUL bytes on fds 3 (in) and 4 (out)."""

    def __init__(self, binary: str, profile: str):
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        # the child must see its ends as fds 3 and 4: park them above 10 first so dup2 cannot clobber one
        child_in, child_out = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser))
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe", f"--user-data-dir={profile}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=lambda: (os.dup2(child_in, 3), os.dup2(child_out, 4)),
        )
        for fd in (to_browser, from_browser, child_in, child_out):
            os.close(fd)
        self._buffer, self._next, self.events = b"", 0, []

    def send(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        """Call ``method`` and wait for its result; events that arrive meanwhile are kept in ``events``."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive(timeout)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._receive(timeout))

    def _receive(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        os.close(self._read)
        os.close(self._write)


def load_page(binary: str, url: str, profile: str, width: int = 1280) -> tuple[list[str], np.ndarray]:
    """Open ``url``; the console errors it raised and a full-page screenshot (BGR)."""
    browser = DevTools(binary, profile)
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session)
        browser.send("Emulation.setDeviceMetricsOverride", session, width=width, height=900, deviceScaleFactor=1,
                     mobile=False)
        browser.send("Page.navigate", session, url=url)
        browser.wait_for("Page.loadEventFired")
        size = browser.send("Page.getLayoutMetrics", session)["cssContentSize"]
        shot = browser.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        errors = [_describe(e) for e in browser.events if _is_error(e)]
    finally:
        browser.close()
    image = cv2.imdecode(np.frombuffer(base64.b64decode(shot["data"]), np.uint8), cv2.IMREAD_COLOR)
    return errors, image


def _is_error(event: dict) -> bool:
    method, params = event.get("method"), event.get("params", {})
    return (method == "Runtime.exceptionThrown"
            or (method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"))
            or (method == "Log.entryAdded" and params["entry"].get("level") == "error"))


def _describe(event: dict) -> str:
    params = event["params"]
    return params.get("entry", {}).get("text") or json.dumps(params)[:300]


@pytest.fixture(scope="module")
def report_file(model, digits_data, tmp_path_factory):
    data = ReportData(digits_data.x_test[:100], digits_data.y_test[:100], digits_data.class_names, "digits")
    return write_report(model, data, tmp_path_factory.mktemp("browser") / "report.html", SMALL).path


def test_the_report_loads_without_console_errors_and_draws_a_full_non_blank_page(chromium, report_file, tmp_path):
    errors, shot = load_page(chromium, report_file.resolve().as_uri(), str(tmp_path / "profile"))
    assert errors == []
    assert shot.shape[0] > 3000 and shot.shape[1] == 1280  # the whole page, not one viewport
    assert shot.std() > 20 and (shot < 200).any(axis=2).mean() > 0.05  # drawn: not one flat colour, not all white


def test_the_console_check_sees_errors(chromium, tmp_path):
    """The same check fails on a page that reaches for the network under the report's policy and logs an error."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src \'none\'">'
        '</head><body><img src="http://example.invalid/x.png"><p>broken</p></body></html>')
    errors, _ = load_page(chromium, page.resolve().as_uri(), str(tmp_path / "profile"))
    assert errors and any("Content Security Policy" in e for e in errors)
