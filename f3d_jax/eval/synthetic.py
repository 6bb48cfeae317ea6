"""Synthetic scenes for the dense GA: a box room seen from inside with spheres and boxes, known cameras, and
noisy pairwise predictions that mimic DUSt3R's (the noise model of shared/fixtures/alignment/README.md).

Numpy only, seeded; used by the tests, the benchmarks and `f3d demo`, usable to check a solver against known
cameras (`from f3d_jax.eval.synthetic import make_scene, make_edges, make_predictions`). `render_rgb` paints the
same room with procedural textures (a function of the world point and the surface: wallpaper, posters, wooden
floor, tiled ceiling, checkered objects) under one point light, so the images look like a room and the same
surface point has the same colour in every view (a real network can match them).

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


def _rays(cam2world, focals, H, W, pp=None):
    cx, cy = (W / 2, H / 2) if pp is None else pp
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64), indexing="xy")
    d_cam = np.stack([(u - cx) / focals[:, None, None], np.broadcast_to((v - cy), (len(focals), H, W))
                      / focals[:, None, None], np.ones((len(focals), H, W))], axis=-1)
    d_world = np.einsum("nij,nhwj->nhwi", cam2world[:, :3, :3], d_cam)
    return cam2world[:, None, None, :3, 3], d_world  # ray = o + t d, t = camera-frame depth


def render(cam2world: np.ndarray, focals: np.ndarray, H: int, W: int, room: dict,
           pp: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast depth (N, H, W) and surface ids of the room seen by the cameras (principal point `pp`, default
    (W/2, H/2))."""
    o, d = _rays(cam2world, focals, H, W, pp)
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


# --- colour: procedural textures of the room (for images that look like a room) ---------------------------------

_WALL_RGB = np.array([[0.80, 0.72, 0.55], [0.55, 0.68, 0.78], [0.72, 0.80, 0.60], [0.82, 0.62, 0.58]])


