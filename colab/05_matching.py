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
# # f3d-jax: MASt3R matching of two photos
#
# MASt3R predicts, besides 3D points, a local descriptor per pixel. Matching two photos: both network passes
# (photo 1 with 2 and 2 with 1, in one batch), reciprocal nearest neighbours of the descriptors on an 8-pixel
# grid (MASt3R's fast reciprocal matching, in JAX), both passes merged with a confidence per match, as the
# sparse alignment of MASt3R-SfM matches its pairs.
# On Colab: the released MASt3R ViT-Large weights (CC BY-NC-SA 4.0) from the Hugging Face hub and two photos
# from the CroCo repository (or upload your own and change `IMAGE1`, `IMAGE2`). The same from a terminal:
# `f3d match IMG1 IMG2 --model SRC --out matches.png`.
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
# Inputs (`F3D_NOTEBOOK_TEST=1`: CI's tiny MASt3R checkpoint, fixture photos, small images).

# %%
import os
import subprocess
from pathlib import Path

TEST = os.environ.get("F3D_NOTEBOOK_TEST") == "1"
if TEST:
    CHECKPOINT = os.environ["F3D_NOTEBOOK_MAST3R"]
    IMAGE1, IMAGE2 = sorted(str(p) for p in Path(os.environ["F3D_NOTEBOOK_IMAGES"]).glob("Chateau*"))
    SIZE = 64
else:
    CHECKPOINT = "naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric"
    if not Path("croco").exists():
        subprocess.run(["git", "clone", "-q", "--depth", "1", "https://github.com/naver/croco", "croco"], check=True)
    IMAGE1, IMAGE2 = "croco/assets/Chateau1.png", "croco/assets/Chateau2.png"
    SIZE = 512

# %% [markdown]
# Match. `xy1`, `xy2` are pixels (x, y) of the working images (the network's input after the loader's resize
# and crop), most confident first; `source_pixels()` maps them back to the original photos.

# %%
import numpy as np

import f3d_jax
from f3d_jax.sfm import draw_matches, match_images

model = f3d_jax.load_model(CHECKPOINT)
m = match_images(model, IMAGE1, IMAGE2, size=SIZE, subsample=8)
print(f"{len(m)} matches between {m.names[0]} and {m.names[1]}")
src1, src2 = m.source_pixels()
for k in range(min(5, len(m))):
    print(f"  {tuple(m.xy1[k])} -> {tuple(m.xy2[k])}  conf {m.conf[k]:.2f}  (original photos: "
          f"{tuple(src1[k].round(1))} -> {tuple(src2[k].round(1))})")
assert len(m) > 0 and np.all(np.diff(m.conf) <= 0)

# %% [markdown]
# The matches side by side (at most 80 drawn, spread over the confidence ranking).

# %%
from IPython.display import display

display(draw_matches(m, max_draw=80))
