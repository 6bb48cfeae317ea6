"""Synthetic scenes for the dense GA: a box room seen from inside with spheres and boxes, known cameras, and
noisy pairwise predictions that mimic DUSt3R's (the noise model of shared/fixtures/alignment/README.md).

Numpy only, seeded; used by the tests and the benchmarks, usable to check a solver against known cameras
(`from f3d_jax.eval.synthetic import make_scene, make_edges, make_predictions`).

Conventions: world z-up; cameras OpenCV (x right, y down, z forward), poses cam-to-world; pixel (u, v)
integer, principal point (W/2, H/2); depth = camera-frame z.

Command (prints a summary of a small scene):  python -m f3d_jax.eval.synthetic
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

NOISE_LEVELS = {  # relative depth noise std, outlier fraction, rigid error of pred2 (rad, relative), distortion
    "clean": dict(sigma=0.002, outliers=0.0, rigid=0.0, distort=0.0, iso=0.0005),
    "moderate": dict(sigma=0.01, outliers=0.02, rigid=0.005, distort=0.01, iso=0.002),
    "hard": dict(sigma=0.03, outliers=0.08, rigid=0.02, distort=0.03, iso=0.005),
}


@dataclasses.dataclass(frozen=True)
class SyntheticScene:
    """A rendered synthetic scene.

    Attributes:
        cam2world: (N, 4, 4) float64 cam-to-world poses.
        focals: (N,) float64 focals (pixels).
        depth: (N, H, W) float64 camera-frame z (all finite).
        surface_id: (N, H, W) uint8 (0-5 walls/floor/ceiling, 6.. objects).
        room: dict of the geometry (half extents, height, spheres, boxes).
    """

    cam2world: np.ndarray
    focals: np.ndarray
    depth: np.ndarray
    surface_id: np.ndarray
    room: dict

    @property
    def n(self) -> int:
        return len(self.cam2world)


def _look_at(centre: np.ndarray, target: np.ndarray, up=np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)  # OpenCV: x right, y down; world up is -y
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = centre
    return T


def _rays(cam2world, focals, H, W):
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64), indexing="xy")
    d_cam = np.stack([(u - W / 2) / focals[:, None, None], np.broadcast_to((v - H / 2), (len(focals), H, W))
                      / focals[:, None, None], np.ones((len(focals), H, W))], axis=-1)
    d_world = np.einsum("nij,nhwj->nhwi", cam2world[:, :3, :3], d_cam)
    return cam2world[:, None, None, :3, 3], d_world  # ray = o + t d, t = camera-frame depth


def render(cam2world: np.ndarray, focals: np.ndarray, H: int, W: int, room: dict) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast depth (N, H, W) and surface ids of the room seen by the cameras."""
    o, d = _rays(cam2world, focals, H, W)
    o = np.broadcast_to(o, d.shape)
    best = np.full(d.shape[:-1], np.inf)
    sid = np.zeros(d.shape[:-1], np.uint8)
    ax, ay, h = room["half_extent_xy"][0], room["half_extent_xy"][1], room["height"]
    planes = [(0, -ax), (0, ax), (1, -ay), (1, ay), (2, 0.0), (2, h)]
    with np.errstate(divide="ignore", invalid="ignore"):
        for k, (axis, val) in enumerate(planes):
            t = (val - o[..., axis]) / d[..., axis]
            hit = (t > 1e-6) & (t < best)
            best = np.where(hit, t, best)
            sid = np.where(hit, k, sid)
        for k, sph in enumerate(room["spheres"]):
            c, r = np.asarray(sph["center"]), sph["radius"]
            oc = o - c
            a = np.sum(d * d, -1)
            b = np.sum(oc * d, -1)
            disc = b * b - a * (np.sum(oc * oc, -1) - r * r)
            t = (-b - np.sqrt(np.maximum(disc, 0))) / a
            hit = (disc > 0) & (t > 1e-6) & (t < best)
            best = np.where(hit, t, best)
            sid = np.where(hit, 6 + k, sid)
        for k, box in enumerate(room["boxes"]):
            lo, hi = np.asarray(box["min"]), np.asarray(box["max"])
            t1, t2 = (lo - o) / d, (hi - o) / d
            tmin = np.nanmax(np.minimum(t1, t2), -1)
            tmax = np.nanmin(np.maximum(t1, t2), -1)
            hit = (tmax >= tmin) & (tmin > 1e-6) & (tmin < best)
            best = np.where(hit, tmin, best)
            sid = np.where(hit, 6 + len(room["spheres"]) + k, sid)
    return best, sid


