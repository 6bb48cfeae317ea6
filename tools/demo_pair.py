"""Offline demo: convert an official-format checkpoint, run one pair, save an orbax checkpoint.

Usage:
    python tools/demo_pair.py [--checkpoint PATH.pth | HF folder | naver/<repo>] [--images A B] [--out DIR]

Without arguments it uses the tiny MASt3R checkpoint and the photos of the project fixtures
(`F3D_FIXTURES`, default `../shared/fixtures`), so it runs offline in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import lzma
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import f3d_jax
from f3d_jax.io.atomic import atomic_open

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("F3D_FIXTURES", REPO.parent / "shared" / "fixtures"))


@contextlib.contextmanager
def fixture_checkpoint(src: Path) -> Iterator[Path]:
    """The xz-compressed fixture checkpoint `src`, decompressed into a temporary folder that is
    deleted (with the checkpoint) when the block ends, even on an error."""
    with tempfile.TemporaryDirectory(prefix="f3d_demo_") as tmp:
        ckpt = Path(tmp) / "checkpoint.pth"
        with lzma.open(src) as f, open(ckpt, "wb") as g:
            shutil.copyfileobj(f, g)
        yield ckpt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="official .pth, HF folder, HF repo id or f3d-jax orbax dir")
    ap.add_argument("--images", nargs="+", help="two or more images (default: fixture photos)")
    ap.add_argument("--size", type=int, default=None, help="image size for load_images (default: 512, tiny model: 64)")
    ap.add_argument("--out", default="out/demo", help="output folder")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    size = args.size
    t = time.perf_counter()
    if args.checkpoint is None:
        src = FIXTURES / "networks" / "mast3r" / "checkpoint.pth.xz"
        if not src.exists():
            raise SystemExit(f"{src}: fixture checkpoint not found; pass --checkpoint (or set F3D_FIXTURES)")
        with fixture_checkpoint(src) as ckpt:  # deleted as soon as it is loaded
            model = f3d_jax.load_model(ckpt)
        ckpt_name = f"{src} (decompressed)"
        size = size or 64
    else:
        model = f3d_jax.load_model(args.checkpoint)
        ckpt_name = args.checkpoint
    print(f"loaded {type(model.config).__name__} from {ckpt_name} in {time.perf_counter() - t:.1f} s")
    images = args.images or [str(p) for p in sorted((FIXTURES / "networks" / "image_preprocessing" / "photos").glob("*"))[:3]]
    dst = f3d_jax.save_model(model, out / "model", overwrite=True)
    print(f"saved orbax checkpoint: {dst}")

    imgs = f3d_jax.load_images(images, size=size or 512, verbose=False)
    pairs = f3d_jax.make_pairs(imgs, scene_graph="complete", symmetrize=True)
    t = time.perf_counter()
    res = f3d_jax.inference(pairs, model, batch_size=4, verbose=True)
    print(f"{len(pairs)} pairs in {time.perf_counter() - t:.1f} s (including compilation)")
    pts, conf = res["pred1"]["pts3d"], res["pred1"]["conf"]
    if isinstance(pts, np.ndarray):  # batched layout (all images of one size)
        pts, conf = list(pts), list(conf)
    for k, (p, c) in enumerate(zip(pts, conf)):
        i, j = res["view1"]["idx"][k], res["view2"]["idx"][k]
        print(f"  pair ({i}, {j}): pts3d {tuple(p.shape)}, conf in [{c.min():.2f}, {c.max():.2f}]")
    with atomic_open(out / "pairs.npz", "wb") as f:  # a complete file or none
        np.savez(f, **{f"pair{k}.pts3d": p for k, p in enumerate(pts)},
                 **{f"pair{k}.conf": c for k, c in enumerate(conf)})
    print(f"wrote {out / 'pairs.npz'}")


if __name__ == "__main__":
    main()
