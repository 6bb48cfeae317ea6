"""`summary.png`: a top view of the cameras (estimated, and known when there are known ones) over the point
cloud, the per-camera pose errors, and the images. PIL drawing only (no plotting dependency).

Also the pose comparison of `f3d demo`: the estimated poses are mapped onto the known ones by the Sim(3) fitted
to the camera centres (the reconstruction's scale and frame are arbitrary), then compared camera by camera.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

_KNOWN = (40, 150, 60)
_EST = (230, 110, 20)
_ERR = (200, 30, 30)
_GRID = (225, 225, 225)
_TEXT = (20, 20, 20)


@dataclasses.dataclass(frozen=True)
class PoseErrors:
    """Per-camera errors of estimated poses against known ones, after a Sim(3) fit of the camera centres.

    Attributes:
      aligned_c2w: (N, 4, 4) the estimated cam-to-world poses mapped into the known frame (rotation and
        centre; unit scale).
      rot_deg: (N,) angle of R_known^T R_aligned per camera, degrees.
      pos_err: (N,) distance between aligned and known camera centres (units of the known poses).
      spread: RMS distance of the known centres to their mean (the rig size the errors compare to).
      scale, rotation, translation: the Sim(3) x -> scale * rotation @ x + translation from the estimated
        world to the known one.
    """

    aligned_c2w: np.ndarray
    rot_deg: np.ndarray
    pos_err: np.ndarray
    spread: float
    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def to_known(self, X: np.ndarray) -> np.ndarray:
        """(..., 3) estimated-world points in the known world."""
        return self.scale * np.asarray(X, np.float64) @ self.rotation.T + self.translation


def pose_errors(est_c2w: np.ndarray, known_c2w: np.ndarray) -> PoseErrors:
    """Compare estimated with known cam-to-world poses (N >= 3 non-collinear centres for a unique fit)."""
    from f3d_jax.eval.metrics import sim3_centres

    est = np.asarray(est_c2w, np.float64)
    known = np.asarray(known_c2w, np.float64)
    s, R, t = sim3_centres(est, known)
    aligned = np.tile(np.eye(4), (len(est), 1, 1))
    aligned[:, :3, :3] = R @ est[:, :3, :3]
    aligned[:, :3, 3] = s * est[:, :3, 3] @ R.T + t
    rel = np.einsum("nji,njk->nik", known[:, :3, :3], aligned[:, :3, :3])
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)
    centres = known[:, :3, 3]
    spread = float(np.sqrt(np.mean(np.sum((centres - centres.mean(0)) ** 2, -1))))
    return PoseErrors(aligned, np.degrees(np.arccos(cos)), np.linalg.norm(aligned[:, :3, 3] - centres, axis=-1),
                      spread, s, R, t)


def _font(size: int) -> PIL.ImageFont.ImageFont:
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return PIL.ImageFont.load_default()


def _camera_glyph(c2w: np.ndarray, axes: tuple[int, int], length: float) -> np.ndarray:
    """(4, 2) top-view points of a camera: centre, left and right far corners of its field of view, and
    the tip of its optical axis."""
    C = c2w[:3, 3]
    x, z = c2w[:3, 0], c2w[:3, 2]
    pts = np.stack([C, C + length * (z - 0.5 * x), C + length * (z + 0.5 * x), C + 1.4 * length * z])
    return pts[:, list(axes)]


def write_summary_png(path: str | os.PathLike, images: np.ndarray, est_c2w: np.ndarray, *,
                      points: np.ndarray | None = None, colors: np.ndarray | None = None,
                      known_c2w: np.ndarray | None = None, errors: PoseErrors | None = None,
                      axes: tuple[int, int] = (0, 2), flip: tuple[bool, bool] = (False, False),
                      title: str = "f3d", lines: Sequence[str] = ()) -> Path:
    """Draws the summary figure and writes it (atomically) as a PNG.

    Args:
      path: the .png to write.
      images: (N, H, W, 3) uint8 views.
      est_c2w: (N, 4, 4) estimated cam-to-world poses (in the known frame when `known_c2w` is given).
      points, colors: optional (M, 3) world points and (M, 3) uint8 colours drawn under the cameras.
      known_c2w: optional (N, 4, 4) known poses, drawn beside the estimates and joined to them.
      errors: per-camera errors to list (see `pose_errors`).
      axes, flip: the world axes drawn as screen right and screen up (e.g. (0, 1) for a z-up world, (0, 2) for
        the OpenCV frame of a first camera: x right, z forward), each optionally negated.
      title, lines: text printed at the top right.
    """
    from f3d_jax.io.atomic import atomic_open

    images = np.asarray(images)
    N = len(images)
    font, small = _font(16), _font(12)
    plot = 560
    thumb_w = 180
    thumb_h = max(1, int(round(thumb_w * images.shape[1] / images.shape[2])))
    per_row = 6
    rows = -(-N // per_row)
    width = max(plot + 620, per_row * (thumb_w + 10) + 20)
    height = plot + 40 + rows * (thumb_h + 30)
    canvas = PIL.Image.new("RGB", (width, height), "white")
    draw = PIL.ImageDraw.Draw(canvas)

    # --- top view ---------------------------------------------------------------------------------------
    sign = np.array([-1.0 if f else 1.0 for f in flip])
    centres = [np.asarray(est_c2w)[:, :3, 3]] + ([np.asarray(known_c2w)[:, :3, 3]] if known_c2w is not None else [])
    cams2d = np.concatenate(centres)[:, list(axes)] * sign
    span = float(np.ptp(cams2d, axis=0).max()) if len(cams2d) > 1 else 1.0
    span = span if span > 1e-9 else 1.0
    glyph = 0.12 * span
    fit = [cams2d]
    if points is not None and len(points):
        p2 = np.asarray(points, np.float64)[:, list(axes)] * sign
        lo_p, hi_p = np.percentile(p2, 2, axis=0), np.percentile(p2, 98, axis=0)
        fit.append(np.stack([lo_p, hi_p]))
    allpts = np.concatenate(fit)
    lo, hi = allpts.min(0) - glyph * 1.6, allpts.max(0) + glyph * 1.6
    scale = (plot - 40) / float(max(hi - lo))
    mid = (lo + hi) / 2

    def screen(p2d: np.ndarray) -> np.ndarray:
        q = (p2d * sign - mid) * scale
        return np.stack([plot / 2 + 20 + q[..., 0], plot / 2 + 20 - q[..., 1]], -1)

    if points is not None and len(points):
        sp = np.round(screen(np.asarray(points, np.float64)[:, list(axes)])).astype(np.int64)
        cols = np.full((len(sp), 3), 160.0) if colors is None else np.asarray(colors, np.float64)
        inside = (sp[:, 0] > 20) & (sp[:, 0] < plot + 20) & (sp[:, 1] > 20) & (sp[:, 1] < plot + 20)
        arr = np.asarray(canvas).copy()
        arr[sp[inside, 1], sp[inside, 0]] = np.round(0.45 * cols[inside] + 0.55 * 255)  # faded: cameras stand out
        canvas = PIL.Image.fromarray(arr)
        draw = PIL.ImageDraw.Draw(canvas)
    draw.rectangle([20, 20, plot + 20, plot + 20], outline=_GRID)

    def camera(c2w: np.ndarray, color: tuple, k: int, label: bool) -> np.ndarray:
        g = screen(_camera_glyph(c2w, axes, glyph))
        draw.polygon([tuple(g[0]), tuple(g[1]), tuple(g[2])], outline=color, width=2)
        draw.line([tuple(g[0]), tuple(g[3])], fill=color, width=1)
        draw.ellipse([g[0][0] - 3, g[0][1] - 3, g[0][0] + 3, g[0][1] + 3], fill=color)
        if label:
            draw.text((g[0][0] + 5, g[0][1] + 3), str(k), fill=color, font=small)
        return g[0]

    for k in range(N):  # the known cameras first: the estimates are drawn over them
        if known_c2w is not None:
            kn = camera(np.asarray(known_c2w)[k], _KNOWN, k, False)
            draw.line([tuple(kn), tuple(screen(np.asarray(est_c2w)[k, :3, 3][list(axes)]))], fill=_ERR, width=1)
        camera(np.asarray(est_c2w)[k], _EST, k, True)
    legend = [("estimated", _EST)] + ([("known", _KNOWN)] if known_c2w is not None else [])
    for j, (name, color) in enumerate(legend):
        draw.rectangle([30, 30 + 20 * j, 42, 42 + 20 * j], fill=color)
        draw.text((48, 28 + 20 * j), name, fill=_TEXT, font=small)
    draw.text((30, plot - 2), "top view", fill=_TEXT, font=small)

    # --- text -------------------------------------------------------------------------------------------
    x0, y = plot + 50, 24
    draw.text((x0, y), title, fill=_TEXT, font=_font(20))
    y += 34
    for line in lines:
        draw.text((x0, y), line, fill=_TEXT, font=font)
        y += 22
    if errors is not None:
        y += 10
        draw.text((x0, y), "camera   rotation error   position error", fill=_TEXT, font=font)
        y += 22
        for k in range(N):
            rel = 100 * errors.pos_err[k] / errors.spread if errors.spread > 0 else float("nan")
            draw.text((x0, y), f"{k:>6}   {errors.rot_deg[k]:>10.2f} deg   {errors.pos_err[k]:>9.4f} ({rel:.1f}%)",
                      fill=_TEXT, font=font)
            y += 20
        y += 6
        draw.text((x0, y), f"  mean   {errors.rot_deg.mean():>10.2f} deg   {errors.pos_err.mean():>9.4f} "
                           f"({100 * errors.pos_err.mean() / max(errors.spread, 1e-12):.1f}% of the rig size)",
                  fill=_TEXT, font=font)

    # --- images -----------------------------------------------------------------------------------------
    for k in range(N):
        r, c = divmod(k, per_row)
        x = 20 + c * (thumb_w + 10)
        yy = plot + 40 + r * (thumb_h + 30)
        canvas.paste(PIL.Image.fromarray(np.asarray(images[k], np.uint8)).resize((thumb_w, thumb_h)), (x, yy))
        draw.text((x, yy + thumb_h + 4), f"view {k}", fill=_TEXT, font=small)

    path = Path(path)
    with atomic_open(path, "wb") as f:
        canvas.save(f, format="PNG")
    return path