def make_scene(n: int = 4, H: int = 112, W: int = 160, seed: int = 0, focal: float | None = None,
               focal_jitter: float = 0.0, rig: Literal["ring", "rotation"] = "ring") -> SyntheticScene:
    """Random room + a camera rig inside it, rendered.

    Args:
        n: number of cameras.
        H, W: image size.
        seed: RNG seed (room, rig and focals).
        focal: focal in pixels (default ~ 0.95 W: a ~56-degree horizontal field of view).
        focal_jitter: relative per-camera focal spread (uniform +-).
        rig: 'ring' (cameras on an arc around the room centre looking inwards-ish, ~20-35 deg apart) or
            'rotation' (all cameras at one centre, panning).
    """
    rng = np.random.default_rng(seed)
    ax, ay = rng.uniform(2.5, 3.2, size=2)
    h = rng.uniform(2.4, 2.9)
    spheres = [dict(center=[rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.2, 0.9)],
                    radius=float(rng.uniform(0.15, 0.4))) for _ in range(4)]
    boxes = []
    for _ in range(2):
        lo = np.array([rng.uniform(-1.2, 0.8), rng.uniform(-1.2, 0.8), 0.0])
        boxes.append(dict(min=lo.tolist(), max=(lo + [rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7),
                                                      rng.uniform(0.2, 0.5)]).tolist()))
    room = dict(half_extent_xy=[float(ax), float(ay)], height=float(h), spheres=spheres, boxes=boxes)
    f0 = 0.95 * W if focal is None else focal
    focals = f0 * (1 + rng.uniform(-focal_jitter, focal_jitter, size=n))
    poses = []
    step = np.deg2rad(rng.uniform(15, 25))
    start = rng.uniform(0, 2 * np.pi)
    radius = rng.uniform(1.4, 1.8)
    for k in range(n):
        a = start + k * step
        if rig == "ring":
            c = np.array([radius * np.cos(a), radius * np.sin(a), rng.uniform(1.0, 1.5)])
            target = np.array([0.0, 0.0, 0.5]) + rng.normal(0, 0.2, 3) + np.array([-np.sin(a), np.cos(a), 0]) * 0.3
        else:
            c = np.array([0.1, -0.2, 1.3])
            target = c + np.array([np.cos(a), np.sin(a), rng.uniform(-0.3, 0.0)])
        poses.append(_look_at(c, target))
    cam2world = np.stack(poses)
    depth, sid = render(cam2world, focals, H, W, room)
    return SyntheticScene(cam2world=cam2world, focals=focals, depth=depth, surface_id=sid, room=room)


def camera_points(scene: SyntheticScene) -> np.ndarray:
    """(N, H, W, 3) float64 camera-frame points of every pixel."""
    N, H, W = scene.depth.shape
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64), indexing="xy")
    f = scene.focals[:, None, None]
    return np.stack([(u - W / 2) / f * scene.depth, (v - H / 2) / f * scene.depth, scene.depth], axis=-1)


def world_points(scene: SyntheticScene) -> np.ndarray:
    """(N, H, W, 3) float64 world points of every pixel."""
    X = camera_points(scene)
    return np.einsum("nij,nhwj->nhwi", scene.cam2world[:, :3, :3], X) + scene.cam2world[:, None, None, :3, 3]


def _smooth_field(rng, H, W, amp):
    u, v = np.meshgrid(np.linspace(-1, 1, W), np.linspace(-1, 1, H), indexing="xy")
    k = rng.normal(0, 1, size=(3, 2))
    ph = rng.uniform(0, 2 * np.pi, size=3)
    f = sum(np.sin(np.pi * (k[m, 0] * u + k[m, 1] * v) / 2 + ph[m]) for m in range(3)) / 3
    return 1 + amp * f


