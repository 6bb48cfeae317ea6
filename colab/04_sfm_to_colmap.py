# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # f3d-jax: MASt3R-SfM, photos to cameras and a COLMAP model
#
# `f3d_jax.run_sfm`: a pair graph (every pair for a few photos; for many, MASt3R-SfM's retrieval graph, whose
# number of pairs grows linearly with the number of photos), the MASt3R network on every pair (each photo encoded
# once, pairs decoded in batches), reciprocal descriptor matching, the sparse global alignment (coarse 3D
# matching, then 2D reprojection), and the exports: a COLMAP sparse model whose points are **tracks of the
# matches** (cameras at the photos' original resolution, world-to-camera poses), the dense point cloud (PLY,
# GLB), nerfstudio `transforms.json`, per-view `.npz`.
# On Colab: the released MASt3R ViT-Large weights (CC BY-NC-SA 4.0) from the Hugging Face hub and your photos:
# upload photos of one scene (same orientation and aspect ratio) into a folder `photos/` (Files panel); without
# it the two CroCo example photos are used. A GPU runtime is much faster. The same from a terminal:
# `f3d reconstruct photos/ --align sparse --graph retrieval --model SRC --out DIR`.
#
# The next cell installs f3d-jax on Colab without touching Colab's jax (pinned as a pip constraint, see
# `01_pair_to_pointmaps.ipynb`); outside Colab it does nothing.

# %%
import sys

if "google.colab" in sys.modules:
    import importlib.metadata as md
    import subprocess

    keep = sorted({f"{d.metadata['Name']}=={d.version}" for d in md.distributions()
                   if d.metadata["Name"].lower().startswith(("jax", "libtpu"))})
    with open("/tmp/keep-jax.txt", "w") as f:
        f.write("\n".join(keep) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", "/tmp/keep-jax.txt",
                    "f3d-jax @ git+https://github.com/f3d-jax/f3d-jax"], check=True)

# %% [markdown]
# Inputs (`F3D_NOTEBOOK_TEST=1`: CI's tiny MASt3R checkpoint, three fixture photos, small images and a short
# coarse stage only).

# %%
import os
import subprocess
from pathlib import Path

TEST = os.environ.get("F3D_NOTEBOOK_TEST") == "1"
if TEST:
    CHECKPOINT = os.environ["F3D_NOTEBOOK_MAST3R"]
    IMAGES = os.environ["F3D_NOTEBOOK_IMAGES"]
    SIZE, NITER1, NITER2 = 64, 60, 0
else:
    CHECKPOINT = "naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric"
    IMAGES = "photos"
    if not Path(IMAGES).is_dir():
        if not Path("croco").exists():
            subprocess.run(["git", "clone", "-q", "--depth", "1", "https://github.com/naver/croco", "croco"],
                           check=True)
        IMAGES = ["croco/assets/Chateau1.png", "croco/assets/Chateau2.png"]
    SIZE, NITER1, NITER2 = 512, 300, 300
OUT = Path("out")

# %% [markdown]
# The whole pipeline in one call. `scene_graph=None` picks the graph from the number of photos: every pair up to
# 12 photos, else `retrieval-Na-k` (Na = min(20, N/2) keyframes all paired, each photo paired with its k =
# min(10, N-1) most similar photos by the encoder features; `retrieval=` takes MASt3R's retrieval model).
# Settings are the MASt3R demo's (`niter1`, `niter2`, `lr1`, `lr2`, `matching_conf_thr`,
# `shared_intrinsics` for photos of one camera, `min_conf_thr` of the dense cloud).

# %%
import numpy as np

import f3d_jax

model = f3d_jax.load_model(CHECKPOINT)
result = f3d_jax.run_sfm(IMAGES, model, out_dir=OUT, size=SIZE, scene_graph=None, niter1=NITER1, niter2=NITER2)
scene, recon, stats = result.scene, result.reconstruction, result.track_stats
print(f"{recon.n} images, graph {result.scene_graph}, {len(result.edges)} pairs")
print(f"loss {scene.loss_curve[0]:.4f} -> {scene.loss_curve[-1]:.4f}")
print("focals (px, working resolution):", np.asarray(scene.focals).round(1))
print(f"{stats.n_points} COLMAP points from {stats.n_matches} matches, mean track length "
      f"{stats.mean_track_length:.2f}, reprojection error mean {stats.mean_reproj_error:.2f} px")
print("seconds per stage:", {k: round(v, 1) for k, v in result.seconds.items()})
print("network pass:", result.inference)  # each photo encoded once, pairs decoded in chunks of batches
assert np.isfinite(scene.loss_curve).all() and stats.n_points > 0

# %% [markdown]
# What was written (`result.written`), and the COLMAP model read back with pycolmap (`pip install pycolmap`):
# every image registered, each point with its track of observations. Refine or densify with COLMAP:
# `colmap bundle_adjuster --input_path out/colmap/sparse/0 --output_path ...`, `colmap image_undistorter
# --image_path out/images --input_path out/colmap/sparse/0 ...`.

# %%
for fmt, path in result.written.items():
    print(f"{fmt:15s} {path}")
try:
    import pycolmap
except ImportError:
    print("pycolmap is not installed:", (OUT / "colmap" / "sparse" / "0" / "images.txt").read_text()[:400])
else:
    colmap = pycolmap.Reconstruction(str(OUT / "colmap" / "sparse" / "0"))
    print(f"pycolmap: {colmap.num_reg_images()} registered images, {colmap.num_points3D()} points, "
          f"mean track length {colmap.compute_mean_track_length():.2f}, "
          f"mean reprojection error {colmap.compute_mean_reprojection_error():.2f} px (original resolution)")
    assert colmap.num_reg_images() == recon.n

# %% [markdown]
# A quick look from above: the dense cloud's points, coloured, along the first camera's "up" axis, the COLMAP
# points in black and the camera centres in red.

# %%
from IPython.display import display
from PIL import Image


def top_view(recon, size: int = 400) -> Image.Image:
    """Orthographic view along camera 0's -y axis (its "up")."""
    R0, c0 = recon.cam2world[0, :3, :3], recon.cam2world[0, :3, 3]
    pts, cols = recon.pts3d[recon.mask], recon.images[recon.mask]
    layers = [(pts, cols), (recon.tracks.xyz, np.zeros((recon.tracks.n_points, 3), np.uint8)),
              (recon.cam2world[:, :3, 3], None)]
    local = [(p - c0) @ R0 for p, _ in layers]  # camera 0's axes: x right, y down, z forward
    xz = np.concatenate([p[:, [0, 2]] for p in local])
    lo, hi = np.percentile(xz, [1, 99], axis=0)
    scale = max(float((hi - lo).max()), 1e-9)
    canvas = np.full((size, size, 3), 255, np.uint8)
    for (p, c), loc in zip(layers, local):
        uv = ((loc[:, [0, 2]] - lo) / scale * (size - 1)).round().astype(int).clip(0, size - 1)
        if c is None:
            for u, v in uv:
                canvas[max(size - 4 - v, 0):size + 2 - v, max(u - 3, 0):u + 4] = (255, 0, 0)
        else:
            canvas[size - 1 - uv[:, 1], uv[:, 0]] = c
    return Image.fromarray(canvas)


display(top_view(recon))

# %% [markdown]
# On Colab, download `out/` (e.g. `!zip -r out.zip out`): `out/colmap/sparse/0` opens in COLMAP (or
# glomap / gsplat trainers that read COLMAP models), `out/transforms.json` in nerfstudio, the PLY/GLB in any 3D
# viewer, or `f3d view out/` on your machine.
