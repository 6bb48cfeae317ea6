"""A tiny MASt3R checkpoint for SfM tests and notebooks: the `networks/mast3r` fixture's random weights (HF
folder: config.json + model.safetensors) with the z channel of both DPT point heads shifted up.

Why the shift: with random weights the heads' raw z straddles 0, so half the "depths" are negative and the
sparse alignment rightly refuses the degenerate pointmaps. A bias of +3 on the raw z (before the `exp` depth
mode) makes every depth positive while the per-pixel x, y, z, confidences and descriptors stay the network's
own random outputs: a real network pass through the real checkpoint reader, a geometry that aligns.
"""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save

Z_SHIFT = 3.0


def write_tiny_mast3r(fixture_dir: Path, dst: Path) -> Path:
    """Writes the shifted tiny MASt3R HF folder (config.json, README.md, model.safetensors) into `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "README.md"):
        shutil.copyfile(fixture_dir / name, dst / name)
    with lzma.open(fixture_dir / "model.safetensors.xz") as f:
        tensors = dict(load(f.read()))
    for head in ("downstream_head1", "downstream_head2"):
        key = f"{head}.dpt.head.4.bias"  # channels x, y, z, confidence
        b = np.array(tensors[key])
        b[2] += Z_SHIFT
        tensors[key] = b
    (dst / "model.safetensors").write_bytes(save(tensors))
    return dst
