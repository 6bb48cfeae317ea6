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
# # f3d-jax: one image pair to pointmaps
#
# DUSt3R, in JAX, on two photos: each view's 3D points in the first camera's frame, and a confidence per pixel.
# On Colab this loads the released DUSt3R ViT-Large 512 DPT weights from the Hugging Face hub (licence
# CC BY-NC-SA 4.0, non-commercial) and two photos from the CroCo repository. A GPU runtime is faster; a CPU
# runtime works too.
#
# The next cell installs f3d-jax without touching Colab's own jax (which comes with its CUDA/TPU plugin): the
# installed jax packages are pinned as pip constraints, so pip picks versions of the other dependencies that
# work with them, or stops with a message; it never replaces jax. Outside Colab the cell does nothing (install
# from a clone: `pip install -e .`).

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
# Inputs. `F3D_NOTEBOOK_TEST=1` is the switch CI uses (`tests/test_notebooks.py`): a tiny checkpoint of the
# same architecture family and small fixture photos instead of the released weights, so the notebook runs
# top to bottom in seconds. Set `CHECKPOINT` and `IMAGES` to your own to try other inputs.

# %%
import os
import subprocess
from pathlib import Path

TEST = os.environ.get("F3D_NOTEBOOK_TEST") == "1"
if TEST:
    CHECKPOINT = os.environ["F3D_NOTEBOOK_CHECKPOINT"]
    IMAGES = sorted(str(p) for p in Path(os.environ["F3D_NOTEBOOK_IMAGES"]).iterdir())[:2]
    SIZE = 224
else:
    CHECKPOINT = "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt"  # any registry name, HF repo id, .pth or orbax dir
    if not Path("croco").exists():
        subprocess.run(["git", "clone", "-q", "--depth", "1", "https://github.com/naver/croco", "croco"], check=True)
    IMAGES = ["croco/assets/Chateau1.png", "croco/assets/Chateau2.png"]
    SIZE = 512
print(CHECKPOINT, IMAGES, SIZE)

# %% [markdown]
# The model: a frozen config and a plain dict of parameters. The images go through the official DUSt3R loader
# (long side resized to `SIZE`, cropped to multiples of 16, NHWC in [-1, 1]).

# %%
import jax
import numpy as np

import f3d_jax

print("jax", jax.__version__, jax.devices())
model = f3d_jax.load_model(CHECKPOINT)
print(type(model.config).__name__, model.config.official_class)
imgs = f3d_jax.load_images(IMAGES, size=SIZE)
pairs = f3d_jax.make_pairs(imgs, scene_graph="complete", symmetrize=True)  # (0, 1) and (1, 0)
output = f3d_jax.inference(pairs, model, batch_size=1)
for key in ("pts3d", "conf"):
    print("pred1", key, output["pred1"][key].shape)
print("pred2 pts3d_in_other_view", output["pred2"]["pts3d_in_other_view"].shape)

# %% [markdown]
# Pair (0, 1): view 0's points in its own camera frame (`pred1`), view 1's points in camera 0's frame
# (`pred2`). Depth is the z of `pred1`'s points (OpenCV axes: z forward); the confidence is 1 + exp(x) >= 1.

# %%
import cv2
from IPython.display import display
from PIL import Image


def colormap(x: np.ndarray) -> np.ndarray:
    """(H, W) float -> (H, W, 3) uint8 RGB (turbo), scaled between the 2nd and 98th percentiles."""
    lo, hi = np.percentile(x, [2, 98])
    u8 = (np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)
    return cv2.applyColorMap(u8, cv2.COLORMAP_TURBO)[..., ::-1]


rgb = ((np.asarray(output["view1"]["img"][0]) + 1) * 127.5).clip(0, 255).astype(np.uint8)
depth = np.asarray(output["pred1"]["pts3d"][0, ..., 2])
conf = np.asarray(output["pred1"]["conf"][0])
assert np.isfinite(depth).all() and (conf >= 1).all()
print(f"depth {depth.min():.3f} .. {depth.max():.3f}, confidence {conf.min():.2f} .. {conf.max():.2f}")
display(Image.fromarray(np.concatenate([rgb, colormap(depth), colormap(np.log(conf))], axis=1)))

# %% [markdown]
# Next: `02_multiview_to_exports.ipynb` aligns many views into one scene (cameras, a point cloud) and writes
# COLMAP, nerfstudio, PLY and GLB files; `f3d reconstruct IMAGES... --model SRC --out DIR` does the same from a
# terminal.
