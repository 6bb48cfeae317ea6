"""Pictures of disparity and flow maps: uint8 RGB arrays (numpy only).

* `disparity_to_rgb`: a perceptual colour map (inferno-like, dark = far / small disparity, bright = near),
  scaled between robust bounds (the 1st and 99th percentiles of the finite values unless given).
* `flow_to_rgb`: the Middlebury colour wheel (Baker et al., "A Database and Evaluation Methodology for
  Optical Flow"; hue = direction, saturation = magnitude relative to the largest finite magnitude unless
  `max_flow` is given), as the flow_vis / RAFT tooling draws it.
"""

from __future__ import annotations

import numpy as np

# inferno-like control points (t, r, g, b), linearly interpolated
_CMAP = np.array([
    [0.00, 0, 0, 4], [0.13, 31, 12, 72], [0.25, 85, 15, 109], [0.38, 136, 34, 106], [0.50, 186, 54, 85],
    [0.63, 227, 89, 51], [0.75, 249, 140, 10], [0.88, 249, 201, 50], [1.00, 252, 255, 164]], np.float64)


def disparity_to_rgb(disp: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W) disparity -> (H, W, 3) uint8. Non-finite values are black."""
    d = np.asarray(disp, np.float64)
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    if d.ndim != 2:
        raise ValueError(f"disparity_to_rgb expects an (H, W) map, got shape {d.shape}")
    finite = np.isfinite(d)
    vals = d[finite]
    lo = vmin if vmin is not None else (float(np.percentile(vals, 1)) if vals.size else 0.0)
    hi = vmax if vmax is not None else (float(np.percentile(vals, 99)) if vals.size else 1.0)
    t = np.clip((np.where(finite, d, lo) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    rgb = np.stack([np.interp(t, _CMAP[:, 0], _CMAP[:, k]) for k in (1, 2, 3)], axis=-1)
    rgb[~finite] = 0
    return np.round(rgb).astype(np.uint8)


def _colour_wheel() -> np.ndarray:
    """(55, 3) float64 RGB of the Middlebury wheel: red-yellow-green-cyan-blue-magenta segments."""
    segs = [(15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)), (4, (0, 255, 0), (0, 255, 255)),
            (11, (0, 255, 255), (0, 0, 255)), (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0))]
    rows = []
    for n, a, b in segs:
        f = np.arange(n)[:, None] / n
        rows.append(np.array(a, np.float64) * (1 - f) + np.array(b, np.float64) * f)
    return np.concatenate(rows)


def flow_to_rgb(flow: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """(H, W, 2) flow (x, y) -> (H, W, 3) uint8 on the Middlebury colour wheel. Non-finite flow is black."""
    f = np.asarray(flow, np.float64)
    if f.ndim != 3 or f.shape[-1] != 2:
        raise ValueError(f"flow_to_rgb expects an (H, W, 2) flow, got shape {f.shape}")
    finite = np.all(np.isfinite(f), axis=-1)
    u, v = np.where(finite, f[..., 0], 0.0), np.where(finite, f[..., 1], 0.0)
    rad = np.hypot(u, v)
    scale = max_flow if max_flow is not None else (float(rad[finite].max()) if finite.any() else 1.0)
    scale = max(scale, 1e-12)
    u, v, rad = u / scale, v / scale, rad / scale
    wheel = _colour_wheel()
    n = len(wheel)
    a = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    fk = (a + 1) / 2 * (n - 1)
    k0 = np.floor(fk).astype(np.int64)
    k1 = (k0 + 1) % n
    w = (fk - k0)[..., None]
    col = ((1 - w) * wheel[k0] + w * wheel[k1]) / 255.0
    r = np.minimum(rad, 1.0)[..., None]
    col = 1 - r * (1 - col)  # saturation grows with the magnitude
    col = np.where((rad <= 1)[..., None], col, col * 0.75)  # beyond max_flow: darker
    col[~finite] = 0
    return np.floor(255 * col).astype(np.uint8)
