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
# # f3d-jax: fine-tune DUSt3R on your own pairs
#
# The training loop of `f3d train` (`f3d_jax.train`), from a notebook: start from a released checkpoint (here
# DUSt3R ViT-Large 224 linear, licence CC BY-NC-SA 4.0, non-commercial), fine-tune it with the official
# criterion `ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)` on a folder of training pairs in the
# on-disk pair format (`f3d_jax.train.data`, see docs/training.md) or, without any download, on synthetic
# rooms rendered on the fly; plot the loss and save the fine-tuned model. Use a GPU or TPU runtime.
#
# The next cell installs f3d-jax without touching Colab's own jax: the installed jax packages are pinned as
# pip constraints. Outside Colab it does nothing (install from a clone: `pip install -e .`).

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
# Settings. `F3D_NOTEBOOK_TEST=1` is the switch CI uses (`tests/test_notebooks.py`): a tiny DUSt3R checkpoint
# of the same family, 64x48 synthetic pairs and three updates, so the notebook runs top to bottom on a CPU.
# Set `PAIRS` to your dataset folder (written with `f3d_jax.train.data.write_pairs_dataset`) to train on it;
# `None` uses the synthetic source.

# %%
import os
from pathlib import Path

TEST = os.environ.get("F3D_NOTEBOOK_TEST") == "1"
if TEST:
    CHECKPOINT = os.environ["F3D_NOTEBOOK_CHECKPOINT"]
    PAIRS = None
    RESOLUTION = (64, 48)  # (W, H) of the training crops
    STEPS, BATCH, LR = 3, 2, 1e-4
else:
    CHECKPOINT = "naver/DUSt3R_ViTLarge_BaseDecoder_224_linear"  # registry name, HF repo id, .pth or orbax dir
    PAIRS = None  # e.g. "/content/drive/MyDrive/my_pairs"
    RESOLUTION = (224, 224)
    STEPS, BATCH, LR = 300, 4, 1e-5
OUT = Path("finetune_run")
print(CHECKPOINT, PAIRS, RESOLUTION, STEPS, BATCH, LR)

# %% [markdown]
# The run's settings: a `TrainConfig`, as in `experiments/configs/*.py`. The model is given by its official
# constructor string, read here from the checkpoint itself; `pretrained` loads the checkpoint's weights into it
# (the log lists what was and was not loaded). The batches come from the grain pipeline: the official
# crop/resize to `RESOLUTION`, colour jitter, deterministic and resumable order.

# %%
import dataclasses

import jax

import f3d_jax
from f3d_jax.train.config import DataConfig, TrainConfig
from f3d_jax.train.optim import OptimConfig
from f3d_jax.weights.constructor import format_constructor

print("jax", jax.__version__, jax.devices())
base = f3d_jax.load_model(CHECKPOINT)
MODEL = format_constructor(base.config.official_class,
                           {f.name: getattr(base.config, f.name) for f in dataclasses.fields(base.config)})
print(MODEL)
source = f"pairs:{PAIRS}" if PAIRS else "grain-synthetic"
config = TrainConfig(
    name="finetune",
    model=MODEL,
    pretrained=CHECKPOINT,
    criterion="ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)",
    steps=STEPS,
    batch_size=BATCH,
    iters_per_epoch=max(STEPS // 10, 1),
    optim=OptimConfig(lr=LR, min_lr=LR / 100, warmup_epochs=1, epochs=10, weight_decay=0.05),
    data=DataConfig(source=source, num_scenes=8 if TEST else 256, size=RESOLUTION[::-1],
                    resolutions=(RESOLUTION,)),
    compute_dtype="float32" if TEST or jax.default_backend() == "cpu" else "bfloat16",
    mesh_data=1 if TEST else -1,
    log_every=1 if TEST else 10,
    save_every=STEPS,
)

# %% [markdown]
# Train. The run resumes from `OUT/checkpoints` when it is there (run the cell again after an interruption);
# `OUT/metrics.jsonl` gets one line per logged step and `OUT/tb` the TensorBoard events
# (`%load_ext tensorboard`, `%tensorboard --logdir finetune_run/tb`).

# %%
from f3d_jax.train.trainer import train

result = train(config, OUT)
print(f"steps {result.start_step} -> {int(result.state.step)}, final loss {result.history[-1]['loss']:.4f}")

# %% [markdown]
# The loss of every logged step, from `metrics.jsonl` (drawn with PIL: no plotting library needed).

# %%
import math

from IPython.display import display
from PIL import Image, ImageDraw

from f3d_jax.train.metrics import read_jsonl

rows = read_jsonl(OUT / "metrics.jsonl")
assert rows and all(math.isfinite(r["loss"]) for r in rows)
steps, losses = [r["step"] for r in rows], [r["loss"] for r in rows]
W, H, M = 480, 240, 40
lo, hi = min(losses), max(losses) + 1e-9
s0, s1 = steps[0], max(steps[-1], steps[0] + 1)
xy = [(M + (s - s0) / (s1 - s0) * (W - 2 * M), H - M - (v - lo) / (hi - lo) * (H - 2 * M)) for s, v in zip(steps, losses)]
plot = Image.new("RGB", (W, H), "white")
draw = ImageDraw.Draw(plot)
draw.rectangle([M, M, W - M, H - M], outline="gray")
if len(xy) > 1:
    draw.line(xy, fill="royalblue", width=2)
for x, y in xy:
    draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill="royalblue")
draw.text((M, 8), f"ConfLoss(Regr3D) per update: {losses[0]:.3f} -> {losses[-1]:.3f}", fill="black")
draw.text((M, H - M + 6), f"update {s0} .. {steps[-1]}   (loss {lo:.3f} .. {hi:.3f})", fill="black")
display(plot)

# %% [markdown]
# Save the fine-tuned weights as an f3d checkpoint (orbax; `f3d_jax.load_model` reads it back, and every
# `f3d` command takes it as `--model`).

# %%
import numpy as np

from f3d_jax.models.model import Model

saved = f3d_jax.save_model(Model(base.config, jax.device_get(result.state.params)), "finetuned_model",
                           overwrite=True)
reloaded = f3d_jax.load_model(saved)
same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(reloaded.params),
                                                jax.tree.leaves(jax.device_get(result.state.params))))
moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
            for a, b in zip(jax.tree.leaves(reloaded.params), jax.tree.leaves(base.params)))
assert same and moved > 0
print(f"saved {saved}: params reloaded identical, largest change from the checkpoint {moved:.2e}")
