"""The main job, offline and self-contained: images in, pairwise pointmaps, a globally aligned scene out.

Usage:
    python tools/demo_pair.py [--checkpoint SRC] [--images A B ...] [--size N] [--niter K] [--out DIR]

With `--checkpoint` (an official `.pth`, a Hugging Face folder or repo id, a released checkpoint name
or an f3d-jax orbax folder) and `--images`, it runs the real model on your photos. Without them it
needs nothing outside the repository: a tiny DUSt3R of the official architecture with seeded random
weights, saved as an orbax checkpoint and loaded back, on three generated images. The geometry it
then finds is meaningless (random weights); the pipeline is the real one.

Writes `DIR/pairs.npz` (per pair: view indices, pts3d, conf) and `DIR/scene.npz` (cam2world (N,4,4)
OpenCV axes, focals (N,), principal points (N,2), pts3d (N,H,W,3) world points, conf (N,H,W)),
each written under a temporary name and renamed, and `DIR/model` (orbax) with `--save-model`.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import f3d_jax
from f3d_jax.io.atomic import atomic_open
from f3d_jax.models.config import config_from_official
from f3d_jax.models.model import Model, abstract_params

# The official DUSt3R architecture (RoPE, linear head, exp depth/conf modes) at toy width and depth.
TINY_DUST3R = dict(pos_embed="RoPE100", patch_embed_cls="PatchEmbedDust3R", img_size=(224, 224), head_type="linear",
                   output_mode="pts3d", depth_mode=("exp", -math.inf, math.inf), conf_mode=("exp", 1, math.inf),
                   enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=48, dec_depth=2, dec_num_heads=4,
                   landscape_only=False)


def tiny_random_model(seed: int = 0) -> Model:
    """`TINY_DUST3R` with seeded random weights: normal(0, 1/sqrt(fan_in)) kernels, unit scales, zero biases."""
    config = config_from_official("AsymmetricCroCo3DStereo", TINY_DUST3R)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(path[-1].key) if hasattr(path[-1], "key") else str(path[-1])
        if name == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        if name == "bias" or leaf.ndim == 0:
            return np.zeros(leaf.shape, leaf.dtype)
        fan_in = max(1, math.prod(leaf.shape[:-1]))
        return (rng.standard_normal(leaf.shape) / math.sqrt(fan_in)).astype(leaf.dtype)

    params = jax.tree_util.tree_map_with_path(fill, abstract_params(config))
    return Model(config, jax.tree.map(jax.numpy.asarray, params))


def generated_images(n: int = 3, H: int = 240, W: int = 320, seed: int = 0) -> list[np.ndarray]:
    """`n` overlapping crops of one smooth random texture with a few discs: (H, W, 3) uint8 each."""
    rng = np.random.default_rng(seed)
    big_w = W + 40 * (n - 1)
    yy, xx = np.mgrid[0:H, 0:big_w] / 40.0
    tex = np.zeros((H, big_w, 3))
    for c in range(3):
        for _ in range(4):
            fy, fx, ph = rng.uniform(0.2, 1.5, 2).tolist() + [rng.uniform(0, 2 * np.pi)]
            tex[..., c] += np.sin(fy * yy + fx * xx + ph)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, H), rng.uniform(0, big_w), rng.uniform(8, 30)
        tex[(yy * 40 - cy) ** 2 + (xx * 40 - cx) ** 2 < r * r] = rng.uniform(-3, 3, 3)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    return [(255 * tex[:, 40 * k: 40 * k + W]).astype(np.uint8) for k in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="official .pth, HF folder or repo id, released name, or f3d-jax orbax dir")
    ap.add_argument("--images", nargs="+", help="two or more image files or a folder (default: generated images)")
    ap.add_argument("--size", type=int, default=None, help="load_images size (default: 224 or 512, from the model)")
    ap.add_argument("--niter", type=int, default=100, help="global alignment iterations")
    ap.add_argument("--out", default="out/demo", help="output folder")
    ap.add_argument("--save-model", action="store_true", help="also save the model as an orbax checkpoint in OUT/model")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    if args.checkpoint is None:
        with tempfile.TemporaryDirectory(prefix="f3d_demo_") as tmp:  # round trip through orbax, then deleted
            f3d_jax.save_model(tiny_random_model(), Path(tmp) / "tiny_dust3r")
            model = f3d_jax.load_model(Path(tmp) / "tiny_dust3r")
        source = "a tiny random-weight DUSt3R (saved and reloaded as orbax)"
    else:
        model = f3d_jax.load_model(args.checkpoint)
        source = args.checkpoint
    print(f"loaded {type(model.config).__name__} from {source} in {time.perf_counter() - t:.1f} s")
    if args.save_model:
        print(f"saved orbax checkpoint: {f3d_jax.save_model(model, out / 'model', overwrite=True)}")

    size = args.size or (224 if max(model.config.img_size) <= 224 else 512)
    images = args.images if args.images else generated_images()
    imgs = f3d_jax.load_images(images[0] if len(images) == 1 else images, size=size, verbose=False)
    pairs = f3d_jax.make_pairs(imgs, scene_graph="complete", symmetrize=True)
    t = time.perf_counter()
    res = f3d_jax.inference(pairs, model, batch_size=4, verbose=False)
    print(f"{len(imgs)} images, {len(pairs)} pairs inferred in {time.perf_counter() - t:.1f} s (compilation included)")
    pts, conf = res["pred1"]["pts3d"], res["pred1"]["conf"]
    with atomic_open(out / "pairs.npz", "wb") as f:  # a complete file or none
        np.savez(f, view1_idx=np.asarray(res["view1"]["idx"]), view2_idx=np.asarray(res["view2"]["idx"]),
                 **{f"pair{k}.pts3d": np.asarray(p) for k, p in enumerate(pts)},
                 **{f"pair{k}.conf": np.asarray(c) for k, c in enumerate(conf)})

    t = time.perf_counter()
    scene = f3d_jax.global_align(res, mode="pco" if len(imgs) > 2 else "pairviewer", init="mst", niter=args.niter)
    print(f"global alignment ({args.niter} iterations) in {time.perf_counter() - t:.1f} s")
    with atomic_open(out / "scene.npz", "wb") as f:
        np.savez(f, cam2world=np.asarray(scene.cam2world), focals=np.asarray(scene.focals),
                 principal_points=np.asarray(scene.principal_points), pts3d=np.asarray(scene.pts3d),
                 conf=np.asarray(scene.conf))
    for i in range(len(imgs)):
        c = np.asarray(scene.cam2world[i])[:3, 3]
        print(f"  camera {i}: focal {float(scene.focals[i]):.1f} px, centre ({c[0]:+.3f}, {c[1]:+.3f}, {c[2]:+.3f})")
    print(f"wrote {out / 'pairs.npz'} and {out / 'scene.npz'}")


if __name__ == "__main__":
    main()
