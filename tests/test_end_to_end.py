"""The user path across modules: images -> pairs -> batched inference -> global alignment."""

from __future__ import annotations

import numpy as np

import f3d_jax
from conftest import fixture_path


def test_inference_output_feeds_global_align(hf_folder):
    model = f3d_jax.load_model(hf_folder("dust3r_linear"))
    d = np.load(fixture_path("networks", "dust3r_linear", "inputs.npz"))
    imgs = [dict(img=d[f"image{k}.img"].transpose(0, 2, 3, 1), true_shape=d[f"image{k}.true_shape"], idx=k,
                 instance=str(k)) for k in range(2)]
    output = f3d_jax.inference(f3d_jax.make_pairs(imgs, "complete", symmetrize=True), model, batch_size=2,
                               verbose=False)
    h, w = imgs[0]["img"].shape[1:3]
    scene = f3d_jax.global_align(output, mode="pco", niter=30)
    assert scene.cam2world.shape == (2, 4, 4) and scene.depthmaps.shape == (2, h, w)
    loss = np.asarray(scene.loss_curve)
    assert loss.shape == (30,) and np.isfinite(loss).all() and loss[-1] < loss[0]
    rot = np.asarray(scene.cam2world)[:, :3, :3]
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-5)
    assert np.isfinite(np.asarray(scene.pts3d)).all()
