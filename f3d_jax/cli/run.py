"""What each `f3d` subcommand does, given its options (`f3d_jax.cli.options`).

`reconstruct` and `demo` build their whole output folder in a temporary sibling and rename it into place at the
end (`f3d_jax.io.atomic.replace_dir`): an interrupted or failed run leaves the previous result (or nothing),
never half of one. An unwritable destination fails before any model or image is loaded.

Errors meant for the user are raised as `CliError` (or the package's own `CheckpointError`, `ImageLoadError`,
`ReconstructionError`...); `f3d_jax.cli.main` prints them as one line.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from f3d_jax.cli.options import (DEMO_COMMAND, AlignOptions, Checkpoints, Convert, Demo, Export, Flow, Match,
                                 Reconstruct, Stereo, Train, View)
from f3d_jax.cli.timing import StageClock

RESULT_FILE = "reconstruction.npz"
SUMMARY_FILE = "summary.png"
DEMO_SIZE = 128  # long side of the demo's working images (rendered at twice it): 6 views align in seconds


class CliError(Exception):
    """A problem with the user's input or environment, printed as one line; `code` is the exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def output_error(out: Path, e: OSError) -> CliError:
    """One line for an OSError met while writing the output folder `out` (nothing was written there)."""
    where = f" ({e.filename})" if e.filename else ""
    if e.errno == errno.ENOSPC:
        return CliError(f"no space left on the device of {out}{where}: nothing was written; free some space and "
                        "run again", 1)
    if e.errno == errno.EDQUOT:
        return CliError(f"disk quota exceeded writing {out}{where}: nothing was written", 1)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CliError(f"cannot write the output folder {out}: {e.strerror}{where}", 1)
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return CliError(f"cannot create the output folder {out}: a file is in the way{where}", 1)
    return CliError(f"cannot write the output folder {out}: {e.strerror or e}{where}", 1)


# ------------------------------------------------------------------------------------------------------------
# shared steps


def say(quiet: bool, message: str) -> None:
    """A progress message (stderr; the summary lines go to stdout)."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def check_out_dir(out: str) -> Path:
    """The output folder, refused if it exists and holds anything but a previous f3d result."""
    path = Path(os.path.abspath(out))
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise CliError(f"--out {out}: exists and is not a folder")
        if any(path.iterdir()) and not (path / RESULT_FILE).is_file():
            raise CliError(f"--out {out}: the folder exists and is not an f3d result (no {RESULT_FILE}); "
                           "choose a new folder: f3d only replaces its own results")
    return path


def write_out_dir(out: Path, fill: Callable[[Path], Any]) -> Any:
    """Runs `fill(tmp)` in a new temporary sibling of `out`, then renames it to `out` (replacing a previous
    result). Returns what `fill` returns."""
    from f3d_jax.io.atomic import replace_dir

    box: list[Any] = []
    try:
        replace_dir(out, lambda tmp: box.append(fill(tmp)), overwrite=True)
    except OSError as e:
        raise output_error(out, e) from None
    return box[0]


def check_graph(graph: str, align: str = "dense", retrieval_ok: bool = True) -> None:
    """A bad --graph fails before any model is loaded. 'retrieval', 'retrieval-k' and 'retrieval-Na-k' take the
    similarity matrix of the model's encoder (or of --retrieval) when the images are known."""
    from f3d_jax.infer.pairs import parse_scene_graph
    from f3d_jax.sfm.graph import resolve_scene_graph

    try:
        g = parse_scene_graph(resolve_scene_graph(graph, 2))
    except ValueError as e:
        raise CliError(f"--graph: {e}") from None
    if g.kind == "retrieval" and not retrieval_ok:
        raise CliError(f"--graph {graph}: the retrieval graph is for f3d reconstruct (the demo's cameras are "
                       "known); use complete, swin-K, logwin-K or oneref-I")


def check_positive(**values: int | None) -> None:
    for name, v in values.items():
        if v is not None and v < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def dense_config(opts: AlignOptions):
    try:
        return opts.dense_config()
    except ValueError as e:
        raise CliError(str(e).replace("DenseConfig: ", "--").replace("_", "-", 1)) from None