def _hash(*ints: np.ndarray, seed: int = 0) -> np.ndarray:
    """Deterministic pseudo-random floats in [0, 1) of integer lattice coordinates (same shape as the inputs)."""
    h = np.uint64((0x9E3779B97F4A7C15 * (seed + 1)) % (1 << 64))
    with np.errstate(over="ignore"):
        for k, a in enumerate(ints):
            h = h ^ (np.asarray(a).astype(np.int64).astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9 + 2 * k))
            h = (h ^ (h >> np.uint64(31))) * np.uint64(0x94D049BB133111EB)
        h = h ^ (h >> np.uint64(29))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _noise2(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1) of continuous 2-D coordinates (lattice spacing 1)."""
    ia, ib = np.floor(a), np.floor(b)
    fa, fb = a - ia, b - ib
    fa, fb = fa * fa * (3 - 2 * fa), fb * fb * (3 - 2 * fb)
    n00, n10 = _hash(ia, ib, seed=seed), _hash(ia + 1, ib, seed=seed)
    n01, n11 = _hash(ia, ib + 1, seed=seed), _hash(ia + 1, ib + 1, seed=seed)
    return (n00 * (1 - fa) + n10 * fa) * (1 - fb) + (n01 * (1 - fa) + n11 * fa) * fb


def _fbm(a: np.ndarray, b: np.ndarray, seed: int, octaves: int = 3) -> np.ndarray:
    """Fractal sum of value noise, in [0, 1)."""
    out, amp, tot = 0.0, 1.0, 0.0
    for o in range(octaves):
        out = out + amp * _noise2(a * 2 ** o, b * 2 ** o, seed + 17 * o)
        tot += amp
        amp *= 0.5
    return out / tot


def _wall_texture(a: np.ndarray, z: np.ndarray, wall: int, seed: int) -> np.ndarray:
    """Wallpaper (stripes + noise), a wainscot band, and posters on a grid of hashed cells. a: along the wall (m)."""
    base = _WALL_RGB[wall]
    stripes = 0.9 + 0.1 * (np.floor(a / 0.12) % 2)
    tone = (0.8 + 0.35 * _fbm(a * 3, z * 3, seed + wall))[..., None] * stripes[..., None] * base
    # wainscot: darker panels with horizontal grooves below 0.8 m
    low = z < 0.8
    groove = (np.abs(((z + 0.05) % 0.2) - 0.1) < 0.012) | (np.abs(z - 0.8) < 0.02)
    wood = np.array([0.45, 0.30, 0.18]) * (0.85 + 0.3 * _noise2(a * 1.5, z * 30, seed + 5))[..., None]
    tone = np.where(low[..., None], np.where(groove[..., None], wood * 0.5, wood), tone)
    # posters: one per 1.1 m x 0.9 m cell (some cells empty), random size, colour and pattern
    ca, cz = np.floor(a / 1.1), np.floor((z - 0.9) / 0.9)
    r = [_hash(ca, cz, seed=seed + 100 * wall + k) for k in range(6)]
    la, lz = a / 1.1 - ca, (z - 0.9) / 0.9 - cz
    w, h = 0.3 + 0.4 * r[0], 0.35 + 0.4 * r[1]
    inside = (np.abs(la - 0.5) < w / 2) & (np.abs(lz - 0.5) < h / 2) & (r[2] < 0.7) & (z > 0.95)
    frame = inside & ((np.abs(la - 0.5) > w / 2 - 0.03) | (np.abs(lz - 0.5) > h / 2 - 0.03))
    hue = np.stack([r[3], r[4], r[5]], -1)
    pattern = np.sin(la * 40 * (0.5 + r[3]) + np.cos(lz * 25 * (0.5 + r[4])) * 3)[..., None]
    poster = np.clip(0.25 + 0.75 * hue * (0.75 + 0.25 * pattern), 0, 1)
    tone = np.where(inside[..., None], np.where(frame[..., None], 0.12, poster), tone)
    return tone


def _floor_texture(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Wooden planks 0.18 m wide along x, staggered, each with its own tint and grain."""
    plank = np.floor(y / 0.18)
    off = _hash(plank, seed=seed) * 1.5
    seg = np.floor((x + off) / 1.5)
    tint = 0.75 + 0.45 * _hash(plank, seg, seed=seed + 1)
    grain = 0.85 + 0.15 * np.sin((x + off) * 35 + 6 * _fbm(x * 2, y * 8, seed + 2))
    seam = (np.abs(y / 0.18 - plank - 0.5) > 0.46) | (np.abs((x + off) / 1.5 - seg - 0.5) > 0.495)
    rgb = np.array([0.62, 0.42, 0.25]) * (tint * grain)[..., None]
    return np.where(seam[..., None], rgb * 0.45, rgb)


