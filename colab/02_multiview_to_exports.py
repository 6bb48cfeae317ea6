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
# # f3d-jax: many views to cameras, a point cloud and files other tools open
#
# Pairwise DUSt3R predictions over a scene graph, dense global alignment (the official PointCloudOptimizer,
# as one jitted loop), then exports: a COLMAP sparse model (text and binary, intrinsics at the original image
# resolution), nerfstudio `transforms.json`, a PLY point cloud, a GLB scene, per-view `.npz`.
# On Colab: the released DUSt3R ViT-Large 512 DPT weights (CC BY-NC-SA 4.0) from the Hugging Face hub and
# your photos: upload 2 to ~30 photos of one scene into a folder `photos/` (Files panel); without it the two
# CroCo example photos are used. The same from a terminal: `f3d reconstruct photos/* --model SRC --out DIR`.
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
# Inputs (`F3D_NOTEBOOK_TEST=1`: CI's tiny checkpoint, three fixture photos and a short optimisation).

# %%
import os
import subprocess
from pathlib import Path

TEST = os.environ.get("F3D_NOTEBOOK_TEST") == "1"
if TEST:
    CHECKPOINT = os.environ["F3D_NOTEBOOK_CHECKPOINT"]
    IMAGES = os.environ["F3D_NOTEBOOK_IMAGES"]
    SIZE, NITER = 224, 30
else:
    CHECKPOINT = "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt"
    IMAGES = "photos"
    if not Path(IMAGES).is_dir():
        if not Path("croco").exists():
            subprocess.run(["git", "clone", "-q", "--depth", "1", "https://github.com/naver/croco", "croco"],
                           check=True)
        IMAGES = ["croco/assets/Chateau1.png", "croco/assets/Chateau2.png"]
    SIZE, NITER = 512, 300
OUT = Path("out")

# %% [markdown]
# Pairs over the complete graph (every ordered pair; `swin-K` or `logwin-K` for long sequences), then the
# network on each pair.

# %%
import jax
import numpy as np

import f3d_jax

model = f3d_jax.load_model(CHECKPOINT)
imgs = f3d_jax.load_images(IMAGES, size=SIZE)
pairs = f3d_jax.make_pairs(imgs, scene_graph="complete", symmetrize=True)
output = f3d_jax.inference(pairs, model, batch_size=1)
print(len(imgs), "images,", len(pairs), "pairs")

# %% [markdown]
# Global alignment: one pose, focal and depth map per image such that every pair's pointmaps agree.
# Poses are cam-to-world 4x4 with OpenCV axes (x right, y down, z forward).

# %%
result = f3d_jax.global_align(output, mode="pco", init="mst", niter=NITER, schedule="cosine", lr=0.01)
loss = np.asarray(result.loss_curve)
print(f"loss {loss[0]:.4f} -> final loss {float(result.final_loss):.4f} after {NITER} iterations")
print("camera centres:\n", np.asarray(result.cam2world[:, :3, 3]).round(3))
print("focals (px):", np.asarray(result.focals).round(1))
assert np.isfinite(loss).all()

# %% [markdown]
# From the alignment to a `Reconstruction` (host arrays, with the mapping back to the original image pixels),
# then every export (`formats=("colmap", "ply")` for a few). `reconstruction.npz` reloads with
# `Reconstruction.load` and opens in the viewer: `f3d view out/` (or `f3d_jax.viewer.serve("out/")`) serves it
# in the browser, with a confidence slider.

# %%
from f3d_jax.export import Reconstruction, export, reconstruction_from_alignment

recon = reconstruction_from_alignment(result, imgs, min_conf_thr=3.0)
written = export(recon, OUT)  # every format, reconstruction.npz included
for fmt, path in written.items():
    print(f"{fmt:12s} {path}")
again = Reconstruction.load(OUT / "reconstruction.npz")
np.testing.assert_array_equal(again.pts3d, recon.pts3d)
print(int(recon.mask.sum()), "points kept of", recon.mask.size)

# %% [markdown]
# A quick look from above (no 3D viewer needed): the kept points, coloured, seen along the first camera's
# "up" axis, and the camera centres in red.

# %%
from IPython.display import display
from PIL import Image


def top_view(recon, size: int = 400) -> Image.Image:
    """Orthographic view along camera 0's -y axis (its "up"); higher points drawn over lower ones."""
    R0 = recon.cam2world[0, :3, :3]
    pts, cols = recon.pts3d[recon.mask], recon.images[recon.mask]
    centres = recon.cam2world[:, :3, 3]
    if len(pts) == 0:
        pts, cols = centres, np.zeros((len(centres), 3), np.uint8)
    local = (np.concatenate([pts, centres]) - centres[0]) @ R0  # camera 0's axes: x right, y down, z forward
    xz, height = local[:, [0, 2]], -local[:, 1]
    lo, hi = np.percentile(xz[: len(pts)], [1, 99], axis=0)
    lo, hi = np.minimum(lo, xz[len(pts):].min(0)), np.maximum(hi, xz[len(pts):].max(0))
    uv = ((xz - lo) / max(float((hi - lo).max()), 1e-9) * (size - 1)).round().astype(int).clip(0, size - 1)
    canvas = np.full((size, size, 3), 255, np.uint8)
    order = np.argsort(height[: len(pts)])
    canvas[size - 1 - uv[order, 1], uv[order, 0]] = cols[order]
    for u, v in uv[len(pts):]:
        canvas[max(size - 4 - v, 0):size + 2 - v, max(u - 3, 0):u + 4] = (255, 0, 0)
    return Image.fromarray(canvas)


display(top_view(recon))

# %% [markdown]
# On Colab, download `out/` (e.g. `!zip -r out.zip out`): open `out/colmap` in COLMAP, `out/transforms.json`
# in nerfstudio, the PLY/GLB in any 3D viewer, or `f3d view out/` on your machine.
