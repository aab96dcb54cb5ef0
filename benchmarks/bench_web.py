"""Web viewer speed (``medai web``): time to the first rendered frame and per-frame render time of the web path,
3D view with CT volume rendering vs surfaces only.

    python benchmarks/bench_web.py [--frames 15] [--size 800 600] [--no-browser] [--json PATH]

1. Cold start as a user meets it: ``medai web`` started as a subprocess on a free loopback port, Debian's
   chromium (Playwright, headless, non-loopback requests aborted) opens the page; seconds until the port
   listens, until the inputs (the samples) are loaded, and until the page shows the 3D view's first image.
   Then, in that page, frames per second the browser receives while the mouse turns the 3D view (after a
   segmentation and a registration: the fusion scene), volume rendering on and off.
2. Per frame, in this process: the viewer's own trame-slicer views (no browser), after the same jobs; the
   camera turns 3 degrees a frame; render + grab of the window (what trame-rca streams) + JPEG encode at the
   still quality, median over ``--frames``: 3D view with the CT volume rendering (still: "Normal" quality; while
   the mouse drags: "Adaptive"), with surfaces only (volume rendering hidden), and the axial slice view.
Prints a table; nothing is asserted. Results of record: ``results/bench_web.{txt,json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STILL_QUALITY = 90  # trame-rca's still-frame JPEG quality


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_jobs(page, at_least: int, timeout_s: float = 300) -> None:
    page.wait_for_function(f"Number(document.querySelector('#jobs-done')?.textContent) >= {at_least} || "
                           f"!!document.querySelector('#error')", timeout=timeout_s * 1000, polling=100)
    if page.locator("#error").count():
        raise RuntimeError(page.inner_text("#error"))


def _frames_received(page, seconds: float) -> float:
    """Frames per second the page receives while the mouse drags across the 3D view for ``seconds``."""
    view = page.locator("#views img.image-display-area").nth(0)
    box = view.bounding_box()
    page.evaluate("""() => { window.__frames = 0;
        const img = document.querySelectorAll('#views img.image-display-area')[0];
        window.__observer = new MutationObserver(() => window.__frames++);
        window.__observer.observe(img, {attributes: true, attributeFilter: ['src']}); }""")
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 100, cy)
    page.mouse.down()
    start = time.perf_counter()
    step = 0
    while time.perf_counter() - start < seconds:
        step += 1
        page.mouse.move(cx - 100 + (step * 7) % 200, cy + 20 * ((step // 30) % 2), steps=1)
        page.wait_for_timeout(20)
    page.mouse.up()
    elapsed = time.perf_counter() - start
    page.wait_for_timeout(300)
    frames = page.evaluate("() => { window.__observer.disconnect(); return window.__frames; }")
    return frames / elapsed


def browser_path(results: dict) -> None:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    folder = tempfile.mkdtemp(prefix="bench-web-")
    log = open(os.path.join(folder, "server.log"), "w")
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "medai.cli", "web", "--port", str(port)], stdout=log,
                               stderr=subprocess.STDOUT, cwd=folder)
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(f"medai web exited: see {log.name}")
                time.sleep(0.05)
        listening = time.perf_counter() - start
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                os.path.join(folder, "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1400, "height": 860})
            page = context.new_page()
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
                (f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", "data:", "blob:")) else route.abort())
            opened = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/")
            _wait_jobs(page, 1)
            loaded = time.perf_counter() - start
            page.wait_for_function("() => { const img = document.querySelectorAll('#views img.image-display-area')[0];"
                                   " return img && img.complete && img.naturalWidth > 0; }", timeout=60000, polling=50)
            first = time.perf_counter()
            results["cold_start"] = {"port_listening_s": round(listening, 2), "inputs_loaded_s": round(loaded, 2),
                                     "first_3d_frame_in_page_s": round(first - start, 2),
                                     "page_open_to_first_3d_frame_s": round(first - opened, 2)}
            for n, job in enumerate(("segment", "register"), start=2):
                page.click(f"#btn-{job}")
                _wait_jobs(page, n)
            page.wait_for_timeout(1500)
            fps = {"volume_rendering": _frames_received(page, 4.0)}
            page.click("#switch-vr")
            page.wait_for_timeout(1500)
            fps["surfaces_only"] = _frames_received(page, 4.0)
            results["browser_frames_per_s_while_rotating"] = {k: round(v, 2) for k, v in fps.items()}
            context.close()
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def in_process_path(results: dict, frames: int, size: tuple[int, int]) -> None:
    import numpy as np
    from slicer import vtkMRMLLayerDisplayableManager
    from trame_rca.encoders import RcaImageEncoder
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonDataModel import vtkImageData

    from medai_web.app import MedAIWebViewer

    start = time.perf_counter()
    viewer = MedAIWebViewer()
    seconds = {"viewer_created_s": time.perf_counter() - start}
    for job in ("load", "segment", "register"):
        seconds[f"{job}_s"] = viewer.run_now(job)
    results["in_process_jobs"] = {k: round(v, 2) for k, v in seconds.items()}
    encoder = RcaImageEncoder.TURBO_JPEG
    buffer = vtkImageData()

    def frame_seconds(view, turn) -> tuple[float, float]:
        """(render + grab + encode, render alone) seconds of one frame."""
        turn()
        t0 = time.perf_counter()
        view.render_window().Render()
        t1 = time.perf_counter()
        vtkMRMLLayerDisplayableManager.RenderWindowBufferToImage(view.render_window(), buffer)
        cols, rows, _ = buffer.GetDimensions()
        pixels = vtk_to_numpy(buffer.GetPointData().GetScalars()).reshape(rows, cols, -1)[::-1].copy()
        encoder.encode(pixels, cols, rows, STILL_QUALITY)
        return time.perf_counter() - t0, t1 - t0

    def measure(view, turn) -> dict:
        view.render_window().SetSize(*size)
        first = frame_seconds(view, lambda: None)
        times = [frame_seconds(view, turn) for _ in range(frames)]
        return {"first_frame_s": round(first[0], 3), "median_frame_s": round(statistics.median(t[0] for t in times), 3),
                "median_render_s": round(statistics.median(t[1] for t in times), 3),
                "frames_per_s": round(1 / statistics.median(t[0] for t in times), 2), "frames": frames}

    threed = viewer.threed_view
    camera = threed.renderer().GetActiveCamera()
    turn = lambda: (camera.Azimuth(3.0), threed.renderer().ResetCameraClippingRange())  # noqa: E731
    per_frame = {}
    viewer._on_volume_rendering(True)
    per_frame["3d_volume_rendering"] = measure(threed, turn)
    view_node = threed.get_view_node()
    view_node.SetVolumeRenderingQuality(view_node.Adaptive)  # what the viewer uses while the mouse drags
    per_frame["3d_volume_rendering_dragging"] = measure(threed, turn)
    view_node.SetVolumeRenderingQuality(view_node.Normal)
    viewer._on_volume_rendering(False)
    per_frame["3d_surfaces_only"] = measure(threed, turn)
    axial = viewer.slice_view
    slice_node = axial.get_view_node()
    offsets = iter(np.linspace(-60, 60, frames + 1))
    per_frame["axial_slice"] = measure(axial, lambda: slice_node.SetSliceOffset(float(next(offsets))))
    results["per_frame_in_process"] = per_frame
    results["render_size"] = list(size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=15, help="frames per in-process measurement")
    parser.add_argument("--size", type=int, nargs=2, default=[800, 600], metavar=("W", "H"),
                        help="render window size of the in-process views")
    parser.add_argument("--no-browser", action="store_true", help="skip the subprocess + chromium measurements")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = {"cpu_count": os.cpu_count(), "opengl_window": os.environ.get("VTK_DEFAULT_OPENGL_WINDOW", "EGL")}
    if not args.no_browser:
        if not os.path.exists(CHROMIUM):
            print(f"{CHROMIUM} missing: browser measurements skipped")
        else:
            browser_path(results)
    in_process_path(results, args.frames, tuple(args.size))

    print("\nWeb viewer (trame-slicer), sample CT 128x128x59, fusion scene after segmentation + registration")
    if "cold_start" in results:
        c = results["cold_start"]
        print(f"| cold start (medai web -> page)      | port {c['port_listening_s']:.1f} s, inputs loaded "
              f"{c['inputs_loaded_s']:.1f} s, first 3D frame in the page {c['first_3d_frame_in_page_s']:.1f} s "
              f"(page open -> frame {c['page_open_to_first_3d_frame_s']:.2f} s) |")
        f = results["browser_frames_per_s_while_rotating"]
        print(f"| browser, frames/s while rotating 3D | volume rendering {f['volume_rendering']:.1f}, surfaces only "
              f"{f['surfaces_only']:.1f} |")
    j = results["in_process_jobs"]
    print(f"| in process: viewer {j['viewer_created_s']:.1f} s, load {j['load_s']:.1f} s, "
          f"segment {j['segment_s']:.1f} s, register {j['register_s']:.1f} s |")
    w, h = results["render_size"]
    print(f"\n| view ({w}x{h}, in process)       | first frame | median frame (render+grab+JPEG) | median render "
          f"| frames/s |")
    print("|---|---|---|---|---|")
    for name, row in results["per_frame_in_process"].items():
        print(f"| {name:31s} | {row['first_frame_s']:.3f} s | {row['median_frame_s']:.3f} s | "
              f"{row['median_render_s']:.3f} s | {row['frames_per_s']:.1f} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
