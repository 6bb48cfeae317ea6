"""Two-view reconstruction without optimisation (equivalent of dust3r/cloud_opt/pair_viewer.py `PairViewer`).

For each image n of the pair: focal by Weiszfeld on pred1 of edge (n, 1-n); pose of camera n in the other
camera's frame by PnP-RANSAC (OpenCV SQPNP, 100 iterations, 5 px) of pred2 of edge (1-n, n) on pixels with
im_conf[n] > min_conf_thr (identity when PnP fails). The edge with the higher mean(conf1) * mean(conf2) defines
the world (its first camera is the identity). Host-side numpy/OpenCV: not differentiable, not jittable.
"""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp
import numpy as np

from f3d_jax.align.types import AlignResult, AlignState
from f3d_jax.geometry.focal import estimate_focal_weiszfeld
from f3d_jax.geometry.pnp import pnp_ransac

PNP_ITERS = 100  # PairViewer's RANSAC iterations (the GA init uses 10)
PNP_REPROJ_PX = 5.0


def pair_viewer(data: Mapping[str, np.ndarray], min_conf_thr: float = 3.0) -> AlignResult:
    """PairViewer on parsed `inference` arrays (see `problem.parse_output`).

    Args:
      data: edges (2, 2) = {(0, 1), (1, 0)} in any order, pred_i / pred_j (2, H, W, 3), conf_i / conf_j (2, H, W).
      min_conf_thr: confidence threshold of the PnP pixel pool and of `AlignResult.masks`.
    Returns:
      `AlignResult` with cam2world (2, 4, 4) (one camera at the identity), focals (2,), principal points (W/2, H/2),
      depthmaps, world pts3d, conf, masks; pw_poses[e] = cam2world[i] with pw_scales = 1 (exact for the
      winning edge, whose prediction defines the world); empty loss/lr curves and final_loss = NaN (as the
      official `forward()`); `start` = the result.
    Raises:
      ValueError: not exactly the two symmetric edges of two images.
    """
    edges = np.asarray(data["edges"])
    pairs = [tuple(int(x) for x in e) for e in edges]
    if len(pairs) != 2 or set(pairs) != {(0, 1), (1, 0)}:
        raise ValueError(
            f"global_align: mode='pairviewer' needs exactly the two symmetric edges (0, 1) and (1, 0), got {pairs}"
        )
    e_of = {p: k for k, p in enumerate(pairs)}
    pred_i, pred_j = np.asarray(data["pred_i"], np.float32), np.asarray(data["pred_j"], np.float32)
    conf_i, conf_j = np.asarray(data["conf_i"], np.float32), np.asarray(data["conf_j"], np.float32)
    _, H, W, _ = pred_i.shape
    pp = np.float32([W / 2, H / 2])

    im_conf = np.zeros((2, H, W), np.float32)
    for k, (i, j) in enumerate(pairs):
        im_conf[i] = np.maximum(im_conf[i], conf_i[k])
        im_conf[j] = np.maximum(im_conf[j], conf_j[k])
    masks = im_conf > min_conf_thr

    focals, rel_poses, scores = [], [], []
    for n in range(2):
        e = e_of[(n, 1 - n)]
        scores.append(float(conf_i[e].mean()) * float(conf_j[e].mean()))
        focals.append(float(estimate_focal_weiszfeld(pred_i[e], pp, min_focal=None, max_focal=None)))
        # camera n in camera (1-n)'s frame, from image n's points predicted in camera (1-n)'s frame
        res = pnp_ransac(pred_j[e_of[(1 - n, n)]], masks[n], focal=focals[n], pp=pp, n_iter=PNP_ITERS,
                         reproj_err_px=PNP_REPROJ_PX)
        rel_poses.append(np.eye(4) if res is None else res[1])
    rel_poses = [p.astype(np.float32).astype(np.float64) for p in rel_poses]

    def z_in(pose: np.ndarray, pts: np.ndarray) -> np.ndarray:
        w2c = np.linalg.inv(pose)
        return (pts.astype(np.float64) @ w2c[:3, :3].T + w2c[:3, 3])[..., 2]

    if scores[0] > scores[1]:  # the world is camera 0 at edge (0, 1)'s scale
        poses = [np.eye(4), rel_poses[1]]
        e = e_of[(0, 1)]
        depth = [pred_i[e][..., 2], z_in(rel_poses[1], pred_j[e])]
    else:
        poses = [rel_poses[0], np.eye(4)]
        e = e_of[(1, 0)]
        depth = [z_in(rel_poses[0], pred_j[e]), pred_i[e][..., 2]]
    c2w = np.stack(poses).astype(np.float32)
    depthmaps = np.stack(depth).astype(np.float32)
    f = np.float32(focals)
    uu, vv = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    cam = np.stack([(uu - pp[0]) / f[:, None, None] * depthmaps, (vv - pp[1]) / f[:, None, None] * depthmaps,
                    depthmaps], -1)
    pts3d = np.einsum("nab,nhwb->nhwa", c2w[:, :3, :3], cam) + c2w[:, None, None, :3, 3]

    state = AlignState(
        cam2world=jnp.asarray(c2w), focals=jnp.asarray(f), principal_points=jnp.asarray(np.stack([pp, pp])),
        depthmaps=jnp.asarray(depthmaps), pw_poses=jnp.asarray(c2w[edges[:, 0]]),
        pw_scales=jnp.ones((2,), jnp.float32),
    )
    return AlignResult(
        cam2world=state.cam2world, focals=state.focals, principal_points=state.principal_points,
        depthmaps=state.depthmaps, pts3d=jnp.asarray(pts3d.astype(np.float32)), conf=jnp.asarray(im_conf),
        masks=jnp.asarray(masks), pw_poses=state.pw_poses, pw_scales=state.pw_scales,
        edges=jnp.asarray(edges.astype(np.int32)), loss_curve=jnp.zeros((0,), jnp.float32),
        lr_curve=jnp.zeros((0,), jnp.float32), final_loss=jnp.float32(np.nan), start=state,
    )
