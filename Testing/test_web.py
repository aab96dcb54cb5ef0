"""End-to-end browser test of the web viewer (``medai web``): the viewer runs as a subprocess on a free loopback
port; Playwright drives Debian's chromium (headless, fresh profile, every non-loopback request aborted); one
segmentation (ct-liver on the sample CT) and one registration (the sample frame) run through the page, and the
test asserts on what the page SHOWS: the liver's colour in the 3D view, the DRR-over-frame overlay.

Screenshots are kept under pytest's tmp_path (web_*.png). Skips only when chromium, Playwright or trame-slicer
is absent (``Testing/run.sh`` installs them).
"""
from __future__ import annotations

import colorsys
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.rendering

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LIVER_RGB = (0.86, 0.55, 0.45)  # ct-liver's segment colour (medai.segmentation.registry)
JOB_TIMEOUT_S = 240


def _requirements_missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} not installed (Debian package chromium; Testing/run.sh installs it)"
    for module in ("playwright", "trame_slicer"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} not installed (pip install -e \".[web]\")"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback(url: str) -> bool:
    if url.startswith(("data:", "blob:")):
        return True
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]")


@pytest.fixture(scope="module")
def viewer_url():
    missing = _requirements_missing()
    if missing:
        pytest.skip(missing)
    port = _free_port()
    log_dir = tempfile.mkdtemp(prefix="medai-web-test-")
    log_path = os.path.join(log_dir, "server.log")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "medai.cli", "web", "--port", str(port)], stdout=log,
                                   stderr=subprocess.STDOUT, cwd=log_dir, env=env)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"medai web exited with {process.returncode}:\n{Path(log_path).read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"medai web did not listen within 90 s:\n{Path(log_path).read_text()[-3000:]}")
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(log_dir, ignore_errors=True)


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _liver_coloured(rgb: np.ndarray) -> np.ndarray:
    """Pixels with the liver segment's hue and saturation (any shading): boolean (H, W)."""
    from matplotlib.colors import rgb_to_hsv

    hue, saturation, _ = colorsys.rgb_to_hsv(*LIVER_RGB)
    hsv = rgb_to_hsv(rgb.astype(np.float32) / 255)
    return (np.abs(hsv[..., 0] - hue) < 0.035) & (hsv[..., 1] > 0.5 * saturation) & (hsv[..., 2] > 0.15)


def _saturation(rgb: np.ndarray) -> float:
    rgb = rgb.astype(np.float32)
    return float((rgb.max(axis=2) - rgb.min(axis=2)).mean())


def _run_job(page, button: str) -> float:
    done = int(page.text_content("#jobs-done"))
    start = time.monotonic()
    page.click(f"#btn-{button}")
    page.wait_for_function(f"Number(document.querySelector('#jobs-done').textContent) > {done} || "
                           f"!!document.querySelector('#error')", timeout=JOB_TIMEOUT_S * 1000, polling=250)
    error = page.locator("#error")
    assert error.count() == 0, error.inner_text()
    return time.monotonic() - start


def _view_until(page, index: int, condition, timeout_s: float = 30.0) -> np.ndarray:
    """Screenshot of view ``index`` (0: 3D, 1: axial) until ``condition(pixels)`` holds (the stream catches up)."""
    view = page.locator("#views img.image-display-area").nth(index)
    deadline = time.monotonic() + timeout_s
    while True:
        pixels = _pixels(view.screenshot())
        if condition(pixels) or time.monotonic() > deadline:
            return pixels
        time.sleep(0.5)


def test_web_viewer_segments_and_registers(viewer_url, tmp_path):
    from playwright.sync_api import sync_playwright

    left_machine = []

    def only_loopback(route):
        if _loopback(route.request.url):
            route.continue_()
        else:
            left_machine.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 860})
        try:
            page = context.new_page()
            page.route("**/*", only_loopback)
            page.goto(viewer_url)
            # The inputs (the samples: CT, a frame rendered from it, an X-ray) load as the first job.
            page.wait_for_function("Number(document.querySelector('#jobs-done')?.textContent) >= 1 || "
                                   "!!document.querySelector('#error')", timeout=JOB_TIMEOUT_S * 1000, polling=250)
            assert page.locator("#error").count() == 0, page.inner_text("#error")
            page.wait_for_selector("#views img.image-display-area", timeout=30000)
            page.screenshot(path=str(tmp_path / "web_loaded.png"))

            # Segmentation, seen with the CT volume rendering off: the only coloured surface is the liver.
            page.click("#switch-vr")
            dark = _view_until(page, 0, lambda p: _liver_coloured(p).mean() < 0.001)
            assert _liver_coloured(dark).mean() < 0.001, "liver-coloured pixels before segmenting"
            _run_job(page, "segment")
            assert "liver" in page.inner_text("#segmentation-text")
            shown = _view_until(page, 0, lambda p: _liver_coloured(p).mean() > 0.01)
            page.screenshot(path=str(tmp_path / "web_segmented.png"))
            liver_fraction = _liver_coloured(shown).mean()
            assert liver_fraction > 0.01, f"only {liver_fraction:.2%} of the 3D view has the liver's colour"

            # Registration with the volume rendering back on.
            page.click("#switch-vr")
            before = _view_until(page, 0, lambda p: True)
            _run_job(page, "register")
            assert "confidence" in page.inner_text("#registration-text")
            after = _view_until(page, 0, lambda p: np.abs(p.astype(int) - before).mean() > 5)
            page.screenshot(path=str(tmp_path / "web_registered.png"))
            assert np.abs(after.astype(int) - before).mean() > 5, "3D view unchanged by the registration"
            assert _liver_coloured(after).mean() > 0.002, "liver surface gone from the 3D fusion view"

            # The overlay is shown: a DRR blended over the frame, coloured where the frame alone is grey.
            frame = _pixels(page.locator("#frame-img").screenshot())
            overlay = _pixels(page.locator("#overlay-img").screenshot())
            assert overlay.std() > 20, "overlay image blank"
            assert _saturation(overlay) > _saturation(frame) + 10, "overlay not distinguishable from the frame alone"
            h, w = min(frame.shape[0], overlay.shape[0]), min(frame.shape[1], overlay.shape[1])
            assert np.abs(overlay[:h, :w].astype(int) - frame[:h, :w]).mean() > 10
        finally:
            context.close()
    assert all(not _loopback(url) for url in left_machine)  # every other request was aborted, none let through
