"""`serve`: a reconstruction in the browser (viser): the coloured point cloud with a live confidence
slider, the camera frusta showing their images, a point-size slider.

viser runs a web server in a background thread; the page (three.js, WebGL) talks to it over a
websocket, so `f3d view DIR` works on a remote machine through an SSH port forward
(`ssh -L 8080:localhost:8080 host`). Each slider change re-filters the points on the Python side and
sends the new cloud.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from f3d_jax.viewer.scene import ViewerScene, prepare_scene, rotation_to_wxyz, visible_points

__all__ = ["RECONSTRUCTION_FILE", "Viewer", "ViewerError", "load_reconstruction", "serve"]

RECONSTRUCTION_FILE = "reconstruction.npz"  # what `f3d reconstruct` / `f3d demo` write next to the exports


class ViewerError(ValueError):
    """Bad input to the viewer (missing or unreadable result, viser not installed): one line naming the
    file or argument."""


def load_reconstruction(path: str | os.PathLike) -> Any:
    """A `Reconstruction` from a result folder (holding `reconstruction.npz`) or from the `.npz` itself."""
    p = Path(path)
    if p.is_dir():
        p = p / RECONSTRUCTION_FILE
        if not p.is_file():
            raise ViewerError(f"{path}: no {RECONSTRUCTION_FILE} in this folder (pass the folder written by "
                              "`f3d reconstruct`/`f3d demo`, or the .npz file)")
    elif not p.is_file():
        raise ViewerError(f"{path}: no such file or folder")
    from f3d_jax.export import Reconstruction, ReconstructionError  # here: `import f3d_jax.viewer` stays cheap

    try:
        return Reconstruction.load(p)
    except ReconstructionError as e:  # already names the file; one error type for the viewer's callers
        raise ViewerError(str(e)) from None


def _import_viser() -> Any:
    try:
        import viser
    except ImportError as e:  # a broken or stripped environment: say what to install
        raise ViewerError(f"the viewer needs the `viser` package ({e}); install it with "
                          "`python -m pip install 'viser>=1.0,<2'`") from e
    return viser


class Viewer:
    """A running viewer: the viser server, its scene handles and the current filter.

    `set_min_confidence`, `set_point_size` and `set_export_mask_only` do what the sliders do (the GUI
    calls them); `num_points` is the number of points currently drawn. `stop()` shuts the server down.
    """

    def __init__(self, server: Any, scene: ViewerScene, gui: dict[str, Any], point_cloud: Any,
                 frusta: list[Any]) -> None:
        self.server = server
        self.scene = scene
        self.gui = gui
        self.point_cloud = point_cloud
        self.frusta = frusta
        self.min_conf = float(gui["min_conf"].value)
        self.export_mask_only = bool(gui["export_mask"].value)
        self._lock = threading.Lock()  # slider callbacks run on viser's thread pool

    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def url(self) -> str:
        host = self.server.get_host()
        return f"http://{'localhost' if host in ('0.0.0.0', '::', '') else host}:{self.port}"

    @property
    def num_points(self) -> int:
        return int(self.point_cloud.points.shape[0])

    def set_min_confidence(self, value: float) -> int:
        """Draws the points with confidence >= value; returns how many."""
        with self._lock:
            self.min_conf = float(value)
            return self._refresh()

    def set_export_mask_only(self, value: bool) -> int:
        with self._lock:
            self.export_mask_only = bool(value)
            return self._refresh()

    def set_point_size(self, value: float) -> None:
        self.point_cloud.point_size = float(value)

    def _refresh(self) -> int:
        keep = visible_points(self.scene, self.min_conf, self.export_mask_only)
        points, colors = self.scene.points[keep], self.scene.colors[keep]
        if not len(points):  # viser wants a non-empty cloud: one invisible point stands in
            points, colors = self.scene.centre[None].astype(np.float32), np.zeros((1, 3), np.uint8)
        with self.server.atomic():  # points and colours reach the browser together (same length)
            self.point_cloud.points = points
            self.point_cloud.colors = colors
        count = int(keep.sum())
        self.gui["count"].content = f"**{count:,}** of {len(self.scene.points):,} points"
        return count

    def stop(self) -> None:
        self.server.stop()


def _frusta(server: Any, scene: ViewerScene) -> list[Any]:
    wxyz = rotation_to_wxyz(scene.cam2world[:, :3, :3])
    handles = []
    for i, name in enumerate(scene.names):
        handles.append(server.scene.add_camera_frustum(
            f"/cameras/{i:03d}", fov=float(scene.fov[i]), aspect=float(scene.aspect[i]),
            scale=scene.frustum_scale, color=(255, 96, 32), image=scene.thumbnails[i], format="jpeg",
            jpeg_quality=85, wxyz=wxyz[i], position=scene.cam2world[i, :3, 3], thickness=0.02 * scene.frustum_scale))
        # a label per camera would clutter large scenes; the name is in the frustum's node path
    return handles


def serve(path_or_recon: Any, port: int = 8080, host: str = "127.0.0.1", block: bool = True, *,
          max_points: int = 2_000_000, verbose: bool = True) -> Viewer:
    """Serves a reconstruction in the browser at http://host:port.

    Args:
        path_or_recon: a result folder (holding `reconstruction.npz`, as `f3d reconstruct`/`f3d demo` write
            it), the `.npz` itself, or a `Reconstruction`.
        port: the port to listen on (0 picks a free one; a busy one moves to the next free one, see
            `Viewer.port`).
        host: "127.0.0.1" (this machine only; the default) or "0.0.0.0" (every interface).
        block: keep serving until Ctrl-C (then stop); False returns the running `Viewer` at once.
        max_points: a seeded subset of at most this many points is drawn (browsers slow down past a few
            million).
        verbose: print the address (and viser's own messages).

    Returns:
        The `Viewer` (already stopped when `block`).
    """
    recon = load_reconstruction(path_or_recon) if isinstance(path_or_recon, (str, os.PathLike)) else path_or_recon
    if not isinstance(port, int) or not 0 <= port < 65536:
        raise ViewerError(f"port must be an integer in [0, 65535], got {port!r}")
    scene = prepare_scene(recon, max_points=max_points)
    viser = _import_viser()
    server = viser.ViserServer(host=host, port=port, label="f3d-jax", verbose=verbose)
    try:
        # OpenCV cameras look along +z with y down: the first camera's "up" (-y) is the scene's up
        server.scene.set_up_direction(tuple(-scene.cam2world[0, :3, 1]))
        c0 = scene.cam2world[0]
        server.initial_camera.position = tuple(c0[:3, 3] - c0[:3, 2] * 2 * scene.frustum_scale)
        server.initial_camera.look_at = tuple(scene.centre)
        server.initial_camera.up = tuple(-c0[:3, 1])

        lo, hi = scene.conf_range()
        thr = min(max(scene.default_threshold(), lo), hi)
        gui = {
            "count": server.gui.add_markdown(""),
            "min_conf": server.gui.add_slider("Min confidence", min=lo, max=hi, step=(hi - lo) / 200,
                                              initial_value=thr, hint="draw the points with confidence >= this"),
            "export_mask": server.gui.add_checkbox("Export mask only", initial_value=False,
                                                   hint="also hide the pixels the exports dropped"),
            "point_size": server.gui.add_slider("Point size", min=scene.point_size / 10, max=scene.point_size * 10,
                                                step=scene.point_size / 10, initial_value=scene.point_size),
            "show_cameras": server.gui.add_checkbox("Cameras", initial_value=True),
        }
        keep = visible_points(scene, thr)
        cloud = server.scene.add_point_cloud(
            "/points", points=scene.points[keep] if keep.any() else scene.centre[None].astype(np.float32),
            colors=scene.colors[keep] if keep.any() else np.zeros((1, 3), np.uint8),
            point_size=scene.point_size, point_shape="rounded", precision="float32", point_shading="flat")
        viewer = Viewer(server, scene, gui, cloud, _frusta(server, scene))
        viewer.set_min_confidence(thr)

        gui["min_conf"].on_update(lambda _: viewer.set_min_confidence(gui["min_conf"].value))
        gui["export_mask"].on_update(lambda _: viewer.set_export_mask_only(gui["export_mask"].value))
        gui["point_size"].on_update(lambda _: viewer.set_point_size(gui["point_size"].value))

        def _show_cameras(_: Any) -> None:
            for f in viewer.frusta:
                f.visible = bool(gui["show_cameras"].value)

        gui["show_cameras"].on_update(_show_cameras)
    except BaseException:
        server.stop()
        raise
    if verbose:
        print(f"f3d viewer: {len(scene.names)} cameras, {len(scene.points):,} points at {viewer.url} (Ctrl-C stops)")
    if block:
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            viewer.stop()
    return viewer