def image_paths(items: Sequence[str]) -> list[Path]:
    """The image files named by `items` (files, or folders read in sorted name order), absolute."""
    from f3d_jax.io.images import SUPPORTED_EXTENSIONS, ImageLoadError

    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in SUPPORTED_EXTENSIONS)
            if not found:
                raise ImageLoadError(p, f"no images in this folder ({', '.join(SUPPORTED_EXTENSIONS)})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise ImageLoadError(p, "no such file or folder")
    if len(paths) < 2:
        raise CliError(f"need at least two images, got {len(paths)} (IMAGES...: image files or folders)")
    return [Path(os.path.abspath(p)) for p in paths]


def precheck_images(paths: Sequence[Path]) -> None:
    """Opens every image's header (cheap): an unreadable file fails before the model is loaded."""
    import PIL.Image

    from f3d_jax.io.images import SUPPORTED_EXTENSIONS, ImageLoadError

    for p in paths:
        if p.suffix.lower() not in SUPPORTED_EXTENSIONS:
            raise ImageLoadError(p, f"not a supported image file ({', '.join(SUPPORTED_EXTENSIONS)})")
        try:
            with PIL.Image.open(p) as im:
                im.size  # noqa: B018
        except Exception as e:  # noqa: BLE001 -- PIL raises many types for bad files
            raise ImageLoadError(p, f"not a readable image ({type(e).__name__}: {e})") from None


def load_views(paths: Sequence[Path], size: int) -> list[dict]:
    """`load_images` of the files, checked to share one working size (the dense alignment needs it)."""
    import warnings

    from f3d_jax.io.images import load_images

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shape warning of odd square crops: the size check below speaks
        imgs = load_images([str(p) for p in paths], size, verbose=False)
    shapes = {}
    for p, im in zip(paths, imgs):
        shapes.setdefault(tuple(int(x) for x in im["true_shape"][0]), []).append(p.name)
    if len(shapes) > 1:
        listing = "; ".join(f"{w}x{h}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                            for (h, w), names in shapes.items())
        raise CliError(f"the images load at different sizes ({listing}); the dense alignment needs one size: "
                       "use photos of one orientation and aspect ratio")
    return imgs


def run_inference(model: Any, pairs: list, batch: int, dtype: str | None, quiet: bool) -> dict:
    from f3d_jax.infer.engine import InferenceEngine

    engine = InferenceEngine(model, batch, dtype=dtype)
    return engine(pairs, verbose=not quiet)


def run_alignment(output: dict, opts: AlignOptions, quiet: bool):
    """`global_align` with a progress bar per stage: the loop is one compiled `lax.scan` (no per-iteration
    callback: it would slow the loop), so the bar completes at once with the final loss."""
    from tqdm.auto import tqdm

    from f3d_jax.align.dense import global_align

    config = dense_config(opts)
    bar = tqdm(total=config.niter, desc="align", unit="it", disable=quiet, leave=False)
    try:
        result = global_align(output, init=opts.init, config=config)
        bar.update(config.niter)
        bar.set_postfix_str(f"loss {float(result.loss_curve[0]):.4g} -> {float(result.final_loss):.4g}")
    finally:
        bar.close()
    return result


def write_exports(recon: Any, tmp: Path, formats: Sequence[str], quiet: bool, **options: Any) -> dict[str, Path]:
    from tqdm.auto import tqdm

    from f3d_jax.export import export

    written: dict[str, Path] = {}
    for fmt in tqdm(list(dict.fromkeys(formats)), desc="export", unit="format", disable=quiet, leave=False):
        written.update(export(recon, tmp, formats=(fmt,), **options))
    return written


def cloud_sample(pts: np.ndarray, rgb: np.ndarray, mask: np.ndarray, n: int = 20000, seed: int = 0):
    """At most n masked points (and colours) for the summary's top view."""
    idx = np.flatnonzero(mask.reshape(-1))
    if len(idx) > n:
        idx = np.random.default_rng(seed).choice(idx, n, replace=False)
    return pts.reshape(-1, 3)[idx], rgb.reshape(-1, 3)[idx]


def export_and_summarise(clock: StageClock, recon: Any, tmp: Path, formats: Sequence[str], quiet: bool, title: str,
                         lines: Sequence[str]) -> dict[str, Path]:
    """Every export, `reconstruction.npz` and a top-view `summary.png` into the folder being written (`f3d
    reconstruct`, dense and sparse); returns the written paths relative to `tmp`."""
    with clock.stage("export"):
        written = write_exports(recon, tmp, formats, quiet)
        recon.save(tmp / RESULT_FILE)
        written = {k: Path(v).relative_to(tmp) for k, v in written.items()}
    with clock.stage("summary"):
        pts, rgb = cloud_sample(recon.pts3d, recon.images, recon.mask)
        from f3d_jax.cli.summary import write_summary_png

        write_summary_png(tmp / SUMMARY_FILE, recon.images, recon.cam2world, points=pts, colors=rgb, axes=(0, 2),
                          title=title, lines=[*lines, "top view: x right, z (first camera's forward) up"])
    return written


def listing(out: Path, written: dict[str, Path]) -> str:
    """`out/ (reconstruction.npz, colmap/sparse/0, ...)` of paths relative to `out`."""
    names = [RESULT_FILE] + [str(p) for p in written.values()] + [SUMMARY_FILE]
    return f"{out}{os.sep} ({', '.join(names)})"


# ------------------------------------------------------------------------------------------------------------
# f3d reconstruct


def reconstruct(opts: Reconstruct) -> int:
    from f3d_jax.compile_cache import enable_compile_cache

    check_graph(opts.graph, opts.align)
    if opts.align == "sparse":
        return reconstruct_sparse(opts)
    check_positive(batch=opts.batch, size=opts.size, niter=opts.alignment.niter)
    config = dense_config(opts.alignment)
    paths = image_paths(opts.images)
    precheck_images(paths)
    out = check_out_dir(opts.out)
    enable_compile_cache(replace=False)
    quiet = opts.quiet

    def fill(tmp: Path) -> tuple[dict, int, float]:
        from f3d_jax.export import reconstruction_from_alignment
        from f3d_jax.infer.scene import default_image_size
        from f3d_jax.weights.loading import load_model

        with clock.stage("model"):
            say(quiet, f"f3d: loading {opts.model}")
            model = load_model(opts.model)
        size = opts.size or default_image_size(model)
        with clock.stage("load"):
            imgs = load_views(paths, size)
        with clock.stage("pairs"):
            pairs = graph_pairs(imgs, model, opts)
        with clock.stage("inference"):
            output = run_inference(model, pairs, opts.batch, opts.dtype, quiet)
        with clock.stage("align"):
            result = run_alignment(output, opts.alignment, quiet)
            del output
        with clock.stage("export"):
            recon = reconstruction_from_alignment(result, imgs, min_conf_thr=config.min_conf_thr,
                                                  clean_depth=opts.clean_depth)
        written = export_and_summarise(
            clock, recon, tmp, opts.format, quiet, "f3d reconstruct",
            [f"{len(imgs)} images, {len(pairs)} pairs, model {opts.model}",
             f"final alignment loss {float(result.final_loss):.4g}",
             f"{int(recon.mask.sum())} points above confidence {config.min_conf_thr:g}"])
        return written, len(pairs), float(result.final_loss)

    with StageClock() as clock:
        written, n_pairs, loss = write_out_dir(out, fill)
    print(f"f3d reconstruct: {len(paths)} images, {n_pairs} pairs, final loss {loss:.4g}, {clock.line()} -> "
          f"{listing(out, written)}")
    return 0


def graph_pairs(imgs: list, model: Any, opts: Reconstruct) -> list:
    """The symmetrized pairs of --graph (retrieval: on the similarity of --retrieval or the encoder features)."""
    from f3d_jax.sfm.graph import sfm_pairs

    retrieval = None
    if opts.sparse.retrieval is not None and opts.graph.startswith("retrieval"):
        from f3d_jax.retrieval import load_retrieval

        retrieval = load_retrieval(opts.sparse.retrieval, opts.sparse.retrieval_codebook)
    pairs, _, _ = sfm_pairs(imgs, model, opts.graph, retrieval, batch_size=opts.batch)
    return pairs


def check_sparse(opts: Reconstruct) -> None:
    s = opts.sparse
    check_positive(batch=opts.batch, size=opts.size, niter1=s.niter1, subsample=s.subsample)
    if s.niter2 < 0:
        raise CliError(f"--niter2 must be >= 0, got {s.niter2}")
    for name, v in (("lr1", s.lr1), ("lr2", s.lr2), ("max-reproj-error", s.max_reproj_error)):
        if not v > 0:
            raise CliError(f"--{name} must be > 0, got {v}")
    for name, v in (("retrieval", s.retrieval), ("retrieval-codebook", s.retrieval_codebook)):
        if v is not None and not Path(v).is_file():
            raise CliError(f"--{name} {v}: no such file")
    if s.retrieval is not None and not opts.graph.startswith("retrieval"):
        raise CliError(f"--retrieval is used by the retrieval graph only: add --graph retrieval (now --graph "
                       f"{opts.graph})")


def reconstruct_sparse(opts: Reconstruct) -> int:
    """`f3d reconstruct --align sparse`: MASt3R-SfM (`f3d_jax.sfm`): pairs (retrieval graph for many images),
    batched network pass streamed into the sparse alignment, tracks from the matches, every export."""
    from f3d_jax.compile_cache import enable_compile_cache

    check_sparse(opts)
    paths = image_paths(opts.images)
    precheck_images(paths)
    out = check_out_dir(opts.out)
    enable_compile_cache(replace=False)
    quiet = opts.quiet
    s = opts.sparse

    def fill(tmp: Path):
        from tqdm.auto import tqdm

        from f3d_jax.infer.scene import default_image_size
        from f3d_jax.sfm.pipeline import sfm_from_predictions
        from f3d_jax.sfm.predictions import CachedEncoderEngine, PairPredictions, chunk_pairs_for
        from f3d_jax.weights.loading import load_model

        with clock.stage("model"):
            say(quiet, f"f3d: loading {opts.model}")
            model = load_model(opts.model)
        if "desc" not in str(getattr(model.config, "output_mode", "")):
            raise CliError(f"--align sparse needs a MASt3R model (descriptors); {opts.model} is a "
                           f"{model.config.official_class}: use --align dense, or a MASt3R checkpoint such as "
                           "naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric")
        size = opts.size or default_image_size(model)
        with clock.stage("load"):
            imgs = load_views(paths, size)
        with clock.stage("pairs"):
            pairs = graph_pairs(imgs, model, opts)
        n_unordered = len({frozenset((int(a["idx"]), int(b["idx"]))) for a, b in pairs})
        with clock.stage("inference+align"):
            engine = CachedEncoderEngine(model, opts.batch, pairs=pairs, dtype=opts.dtype)
            bar = tqdm(total=2 * n_unordered, desc="inference", unit="pair", disable=quiet, leave=False)
            try:
                preds = PairPredictions(engine, pairs, chunk_pairs_for(engine, imgs), progress=bar.update)
                res = sfm_from_predictions(
                    imgs, pairs, preds, subsample=s.subsample, niter1=s.niter1, niter2=s.niter2, lr1=s.lr1,
                    lr2=s.lr2, matching_conf_thr=s.matching_conf_thr, shared_intrinsics=s.shared_intrinsics,
                    min_conf_thr=s.cloud_conf_thr, clean_depth=True, max_reproj_error=s.max_reproj_error,
                    scene_graph=opts.graph)
            finally:
                bar.close()
        recon, st = res.reconstruction, res.track_stats
        loss = float(res.scene.loss_curve[-1]) if len(res.scene.loss_curve) else float("nan")
        written = export_and_summarise(
            clock, recon, tmp, opts.format, quiet, "f3d reconstruct --align sparse",
            [f"{len(imgs)} images, {len(pairs)} pairs ({opts.graph}), model {opts.model}",
             f"final alignment loss {loss:.4g}",
             f"{st.n_points} COLMAP points, mean track length {st.mean_track_length:.2f}, "
             f"reprojection error mean {st.mean_reproj_error:.2f} px"])
        return written, len(pairs), loss, st

    with StageClock() as clock:
        written, n_pairs, loss, st = write_out_dir(out, fill)
    print(f"f3d reconstruct: {len(paths)} images, {n_pairs} pairs, sparse alignment, final loss {loss:.4g}, "
          f"{st.n_points} points (tracks of {st.mean_track_length:.2f} views, reprojection error mean "
          f"{st.mean_reproj_error:.2f} px at working resolution), {clock.line()} -> {listing(out, written)}")
    return 0


# ------------------------------------------------------------------------------------------------------------
# f3d match


def match_cmd(opts: Match) -> int:
    from f3d_jax.compile_cache import enable_compile_cache

    check_positive(size=opts.size, subsample=opts.subsample)
    if opts.max_draw < 0:
        raise CliError(f"--max-draw must be >= 0, got {opts.max_draw}")
    if opts.border < 0:
        raise CliError(f"--border must be >= 0, got {opts.border}")
    paths = [Path(os.path.abspath(p)) for p in (opts.image1, opts.image2)]
    for p in paths:
        if not p.is_file():
            from f3d_jax.io.images import ImageLoadError

            raise ImageLoadError(p, "no such file")
    precheck_images(paths)
    out = Path(os.path.abspath(opts.out))
    if out.is_dir():
        raise CliError(f"--out {opts.out}: is a folder (give the PNG file to write)")
    if out.suffix.lower() != ".png":
        raise CliError(f"--out {opts.out}: the drawing is a PNG: name the file *.png")
    if not out.parent.is_dir():
        raise CliError(f"--out {opts.out}: the folder {out.parent} does not exist")
    enable_compile_cache(replace=False)
    t0 = time.perf_counter()
    from f3d_jax.infer.scene import default_image_size
    from f3d_jax.sfm.match import match_images, save_matches_png
    from f3d_jax.weights.loading import load_model

    say(opts.quiet, f"f3d: loading {opts.model}")
    model = load_model(opts.model)
    if "desc" not in str(getattr(model.config, "output_mode", "")):
        raise CliError(f"--model {opts.model}: a {model.config.official_class} has no descriptors to match; use "
                       "a MASt3R checkpoint such as naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric")
    size = opts.size or default_image_size(model)
    m = match_images(model, str(paths[0]), str(paths[1]), size=size, subsample=opts.subsample, border=opts.border,
                     dtype=opts.dtype)
    try:
        save_matches_png(m, out, opts.max_draw)
    except OSError as e:
        raise output_error(out, e) from None
    drawn = min(len(m), opts.max_draw)
    print(f"f3d match: {len(m)} matches between {paths[0].name} and {paths[1].name} "
          f"({m.images[0].shape[1]}x{m.images[0].shape[0]} and {m.images[1].shape[1]}x{m.images[1].shape[0]} "
          f"working pixels), {drawn} drawn, {time.perf_counter() - t0:.1f} s -> {out}")
    return 0


# ------------------------------------------------------------------------------------------------------------
# f3d demo


def demo_shape(size: int) -> tuple[int, int]:
    """(H, W) of the demo's working images for a `load_images` size: 4:3 landscape, or square at 224."""
    if size == 224:
        return 224, 224
    return (size * 3 // 4) // 16 * 16, size


def render_demo_images(scene: Any, folder: Path, scale: int, seed: int) -> list[Path]:
    """Renders the textured room at `scale` times the scene's size (cameras of the scene: focals scaled and the
    principal point placed so that a resize by 1/scale gives exactly the scene's pixels) into folder/*.png."""
    import PIL.Image

    from f3d_jax.eval.synthetic import render_rgb
    from f3d_jax.io.atomic import atomic_open

    _, H, W = scene.depth.shape
    half = (scale - 1) / 2
    rgb = render_rgb(scene.cam2world, scene.focals * scale, H * scale, W * scale, scene.room,
                     pp=(scale * W / 2 + half, scale * H / 2 + half), seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, im in enumerate(rgb):
        p = folder / f"view_{k:02d}.png"
        with atomic_open(p, "wb") as f:
            PIL.Image.fromarray(im).save(f, format="PNG")
        paths.append(p)
    return paths


def simulated_output(scene: Any, edges: np.ndarray, noise: str, seed: int) -> dict:
    """DUSt3R-like pairwise predictions of the known scene, in the layout `inference` returns."""
    from f3d_jax.eval.synthetic import make_predictions

    p = make_predictions(scene, edges, noise=noise, seed=seed)
    return {"view1": {"idx": p["edges"][:, 0]}, "view2": {"idx": p["edges"][:, 1]},
            "pred1": {"pts3d": p["pred1_pts3d"], "conf": p["pred1_conf"]},
            "pred2": {"pts3d_in_other_view": p["pred2_pts3d"], "conf": p["pred2_conf"]}}


def demo(opts: Demo) -> int:
    from f3d_jax.compile_cache import enable_compile_cache

    check_graph(opts.graph, retrieval_ok=False)
    check_positive(views=opts.views, batch=opts.batch, size=opts.size, niter=opts.alignment.niter)
    if opts.views < 3:
        raise CliError(f"--views must be >= 3 (the poses are compared with the known ones up to a similarity), "
                       f"got {opts.views}")
    if opts.size is not None and (opts.size % 16 or opts.size < 64):
        raise CliError(f"--size must be a multiple of 16 and >= 64, got {opts.size}")
    config = dense_config(opts.alignment)
    out = check_out_dir(opts.out)
    enable_compile_cache(replace=False)
    quiet = opts.quiet

    def fill(tmp: Path):
        from f3d_jax.cli.summary import pose_errors, write_summary_png
        from f3d_jax.eval.synthetic import make_scene
        from f3d_jax.export import reconstruction_from_alignment
        from f3d_jax.infer.pairs import make_pairs, pairs_to_edges

        model = None
        if opts.model is not None:
            from f3d_jax.infer.scene import default_image_size
            from f3d_jax.weights.loading import load_model

            with clock.stage("model"):
                say(quiet, f"f3d demo: loading {opts.model}")
                model = load_model(opts.model)
        size = opts.size or (DEMO_SIZE if model is None else default_image_size(model))
        H, W = demo_shape(size)
        # twice the working size, resized by the loader (the exports then undo a real resize); large model
        # sizes are rendered as they are (ray casting a 1024 x 768 room per view would take longer than the rest)
        scale = 2 if max(H, W) <= 256 else 1
        with clock.stage("render"):
            say(quiet, f"f3d demo: rendering {opts.views} views of a synthetic room at {W * scale}x{H * scale}")
            scene = make_scene(opts.views, H, W, seed=opts.seed)
            paths = render_demo_images(scene, tmp / "images", scale, opts.seed)
            imgs = load_views(paths, size)
            if imgs[0]["true_shape"][0].tolist() != [H, W]:
                raise CliError(f"--size {size}: the rendered views load at {imgs[0]['true_shape'][0].tolist()}, "
                               f"not {[H, W]}")
            pairs = make_pairs(imgs, scene_graph=opts.graph)
            edges = pairs_to_edges(pairs)
        if model is None:
            with clock.stage("predictions"):
                say(quiet, f"f3d demo: simulating DUSt3R-like predictions for {len(pairs)} pairs ({opts.noise} "
                           "noise; --model runs a real network)")
                output = simulated_output(scene, edges, opts.noise, opts.seed)
        else:
            with clock.stage("inference"):
                output = run_inference(model, pairs, opts.batch, opts.dtype, quiet)
        with clock.stage("align"):
            result = run_alignment(output, opts.alignment, quiet)
            del output
        with clock.stage("export"):
            recon = reconstruction_from_alignment(result, imgs, min_conf_thr=config.min_conf_thr)
            written = write_exports(recon, tmp, opts.format, quiet)
            # the sources were rendered into the folder being written: record where they will be
            recon = recon.replace(paths=tuple(str(out / Path(p).relative_to(tmp)) for p in paths))
            recon.save(tmp / RESULT_FILE)
            written = {k: Path(v).relative_to(tmp) for k, v in written.items()}
        with clock.stage("summary"):
            err = pose_errors(recon.cam2world, scene.cam2world)
            pts, rgb = cloud_sample(recon.pts3d, recon.images, recon.mask)
            source = "simulated predictions" if model is None else f"model {opts.model}"
            write_summary_png(tmp / SUMMARY_FILE, recon.images, err.aligned_c2w, points=err.to_known(pts),
                              colors=rgb, known_c2w=scene.cam2world, errors=err, axes=(0, 1),
                              title="f3d demo: synthetic room, known cameras",
                              lines=[f"{opts.views} views {W}x{H} (rendered at {W * scale}x{H * scale}), "
                                     f"{len(pairs)} pairs, {source}",
                                     f"final alignment loss {float(result.final_loss):.4g}",
                                     "estimated poses mapped onto the known ones by a Sim(3) of the centres",
                                     "top view: world x right, y up (z-up room)"])
        return written, len(pairs), float(result.final_loss), err

    with StageClock() as clock:
        written, n_pairs, loss, err = write_out_dir(out, fill)
    print(f"f3d demo: {opts.views} views, {n_pairs} pairs, final loss {loss:.4g}, {clock.line()} -> "
          f"{listing(out, written)}")
    print(f"f3d demo: poses against the known cameras: rotation error mean {err.rot_deg.mean():.2f} deg "
          f"(max {err.rot_deg.max():.2f}), position error mean {100 * err.pos_err.mean() / err.spread:.1f}% of the "
          f"rig size (max {100 * err.pos_err.max() / err.spread:.1f}%); see {out / SUMMARY_FILE}")
    print(f"Now your own photos:  {DEMO_COMMAND}")
    return 0


# ------------------------------------------------------------------------------------------------------------
# f3d export / view / convert / checkpoints


def result_file(result: str) -> Path:
    p = Path(result)
    if p.is_dir():
        p = p / RESULT_FILE
    if not p.is_file():
        raise CliError(f"{result}: no {RESULT_FILE} there (f3d reconstruct and f3d demo write one)")
    return p


def export_cmd(opts: Export) -> int:
    from f3d_jax.export import Reconstruction

    t0 = time.perf_counter()
    path = result_file(opts.result)
    recon = Reconstruction.load(path)
    out = Path(os.path.abspath(opts.out)) if opts.out else path.parent.absolute()
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {opts.out}: exists and is not a folder")
    try:
        written = write_exports(recon, out, opts.format, opts.quiet)
    except OSError as e:
        raise output_error(out, e) from None
    names = ", ".join(str(Path(p).relative_to(out)) for p in written.values())
    print(f"f3d export: {recon.n} views, {time.perf_counter() - t0:.1f} s -> {out}{os.sep} ({names})")
    return 0


def view(opts: View) -> int:
    from f3d_jax.viewer import serve

    path = result_file(opts.path)
    serve(path, port=opts.port, host=opts.host, block=True)
    return 0


def convert(opts: Convert) -> int:
    from f3d_jax.weights.loading import load_model, save_model

    model = load_model(opts.src, dtype=opts.dtype)
    out = save_model(model, opts.dst, overwrite=opts.overwrite)
    print(f"wrote {out} ({model.config.official_class})")
    return 0


def checkpoints(opts: Checkpoints) -> int:
    from f3d_jax.weights.registry import get_checkpoint_info, list_checkpoints

    for name in list_checkpoints(opts.family):
        info = get_checkpoint_info(name)
        print(f"{name}\t{info.family}\t{info.hf_repo or '-'}\t{info.license}")
    return 0


def stereo_or_flow(opts: Stereo | Flow) -> int:
    from f3d_jax.cli.stereoflow import run_stereo_or_flow

    return run_stereo_or_flow(opts)


def train_cmd(opts: Train) -> int:
    """`f3d train CONFIG`: load the config, apply the overrides, train (resuming from --out), print a summary."""
    from f3d_jax.train.config import load_config

    cfg = load_config(opts.config)
    overrides = {"steps": opts.steps, "batch_size": opts.batch_size, "accum_iter": opts.accum_iter,
                 "mesh_data": opts.mesh_data, "mesh_fsdp": opts.mesh_fsdp, "pretrained": opts.pretrained,
                 "compute_dtype": opts.dtype, "remat": opts.remat}
    cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
    if opts.distributed:
        import jax

        jax.distributed.initialize()
    from f3d_jax.train.trainer import train

    out = Path(opts.out if opts.out is not None else os.path.join("runs", cfg.name))
    result = train(cfg, out, quiet=opts.quiet, log=lambda m: say(opts.quiet, m))
    h = result.history
    if h:
        print(f"f3d train: {cfg.name}: steps {result.start_step} -> {h[-1]['step']}, loss {h[0]['loss']:.4f} -> "
              f"{h[-1]['loss']:.4f}; checkpoints and metrics in {out}")
    else:
        print(f"f3d train: {cfg.name}: already at step {result.start_step} of {cfg.steps}; nothing to do ({out})")
    return 0


RUNNERS: dict[type, Callable[[Any], int]] = {Reconstruct: reconstruct, Match: match_cmd, Demo: demo,
                                             Export: export_cmd, View: view, Convert: convert,
                                             Checkpoints: checkpoints, Stereo: stereo_or_flow, Flow: stereo_or_flow,
                                             Train: train_cmd}
