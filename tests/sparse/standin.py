"""Stand-in network of the `sparse_ga_*` fixtures: serves the precomputed outputs of `inputs.npz` through
the model contract (fixture README "Sparse GA case")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from f3d_jax.infer.pairs import make_pairs


class StandIn:
    """`pred1, pred2 = model(view1, view2)` from the arrays of a sparse GA case (float32 of the float16)."""

    def __init__(self, inputs: dict[str, np.ndarray]):
        self.inp = inputs
        self.desc = np.asarray(inputs["desc"], np.float32)
        self.calls: list[tuple[int, int]] = []

    def _get(self, name: str) -> np.ndarray:
        return np.asarray(self.inp[name], np.float32)[None]

    def __call__(self, view1: dict, view2: dict) -> tuple[dict, dict]:
        a, b = int(view1["idx"]), int(view2["idx"])
        self.calls.append((a, b))
        p1 = dict(pts3d=self._get(f"X11_{a}_{b}"), conf=self._get(f"C11_{a}_{b}"), desc=self.desc[a][None],
                  desc_conf=self._get(f"Q_{a}_{b}"))
        p2 = dict(pts3d=self._get(f"X21_{a}_{b}"), conf=self._get(f"C21_{a}_{b}"), desc=self.desc[b][None],
                  desc_conf=self._get(f"Q_{b}_{a}"))
        return p1, p2


def load_case(case_dir: Path) -> tuple[dict, dict, dict]:
    with np.load(case_dir / "inputs.npz") as z:
        inp = {k: z[k] for k in z.files}
    with np.load(case_dir / "official.npz") as z:
        off = {k: z[k] for k in z.files}
    with np.load(case_dir / "gt.npz") as z:
        gt = {k: z[k] for k in z.files}
    return inp, off, gt


def views(n: int, H: int, W: int) -> list[dict]:
    return [dict(idx=k, instance=str(k), true_shape=np.array([[H, W]], np.int32)) for k in range(n)]


def case_pairs(n: int, H: int, W: int, graph: str = "complete") -> tuple[list[str], list]:
    names = [f"view_{k:03d}.png" for k in range(n)]
    return names, make_pairs(views(n, H, W), graph, symmetrize=True)
