"""Screenshot of the viewer as a user sees it: starts `f3d_jax.viewer.serve` on a reconstruction and takes a
headless-Chromium screenshot of the page (WebGL through SwiftShader, so no GPU is needed).

    python tools/screenshot_viewer.py                       # a synthetic textured room -> docs/viewer.png
    python tools/screenshot_viewer.py --recon f3d_demo/     # a result folder (reconstruction.npz) or the .npz

Needs Debian's chromium (`apt-get install -y chromium`); `--chromium PATH` picks another binary. A tool, not a
test: look at the PNG. The synthetic scene gives walls and ceiling a low confidence, so the default threshold of
the confidence slider hides them and the room's floor, objects and cameras are seen from above.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from f3d_jax.eval.synthetic import make_scene, world_points  # noqa: E402
from f3d_jax.viewer import load_reconstruction, serve  # noqa: E402

PALETTE = np.array([[196, 160, 120], [150, 180, 200], [200, 190, 150], [170, 200, 160], [120, 110, 100],
                    [230, 230, 230], [220, 80, 60], [60, 140, 220], [240, 190, 50], [110, 200, 120],
                    [180, 90, 200], [90, 200, 200]], np.float64)


def synthetic_reconstruction(n: int = 6, H: int = 192, W: int = 256, seed: int = 1):
    """A textured synthetic room (f3d_jax.eval.synthetic) as a Reconstruction: checkered surfaces coloured by
    object, the walls and ceiling with low confidence (outside the export mask)."""
    from f3d_jax.export import Reconstruction

    scene = make_scene(n=n, H=H, W=W, seed=seed)
    pts = world_points(scene)
    checker = (np.floor(pts * 4).astype(np.int64).sum(-1) % 2).astype(np.float64)
    sid = scene.surface_id.astype(np.int64) % len(PALETTE)
    images = np.clip(PALETTE[sid] * (0.78 + 0.22 * checker)[..., None], 0, 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    # walls and ceiling below the export threshold: the default slider position shows floor, objects, cameras
    conf = np.where(scene.surface_id <= 3, rng.uniform(1.0, 1.9, scene.depth.shape),
                    np.where(scene.surface_id == 5, 1.2, rng.uniform(2.0, 12.0, scene.depth.shape))).astype(np.float32)
    K = np.zeros((n, 3, 3))
    K[:, 0, 0] = K[:, 1, 1] = scene.focals
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = W / 2, H / 2, 1.0
    to_orig = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (n, 1, 1))
    return Reconstruction(images=images, cam2world=scene.cam2world, intrinsics=K, depth=scene.depth.astype(np.float32),
                          pts3d=pts.astype(np.float32), conf=conf, mask=conf >= 2.0,
                          names=tuple(f"view{i:02d}.png" for i in range(n)),
                          orig_sizes=np.tile([W, H], (n, 1)), to_orig=to_orig)


def find_chromium(explicit: str | None) -> str:
    for c in ([explicit] if explicit else []) + ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(c) if c else None
        if path:
            return path
    sys.exit("no chromium found: `apt-get install -y chromium` (Debian) or pass --chromium PATH")


class _DevTools:
    """The few Chrome DevTools Protocol calls the screenshot needs, over the page's websocket."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect  # websockets comes with viser

        self.ws = connect(ws_url, max_size=64 * 1024 * 1024)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries our id
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


# the GUI has been received (slider labels), the canvas exists; software WebGL's notice closed, since
# it is a headless-browser artefact that would cover the scene
_READY_JS = "document.body.innerText.includes('Min confidence') && !!document.querySelector('canvas')"
_CLOSE_NOTICES_JS = ("document.querySelectorAll('.mantine-Notification-closeButton, .mantine-Notification-root "
                     "button').forEach(b => b.click()); document.querySelectorAll('.mantine-Notification-root').length")