def _ceiling_texture(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Square 0.6 m ceiling tiles with speckle."""
    line = (np.abs((x / 0.6) % 1 - 0.5) > 0.47) | (np.abs((y / 0.6) % 1 - 0.5) > 0.47)
    speck = 0.85 + 0.15 * _noise2(x * 40, y * 40, seed)
    rgb = np.array([0.92, 0.91, 0.88]) * speck[..., None]
    return np.where(line[..., None], rgb * 0.6, rgb)


def _object_texture(X: np.ndarray, k: int, seed: int, cell: float) -> np.ndarray:
    """3-D checker of `cell` metres in object k's own colour pair."""
    rng = np.random.default_rng(seed + 1000 + k)
    c1, c2 = rng.uniform(0.2, 1.0, 3), rng.uniform(0.0, 0.5, 3)
    chk = (np.floor(X[..., 0] / cell) + np.floor(X[..., 1] / cell) + np.floor(X[..., 2] / cell)) % 2
    return np.where(chk[..., None] > 0, c1, c2) * (0.85 + 0.15 * _noise2(X[..., 0] * 20 + X[..., 2] * 7,
                                                                          X[..., 1] * 20, seed + k))[..., None]


def _normals(X: np.ndarray, sid: np.ndarray, room: dict) -> np.ndarray:
    """(…, 3) unit normals of the room's surfaces at the points X, pointing into the room / out of the objects."""
    n = np.zeros(X.shape)
    for k, (axis, sign) in enumerate([(0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1)]):
        n[sid == k, axis] = sign
    for k, sph in enumerate(room["spheres"]):
        m = sid == 6 + k
        n[m] = (X[m] - np.asarray(sph["center"])) / sph["radius"]
    for k, box in enumerate(room["boxes"]):
        m = sid == 6 + len(room["spheres"]) + k
        lo, hi = np.asarray(box["min"]), np.asarray(box["max"])
        d = np.concatenate([np.abs(X[m] - lo), np.abs(X[m] - hi)], -1)  # distance to the 6 faces
        face = np.argmin(d, -1)
        nb = np.zeros((m.sum(), 3))
        nb[np.arange(len(face)), face % 3] = np.where(face < 3, -1.0, 1.0)
        n[m] = nb
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def texture(X: np.ndarray, sid: np.ndarray, room: dict, seed: int = 0) -> np.ndarray:
    """Shaded colour in [0, 1] (…, 3) of world points X (…, 3) on surfaces `sid` (the ids of `render`).

    The albedo is a function of the world point and the surface only (same in every view); the shading is
    Lambertian under a point light near the ceiling, plus ambient light.
    """
    ax, ay = room["half_extent_xy"]
    h = room["height"]
    rgb = np.zeros(X.shape)
    x, y, z = X[..., 0], X[..., 1], X[..., 2]
    for k in range(4):
        m = sid == k
        along = y[m] + ay if k < 2 else x[m] + ax
        rgb[m] = _wall_texture(along, z[m], k, seed)
    m = sid == 4
    rgb[m] = _floor_texture(x[m], y[m], seed)
    m = sid == 5
    rgb[m] = _ceiling_texture(x[m], y[m], seed)
    n_obj = len(room["spheres"]) + len(room["boxes"])
    for k in range(n_obj):
        m = sid == 6 + k
        rgb[m] = _object_texture(X[m], k, seed, cell=0.12 if k < len(room["spheres"]) else 0.1)
    light = np.array([0.3, -0.2, h - 0.3])
    to_l = light - X
    dist = np.linalg.norm(to_l, axis=-1, keepdims=True)
    lam = np.clip(np.sum(_normals(X, sid, room) * to_l / np.maximum(dist, 1e-9), -1, keepdims=True), 0, 1)
    shade = 0.35 + 0.75 * lam / (1 + 0.04 * dist ** 2)
    return np.clip(rgb * shade, 0, 1)


def render_rgb(cam2world: np.ndarray, focals: np.ndarray, H: int, W: int, room: dict,
               pp: tuple[float, float] | None = None, seed: int = 0) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB images of the textured room seen by the cameras (cam-to-world, OpenCV axes, focals in
    pixels, principal point `pp` (default (W/2, H/2))). Render at a multiple of a scene's size to get images whose
    load-time resize has something to undo: with scale s, pixel centres map as u_s = s u + (s - 1) / 2, so pass
    focals * s and pp = (s W / 2 + (s - 1) / 2, s H / 2 + (s - 1) / 2) to see exactly the scene's cameras."""
    depth, sid = render(cam2world, focals, H, W, room, pp)
    o, d = _rays(cam2world, focals, H, W, pp)
    X = o + depth[..., None] * d
    return np.round(texture(X, sid, room, seed) * 255).astype(np.uint8)


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


def descriptor_field(X: np.ndarray, rng: np.random.Generator, dim: int = 24) -> np.ndarray:
    """Stand-in matching descriptors (..., dim) float32, unit norm: a fixed random Fourier field of the world
    point X (..., 3) (wavelengths 0.3-1.5 m), normalize(P sin(B X + phi)) + 5% noise, so the same 3D point has
    nearly the same descriptor in every view (as a trained MASt3R head). Draws from `rng` in a fixed order."""
    B = rng.normal(0, 2 * np.pi / rng.uniform(0.3, 1.5, size=(64, 1)), size=(64, 3))
    phi = rng.uniform(0, 2 * np.pi, size=64)
    P = rng.normal(size=(dim, 64))
    d = np.sin(X @ B.T + phi) @ P.T + 0.05 * rng.normal(size=X.shape[:-1] + (dim,))
    return (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)


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
