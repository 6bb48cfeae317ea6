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
# # f3d-jax: convert an official checkpoint to orbax
#
# The official `.pth` files (and the Hugging Face folders) are read by f3d-jax's own safe reader (no pickle
# code runs) and converted with strict key and shape checks. Saving the converted model as an orbax checkpoint
# makes later loads faster and independent of the original file; `dtype=jnp.bfloat16` halves it.
# The same from a terminal: `f3d convert SRC DST [--dtype bfloat16]`.
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
# Inputs (`F3D_NOTEBOOK_TEST=1`: CI's tiny checkpoint and fixture photos). On Colab: the released DUSt3R
# ViT-Large 512 DPT from the Hugging Face hub (CC BY-NC-SA 4.0: the converted weights keep that licence).

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
    CHECKPOINT = "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt"  # a registry name, HF repo id, .pth or HF folder
    if not Path("croco").exists():
        subprocess.run(["git", "clone", "-q", "--depth", "1", "https://github.com/naver/croco", "croco"], check=True)
    IMAGES = ["croco/assets/Chateau1.png", "croco/assets/Chateau2.png"]
    SIZE = 512
DST = Path("converted/dust3r_orbax")

# %% [markdown]
# The released checkpoints, with their Hugging Face repos and licences:

# %%
import jax
import jax.numpy as jnp
import numpy as np

import f3d_jax

for name in f3d_jax.list_checkpoints("dust3r"):
    info = f3d_jax.get_checkpoint_info(name)
    print(f"{name:45s} {info.hf_repo or '-':45s} {info.license}")

# %% [markdown]
# Convert and save (atomic: the directory appears complete or not at all), then load it back.

# %%
model = f3d_jax.load_model(CHECKPOINT)
out = f3d_jax.save_model(model, DST, overwrite=True)
size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
print(f"{out}: {size_mb:.1f} MiB, {model.config.official_class}")

restored = f3d_jax.load_model(DST)
assert restored.config == model.config
same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), model.params, restored.params)
assert all(jax.tree.leaves(same)), "the orbax checkpoint holds exactly the converted weights"
print("params identical:", len(jax.tree.leaves(same)), "arrays")

# %% [markdown]
# Same predictions from the orbax checkpoint as from the original file:

# %%
imgs = f3d_jax.load_images(IMAGES, size=SIZE)
pairs = f3d_jax.make_pairs(imgs, scene_graph="complete", symmetrize=True)
a = f3d_jax.inference(pairs, model, batch_size=1, verbose=False)
b = f3d_jax.inference(pairs, restored, batch_size=1, verbose=False)
for head in ("pred1", "pred2"):
    for key, value in a[head].items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(b[head][key]))
print("outputs identical:", {k: v.shape for k, v in a["pred1"].items()})

# %% [markdown]
# A bfloat16 copy: half the size; `load_model(dst)` serves it in bf16 (the heads too, as the weights are bf16).

# %%
del model, restored, a, b  # the ViT-Large weights take 2.1 GB each in float32: free them first
bf16 = f3d_jax.save_model(f3d_jax.load_model(CHECKPOINT, dtype=jnp.bfloat16), f"{DST}_bf16", overwrite=True)
bf16_mb = sum(p.stat().st_size for p in bf16.rglob("*") if p.is_file()) / 2**20
print(f"{bf16}: {bf16_mb:.1f} MiB (float32: {size_mb:.1f} MiB)")
assert {leaf.dtype for leaf in jax.tree.leaves(f3d_jax.load_model(bf16).params)} == {jnp.dtype(jnp.bfloat16)}