def screenshot(url: str, out: Path, chromium: str, size: tuple[int, int], settle_s: float, timeout: float) -> None:
    """Headless Chromium with a throw-away profile and no network beyond the page; SwiftShader draws the WebGL
    canvas. Driven over the DevTools protocol: load the page, wait until the viewer's GUI and scene arrived,
    close the software-rendering notice, let it draw for `settle_s`, capture."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="f3d-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--use-gl=angle", "--use-angle=swiftshader",
               "--enable-unsafe-swiftshader", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
               "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
               f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "about:blank"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + timeout
            port_file = Path(profile) / "DevToolsActivePort"  # chromium writes its port here
            while not port_file.is_file() or len(port_file.read_text().splitlines()) < 2:
                if proc.poll() is not None or time.time() > deadline:
                    sys.exit(f"chromium did not start ({proc.poll()}):\n{proc.stderr.read()[-3000:]}")
                time.sleep(0.1)
            port = int(port_file.read_text().splitlines()[0])
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            page = next(t for t in targets if t.get("type") == "page")
            dev = _DevTools(page["webSocketDebuggerUrl"])
            dev.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                     mobile=False)
            dev.call("Page.enable")
            dev.call("Page.navigate", url=url)
            while not dev.js(_READY_JS):
                if time.time() > deadline:
                    sys.exit(f"the viewer page did not show its GUI within {timeout:.0f} s")
                time.sleep(0.25)
            end = time.time() + settle_s
            while time.time() < end:  # the notice may appear after the first frames
                dev.js(_CLOSE_NOTICES_JS)
                time.sleep(0.5)
            png = base64.b64decode(dev.call("Page.captureScreenshot", format="png")["data"])
            dev.ws.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    tmp_png = out.with_name(f".{out.name}.tmp")
    tmp_png.write_bytes(png)
    os.replace(tmp_png, out)  # atomic: the PNG appears complete or not at all


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recon", help="result folder (with reconstruction.npz) or .npz; default: a synthetic room")
    ap.add_argument("--out", default=str(REPO / "docs" / "viewer.png"))
    ap.add_argument("--size", default="1280x800", help="window WxH")
    ap.add_argument("--chromium", default=None)
    ap.add_argument("--settle", type=float, default=20.0, help="seconds the page draws after its GUI arrived")
    ap.add_argument("--camera", default=None, help="'x,y,z;lx,ly,lz': view position and look-at (world)")
    args = ap.parse_args(argv)

    recon = load_reconstruction(args.recon) if args.recon else synthetic_reconstruction()
    chromium = find_chromium(args.chromium)
    viewer = serve(recon, port=0, block=False, verbose=False)
    try:
        urllib.request.urlopen(viewer.url, timeout=10).read(64)  # the page answers before chromium starts
        if args.camera:
            pos, look = (np.array([float(x) for x in part.split(",")]) for part in args.camera.split(";"))
        else:  # above and behind the cameras, looking between them and the scene's centre
            cams = viewer.scene.cam2world[:, :3, 3].mean(0)
            look = 0.5 * (viewer.scene.centre + cams)
            up = -viewer.scene.cam2world[0, :3, 1]
            back = cams - viewer.scene.centre
            back -= up * (back @ up)
            back /= max(np.linalg.norm(back), 1e-9)
            r = viewer.scene.frustum_scale / 0.15  # the scene's extent
            pos = look + 1.7 * r * back + 1.6 * r * up
        viewer.server.initial_camera.position = tuple(pos)  # world coordinates; new clients start here
        viewer.server.initial_camera.look_at = tuple(look)
        url = viewer.url
        w, h = (int(x) for x in args.size.split("x"))
        t0 = time.time()
        screenshot(url, Path(args.out), chromium, (w, h), args.settle, timeout=120)
        print(f"{args.out}: {viewer.num_points:,} points, {len(viewer.frusta)} cameras, "
              f"{Path(args.out).stat().st_size / 1024:.0f} KB, chromium {time.time() - t0:.1f} s")
    finally:
        viewer.stop()


if __name__ == "__main__":
    main()
