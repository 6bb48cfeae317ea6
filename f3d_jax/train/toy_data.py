"""A small, resumable source of synthetic training pairs for the loop's tests and the `tiny` configs.

The full pipeline (on-disk pairs, the official crops, resolution buckets, grain) is `f3d_jax.train.data`; this
stand-in only needs numpy and `f3d_jax.eval.synthetic`. It renders `num_scenes` textured rooms with two
cameras each, once, and then cycles over them in a seeded order (a new permutation per epoch).

Batches follow the training contract: `{'view1': {...}, 'view2': {...}}` with, per view, 'img' (B, H, W, 3)
float32 ImageNet-normalised to [-1, 1] as the official `ImgNorm`, 'true_shape' (B, 2) int32, 'pts3d'
(B, H, W, 3) world points, 'valid_mask' (B, H, W) bool, 'camera_pose' (B, 4, 4) cam2world,
'camera_intrinsics' (B, 3, 3), 'depthmap' (B, H, W), all float32 unless stated.

Iterator protocol of the loop (grain's `DatasetIterator` has it too): `next(it)`, `it.get_state()` -> a JSON
dict, `it.set_state(state)`.
"""

from __future__ import annotations

import numpy as np

from f3d_jax.eval.synthetic import camera_points, make_scene, render_rgb


def _views(num_scenes: int, h: int, w: int, seed: int) -> list[dict[str, np.ndarray]]:
    views1, views2 = [], []
    for s in range(num_scenes):
        scene = make_scene(n=2, H=h, W=w, seed=seed * 100_003 + s)
        rgb = render_rgb(scene.cam2world, scene.focals, h, w, scene.room, seed=s)
        cam = camera_points(scene)  # (2, H, W, 3)
        for v, out in ((0, views1), (1, views2)):
            pose = scene.cam2world[v]
            k = np.array([[scene.focals[v], 0, w / 2], [0, scene.focals[v], h / 2], [0, 0, 1]])
            out.append(dict(
                img=(rgb[v].astype(np.float32) / 255.0 - 0.5) / 0.5,
                true_shape=np.array([h, w], np.int32),
                pts3d=(cam[v] @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32),
                valid_mask=np.isfinite(scene.depth[v]) & (scene.depth[v] > 0),
                camera_pose=pose.astype(np.float32),
                camera_intrinsics=k.astype(np.float32),
                depthmap=scene.depth[v].astype(np.float32)))
    return [{"view1": a, "view2": b} for a, b in zip(views1, views2)]


class SyntheticPairs:
    """Infinite iterator of batches of synthetic pairs; state = {'epoch', 'index'} (JSON)."""

    def __init__(self, batch_size: int, num_scenes: int = 8, size: tuple[int, int] = (64, 64), seed: int = 0):
        if batch_size < 1 or num_scenes < 1:
            raise ValueError(f"batch_size={batch_size} and num_scenes={num_scenes} should be >= 1")
        self.batch_size, self.seed = batch_size, seed
        self.pairs = _views(num_scenes, size[0], size[1], seed)
        self.epoch, self.index = 0, 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        picked = []
        for _ in range(self.batch_size):
            if self.index == len(self.pairs):
                self.epoch, self.index = self.epoch + 1, 0
            picked.append(self.pairs[self._order(self.epoch)[self.index]])
            self.index += 1
        return {v: {k: np.stack([p[v][k] for p in picked]) for k in picked[0][v]} for v in ("view1", "view2")}

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