def _edge_strength(depth: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(np.log(depth))
    return np.clip(np.hypot(gx, gy) * 20, 0, 3)


def _seen_by(scene: SyntheticScene, i: int, j: int) -> np.ndarray:
    """(H, W) bool: pixels of image j whose 3D point is visible in image i (inside, not occluded)."""
    N, H, W = scene.depth.shape
    Xw = world_points(scene)[j].reshape(-1, 3)
    T = np.linalg.inv(scene.cam2world[i])
    Xi = Xw @ T[:3, :3].T + T[:3, 3]
    z = Xi[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.round(scene.focals[i] * Xi[:, 0] / z + W / 2)
        v = np.round(scene.focals[i] * Xi[:, 1] / z + H / 2)
    ok = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    seen = np.zeros(H * W, bool)
    ui, vi = u[ok].astype(int), v[ok].astype(int)
    seen[ok] = z[ok] <= scene.depth[i][vi, ui] * 1.02
    return seen.reshape(H, W)


def make_predictions(scene: SyntheticScene, edges: np.ndarray, noise: str = "moderate", seed: int = 0,
                     dtype=np.float32) -> dict:
    """Noisy pairwise predictions for each edge (i, j), in camera i's frame at a random per-edge scale.

    Noise: depth noise along rays whose std grows towards the image corners, at depth discontinuities and
    (pred2 only) on pixels of j not seen by i; a low-frequency multiplicative depth distortion; small
    isotropic noise; outliers (depth x exp(U(-1, 1))); a small rigid error on pred2. Confidence
    1 + 25 * q_e * exp(-(sigma / sigma0 - 1)) (q_e a per-pair quality), outliers mostly 1..2.5.

    Args:
        scene: rendered scene.
        edges: (E, 2) int.
        noise: 'clean', 'moderate' or 'hard'.

    Returns:
        dict with edges (E, 2) int32, pred1_pts3d / pred2_pts3d (E, H, W, 3), pred1_conf / pred2_conf
        (E, H, W) (dtype), pair_scale (E,).
    """
    if noise not in NOISE_LEVELS:
        raise ValueError(f"noise: expected one of {list(NOISE_LEVELS)}, got {noise!r}")
    lv = NOISE_LEVELS[noise]
    rng = np.random.default_rng(seed)
    edges = np.asarray(edges, np.int64)
    N, H, W = scene.depth.shape
    E = len(edges)
    Xc = camera_points(scene)
    Xw = world_points(scene)
    u, v = np.meshgrid(np.linspace(-1, 1, W), np.linspace(-1, 1, H), indexing="xy")
    corner = 1 + 1.5 * (u ** 2 + v ** 2) / 2
    edge_str = [_edge_strength(scene.depth[k]) for k in range(N)]
    out = {k: np.zeros((E, H, W, 3), dtype) for k in ("pred1_pts3d", "pred2_pts3d")}
    out.update({k: np.zeros((E, H, W), dtype) for k in ("pred1_conf", "pred2_conf")})
    scales = np.exp(rng.uniform(-0.7, 0.7, size=E))
    sigma0 = max(lv["sigma"], 1e-4)

    def noisy(X, sig, q):
        n_rel = rng.normal(size=X.shape[:-1]) * sig
        out_msk = rng.random(X.shape[:-1]) < lv["outliers"]
        fac = (1 + n_rel) * _smooth_field(rng, H, W, lv["distort"])
        fac = np.where(out_msk, np.exp(rng.uniform(-1, 1, X.shape[:-1])), fac)
        Y = X * fac[..., None] + rng.normal(size=X.shape) * lv["iso"] * X[..., 2:3]
        conf = 1 + 25 * q * np.exp(-(sig / sigma0 - 1))
        bad = out_msk & (rng.random(X.shape[:-1]) < 0.9)
        conf = np.where(bad, rng.uniform(1, 2.5, X.shape[:-1]), conf)
        return Y, conf

    for e, (i, j) in enumerate(edges):
        q = rng.uniform(0.5, 1.0)
        sig1 = lv["sigma"] * corner * (1 + edge_str[i])
        P1, C1 = noisy(Xc[i], sig1, q)
        T_i = np.linalg.inv(scene.cam2world[i])
        Xj_in_i = Xw[j] @ T_i[:3, :3].T + T_i[:3, 3]
        unseen = ~_seen_by(scene, i, j)
        sig2 = lv["sigma"] * corner * (1 + edge_str[j]) * np.where(unseen, 3.0, 1.0)
        # noise along camera i's rays: perturb by the z-scaling in frame i
        P2, C2 = noisy(Xj_in_i, sig2, q)
        if lv["rigid"] > 0:
            w = rng.normal(0, lv["rigid"], 3)
            K = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
            R = np.eye(3) + K + K @ K / 2
            U, _, Vt = np.linalg.svd(R)
            R = U @ Vt
            tvec = rng.normal(0, lv["rigid"], 3) * np.median(P2[..., 2])
            P2 = P2 @ R.T + tvec
        out["pred1_pts3d"][e] = scales[e] * P1
        out["pred2_pts3d"][e] = scales[e] * P2
        out["pred1_conf"][e] = C1
        out["pred2_conf"][e] = C2
    out["edges"] = edges.astype(np.int32)
    out["pair_scale"] = scales
    return out


def make_edges(n: int, graph: str = "complete", symmetrize: bool = True) -> np.ndarray:
    """(E, 2) int32 pair list in the official `make_pairs` order: 'complete' or 'swin-k' (cyclic)."""
    if graph == "complete":
        pairs = [(i, j) for i in range(n) for j in range(i)]
    elif graph.startswith("swin-"):
        k = int(graph.split("-")[1])
        seen, pairs = set(), []
        for i in range(n):
            for d in range(1, k + 1):
                j = (i + d) % n
                a = (min(i, j), max(i, j))
                if i != j and a not in seen:
                    seen.add(a)
                    pairs.append((i, j))
    else:
        raise ValueError(f"graph: expected 'complete' or 'swin-k', got {graph!r}")
    if symmetrize:
        pairs = pairs + [(j, i) for i, j in pairs]
    return np.array(pairs, np.int32).reshape(-1, 2)
