"""`f3d stereo` and `f3d flow`: CroCo-Stereo / CroCo-Flow tiled inference on one image pair.

The raw result (`.pfm` / `.npy` disparity, `.flo` / `.npy` flow) and its picture (`.png`) are each written to a
temporary name and renamed into place; the output folder must exist. Bad input (unreadable images, images of
different sizes, a checkpoint of the other task, a bad overlap or tile weighting) is one line and exit status 2,
checked before the network runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from f3d_jax.cli.options import Flow, Stereo
from f3d_jax.cli.run import CliError, say


def _load_rgb(path: str, what: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB of an image file (EXIF orientation applied), or a CliError naming it."""
    from f3d_jax.io.images import ImageLoadError, _open_path

    try:
        return np.asarray(_open_path(Path(path)), dtype=np.uint8)
    except ImageLoadError as e:
        raise CliError(f"{what} {e}") from None


def _outputs(out: str, ext: str) -> tuple[Path, Path]:
    stem = Path(out)
    if stem.suffix.lower() in (".pfm", ".npy", ".flo", ".png"):
        stem = stem.with_suffix("")
    if not stem.parent.is_dir():
        raise CliError(f"--out {out}: the folder {stem.parent} does not exist")
    return stem.with_name(stem.name + ext), stem.with_name(stem.name + ".png")


def run_stereo_or_flow(opts: Stereo | Flow) -> int:
    import PIL.Image

    from f3d_jax.io.atomic import atomic_open
    from f3d_jax.models.binocular import BinocularModel
    from f3d_jax.stereoflow.formats import img_to_tensor, write_flo, write_pfm
    from f3d_jax.stereoflow.pictures import disparity_to_rgb, flow_to_rgb
    from f3d_jax.stereoflow.tiling import conf_weight_params, tiled_pred
    from f3d_jax.weights.loading import load_model

    task = "stereo" if isinstance(opts, Stereo) else "flow"
    names = ("LEFT", "RIGHT") if task == "stereo" else ("IMG1", "IMG2")
    paths = (opts.left, opts.right) if task == "stereo" else (opts.img1, opts.img2)
    raw_path, png_path = _outputs(opts.out, "." + opts.format)
    if not 0 <= opts.overlap < 1:
        raise CliError(f"--overlap {opts.overlap} should be in [0, 1)")
    if opts.conf_mode is not None:
        try:
            conf_weight_params(opts.conf_mode)
        except ValueError as e:
            raise CliError(f"--conf-mode: {e}") from None
    a, b = (_load_rgb(p, n) for p, n in zip(paths, names))
    if a.shape != b.shape:
        raise CliError(f"{names[0]} {paths[0]} is {a.shape[1]}x{a.shape[0]} and {names[1]} {paths[1]} is "
                       f"{b.shape[1]}x{b.shape[0]}: the two images must have the same size")
    t0 = time.perf_counter()
    model = load_model(opts.model)
    if not isinstance(model, BinocularModel) or model.task != task:
        what = f"a CroCo-{model.task.capitalize()}" if isinstance(model, BinocularModel) else \
            f"a {model.config.official_class}"
        raise CliError(f"--model {opts.model} is {what} checkpoint, not a CroCo-{task.capitalize()} one "
                       f"(f3d checkpoints --family stereoflow lists them)")
    say(opts.quiet, f"f3d {task}: {model.config.official_class} {task}, crop {model.crop[0]}x{model.crop[1]}, "
                    f"{a.shape[1]}x{a.shape[0]} images")
    pred, _ = tiled_pred(model, img_to_tensor(a)[None], img_to_tensor(b)[None], overlap=opts.overlap,
                         conf_mode=opts.conf_mode)
    pred = np.asarray(pred[0], np.float32)
    if task == "stereo":
        disp = pred[..., 0]
        if opts.format == "pfm":
            write_pfm(raw_path, disp)
        else:
            with atomic_open(raw_path, "wb") as f:
                np.save(f, disp)
        picture = disparity_to_rgb(disp)
    else:
        if opts.format == "flo":
            write_flo(raw_path, pred)
        else:
            with atomic_open(raw_path, "wb") as f:
                np.save(f, pred)
        picture = flow_to_rgb(pred)
    with atomic_open(png_path, "wb") as f:
        PIL.Image.fromarray(picture).save(f, format="PNG")
    print(f"f3d {task}: {a.shape[1]}x{a.shape[0]}, {time.perf_counter() - t0:.1f} s -> {raw_path}, {png_path}")
    return 0
