"""The `f3d` subcommands as frozen config dataclasses (tyro builds the command line from them).

Every field has a docstring (tyro's help text) and a default shown by `--help`. The alignment options mirror
`f3d_jax.align.DenseConfig` field for field (same names, choices and defaults; `tests/cli` checks that they
agree) and build one with `AlignOptions.dense_config()`. Nothing heavy is imported here: `f3d --help` does not
import jax.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import tyro

FORMATS = ("colmap", "nerfstudio", "ply", "glb", "npz")
Format = Literal["colmap", "nerfstudio", "ply", "glb", "npz"]
DEMO_COMMAND = "f3d reconstruct photos/*.jpg --model naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt --out out/"


@dataclasses.dataclass(frozen=True)
class AlignOptions:
    """Dense global alignment (f3d_jax.global_align): names, choices and defaults of f3d_jax.align.DenseConfig."""

    niter: int = 300
    """Adam iterations of the alignment loop."""
    schedule: Literal["cosine", "linear"] = "cosine"
    """learning-rate schedule (the official demo UI uses linear)."""
    lr: float = 0.01
    """initial learning rate."""
    lr_min: float = 1e-6
    """final learning rate of the schedule."""
    min_conf_thr: float = 3.0
    """confidence threshold (network confidences are >= 1): pixels below it are not exported nor used by the PnP."""
    param: Literal["official", "manifold"] = "official"
    """pose parameterisation: official (quaternion, signed-log translation) or manifold (SE3 tangent space)."""
    robust: Literal[None, "huber", "cauchy", "geman_mcclure"] = None
    """robust kernel on the point distances (None: the official plain distance)."""
    robust_scale: float = 0.05
    """scale of the robust kernel."""
    storage_dtype: Literal["float32", "bfloat16"] = "float32"
    """storage of the pairwise predictions in the loop (bfloat16: half the memory; math stays float32)."""
    precision: Literal["highest", "high", "default"] = "highest"
    """matmul precision of the loop: highest (exact float32), high (TF32 on GPU), default (the backend's)."""
    init: Literal["mst", "none"] = "mst"
    """starting state: mst (spanning tree + Procrustes + PnP) or none (the official random start)."""

    def dense_config(self):  # -> DenseConfig (imported lazily: jax)
        """The `DenseConfig` these options describe (ValueError on a bad value)."""
        from f3d_jax.align.config import DenseConfig

        fields = {f.name for f in dataclasses.fields(DenseConfig)}
        return DenseConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in fields})


Alignment = Annotated[AlignOptions, tyro.conf.OmitArgPrefixes]


@dataclasses.dataclass(frozen=True)
class SparseOptions:
    """MASt3R sparse global alignment (--align sparse, f3d_jax.run_sfm): the MASt3R demo's defaults."""

    niter1: int = 300
    """iterations of the coarse stage (3D matching)."""
    niter2: int = 300
    """iterations of the fine stage (2D reprojection; 0 skips it)."""
    lr1: float = 0.07
    """learning rate of the coarse stage."""
    lr2: float = 0.01
    """learning rate of the fine stage."""
    matching_conf_thr: float = 0.0
    """pairs whose best match confidence is not above it use the pointmap fallback instead of their matches."""
    shared_intrinsics: bool = False
    """one focal length and principal point for all images (photos from one camera and zoom)."""
    subsample: int = 8
    """stride of the matching grid (pixels)."""
    cloud_conf_thr: float = 1.5
    """canonical confidence above which a pixel joins the dense cloud (MASt3R demo: 1.5)."""
    max_reproj_error: float = 4.0
    """COLMAP tracks: observations farther than this from their point's projection are dropped (pixels)."""
    retrieval: str | None = None
    """retrieval checkpoint for --graph retrieval (MASt3R's ..._retrieval_trainingfree.pth); None: cosine of
    the model's pooled encoder features."""
    retrieval_codebook: str | None = None
    """codebook of the retrieval checkpoint (None: the file next to it)."""


Sparse = Annotated[SparseOptions, tyro.conf.OmitArgPrefixes]


@dataclasses.dataclass(frozen=True)
class Reconstruct:
    """Images in, every export out: load the model, load the images, pair them, run the network on every pair,
    align globally, write reconstruction.npz, the exports and summary.png into --out."""

    images: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="IMAGES...")]
    """image files (jpg, png) or folders of them, at least two; all must have the same size once loaded."""
    model: str
    """checkpoint: released name (f3d checkpoints), Hugging Face repo id or folder, .pth file, or orbax folder."""
    out: str
    """output folder (created; a previous f3d output there is replaced, any other folder is refused)."""
    size: int | None = None
    """image size for the network: the long side (512) or 224; None: what the model was trained at."""
    graph: str = "complete"
    """pair graph: complete, swin-K, logwin-K (add -noncyclic for sequences), oneref-I, or retrieval[-Na-k]
    (MASt3R-SfM: Na keyframes plus each image's k most similar images, pairs linear in the number of images;
    retrieval alone: Na = min(20, N/2), k = min(10, N-1))."""
    align: Literal["dense", "sparse"] = "dense"
    """alignment: dense (DUSt3R global alignment) or sparse (MASt3R-SfM: matches, sparse global alignment,
    COLMAP tracks from the matches; needs a MASt3R model)."""
    batch: int = 8
    """image pairs per network step."""
    dtype: Literal[None, "float32", "bfloat16", "float16"] = None
    """compute dtype of the network (None: the checkpoint's; bfloat16 halves memory on GPUs)."""
    alignment: Alignment = AlignOptions()
    sparse: Sparse = SparseOptions()
    clean_depth: bool = False
    """clean the depth maps before export (the official clean_pointcloud: drop points hidden by other views)."""
    format: tuple[Format, ...] = FORMATS
    """exports to write (reconstruction.npz and summary.png are always written)."""
    quiet: bool = False
    """no progress bars: print only the summary line (and errors)."""


@dataclasses.dataclass(frozen=True)
class Demo:
    """The offline demo: render a synthetic textured room with known cameras, simulate DUSt3R-like pairwise
    predictions, run the real alignment and every export, and compare the poses with the known cameras in
    summary.png. No weights and no network, unless --model is given: then the network runs on the rendered
    images."""

    out: str = "f3d_demo"
    """output folder (created; a previous f3d output there is replaced, any other folder is refused)."""
    model: str | None = None
    """run this checkpoint (as in f3d reconstruct) on the rendered images instead of simulating its output."""
    views: int = 6
    """number of cameras."""
    size: int | None = None
    """long side of the loaded images (None: 128, or the model's size); rendered at twice it, then resized."""
    seed: int = 0
    """seed of the room, the cameras and the simulated predictions."""
    noise: Literal["clean", "moderate", "hard"] = "moderate"
    """noise of the simulated network predictions (see f3d_jax.eval.synthetic)."""
    graph: str = "complete"
    """pair graph: complete, swin-K, logwin-K (add -noncyclic) or oneref-I."""
    batch: int = 8
    """image pairs per network step (with --model)."""
    dtype: Literal[None, "float32", "bfloat16", "float16"] = None
    """compute dtype of the network (with --model)."""
    alignment: Alignment = AlignOptions()
    format: tuple[Format, ...] = FORMATS
    """exports to write."""
    quiet: bool = False
    """no progress bars: print only the summary lines (and errors)."""


@dataclasses.dataclass(frozen=True)
class Export:
    """Write exports of a saved reconstruction (reconstruction.npz, or a folder holding one)."""

    result: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RESULT")]
    """reconstruction.npz, or the folder f3d reconstruct / f3d demo wrote."""
    format: tuple[Format, ...] = FORMATS
    """exports to write."""
    out: str | None = None
    """folder to write them into (None: the folder of RESULT)."""
    quiet: bool = False
    """print only the summary line (and errors)."""


@dataclasses.dataclass(frozen=True)
class View:
    """Serve a reconstruction in the browser: the point cloud with a confidence slider and the cameras."""

    path: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="DIR")]
    """folder written by f3d reconstruct / f3d demo (or a reconstruction.npz)."""
    port: int = 8080
    """port of the web server."""
    host: str = "127.0.0.1"
    """address to listen on (0.0.0.0: reachable from other machines)."""


@dataclasses.dataclass(frozen=True)
class Convert:
    """Convert an official checkpoint into an f3d-jax orbax checkpoint (fast to load, any dtype)."""

    src: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SRC")]
    """a .pth file, a Hugging Face folder or repo id, or a released checkpoint name."""
    dst: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="DST")]
    """the orbax checkpoint folder to write."""
    dtype: Literal[None, "float32", "bfloat16", "float16"] = None
    """cast the floating-point parameters (None: keep the checkpoint's)."""
    overwrite: bool = False
    """replace an existing checkpoint at DST."""


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """List the released checkpoints: name, family, Hugging Face repo, licence (the released weights are
    CC BY-NC-SA 4.0, with the terms of their training datasets)."""

    family: Literal[None, "croco", "dust3r", "mast3r", "retrieval", "stereoflow"] = None
    """only this family (None: all)."""


@dataclasses.dataclass(frozen=True)
class Match:
    """MASt3R matching of two photos: both network passes, reciprocal descriptor matching (as the sparse
    alignment matches), and the matches drawn side by side into a PNG."""

    image1: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="IMG1")]
    """first image (jpg, png)."""
    image2: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="IMG2")]
    """second image (jpg, png)."""
    model: str
    """MASt3R checkpoint: released name, Hugging Face repo id or folder, .pth file, or orbax folder."""
    out: str = "matches.png"
    """the PNG to write (the two working images side by side, one line per drawn match)."""
    max_draw: int = 200
    """draw at most this many matches, spread evenly over the matches sorted by confidence."""
    size: int | None = None
    """image size for the network (long side); None: what the model was trained at."""
    subsample: int = 8
    """stride of the matching grid (pixels)."""
    border: int = 3
    """drop matches within this many pixels of an image border."""
    dtype: Literal[None, "float32", "bfloat16", "float16"] = None
    """compute dtype of the network."""
    quiet: bool = False
    """print only the summary line (and errors)."""


@dataclasses.dataclass(frozen=True)
class Stereo:
    """CroCo-Stereo on a rectified pair: tiled inference (the official tiled_pred) writes the disparity of LEFT
    (.pfm or .npy, in pixels) and a colour-mapped picture of it (.png)."""

    left: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="LEFT")]
    """left image (jpg, png)."""
    right: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RIGHT")]
    """right image, the same size as LEFT."""
    model: str
    """CroCo-Stereo checkpoint (.pth, e.g. crocostereo.pth; f3d checkpoints --family stereoflow lists them)."""
    out: str = "disparity"
    """output path without extension: writes OUT.pfm (or OUT.npy) and OUT.png."""
    format: Literal["pfm", "npy"] = "pfm"
    """raw disparity format (.pfm: the benchmarks' format; .npy: numpy float32 (H, W))."""
    overlap: float = 0.7
    """overlap of the tiles, in [0, 1) (test.py's default; the official submissions use 0.9)."""
    conf_mode: str | None = None
    """tile weighting, conf_expsigmoid_<beta>_<betasigmoid> or conf_expbeta<beta> (None: the checkpoint's)."""
    quiet: bool = False
    """print only the summary line (and errors)."""


@dataclasses.dataclass(frozen=True)
class Flow:
    """CroCo-Flow on two frames: tiled inference (the official tiled_pred) writes the optical flow from IMG1 to
    IMG2 (.flo or .npy, x then y, in pixels) and its colour-wheel picture (.png)."""

    img1: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="IMG1")]
    """first frame (jpg, png)."""
    img2: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="IMG2")]
    """second frame, the same size as IMG1."""
    model: str
    """CroCo-Flow checkpoint (.pth, e.g. crocoflow.pth; f3d checkpoints --family stereoflow lists them)."""
    out: str = "flow"
    """output path without extension: writes OUT.flo (or OUT.npy) and OUT.png."""
    format: Literal["flo", "npy"] = "flo"
    """raw flow format (.flo: the Middlebury format benchmarks use; .npy: numpy float32 (H, W, 2))."""
    overlap: float = 0.7
    """overlap of the tiles, in [0, 1) (test.py's default; the official submissions use 0.9)."""
    conf_mode: str | None = None
    """tile weighting, conf_expsigmoid_<beta>_<betasigmoid> or conf_expbeta<beta> (None: the checkpoint's)."""
    quiet: bool = False
    """print only the summary line (and errors)."""


@dataclasses.dataclass(frozen=True)
class Train:
    """Train or fine-tune a model from a config file (experiments/configs/*.py: CroCo v2 pretraining, DUSt3R,
    MASt3R, tiny): resumes from the latest checkpoint in --out, logs metrics.jsonl and TensorBoard events."""

    config: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="CONFIG")]
    """a Python file defining CONFIG = TrainConfig(...)."""
    out: str | None = None
    """run folder: checkpoints, metrics.jsonl, tb/ (None: runs/<config name>)."""
    steps: int | None = None
    """override the number of optimiser updates (None: the config's)."""
    batch_size: int | None = None
    """override the global micro-batch size (None: the config's)."""
    accum_iter: int | None = None
    """override the micro-batches per update (None: the config's)."""
    mesh_data: int | None = None
    """override the data-parallel mesh axis (-1: all devices left; None: the config's)."""
    mesh_fsdp: int | None = None
    """override the FSDP mesh axis (None: the config's)."""
    pretrained: str | None = None
    """override the initial weights (None: the config's); ignored when resuming."""
    dtype: Literal[None, "float32", "bfloat16"] = None
    """override the compute dtype (None: the config's); master weights stay float32."""
    remat: Literal[None, "none", "blocks", "dots"] = None
    """override the rematerialisation of the training forward (None: the config's): 'blocks' least memory,
    'none' fastest."""
    distributed: bool = False
    """multi-host run: call jax.distributed.initialize() first (TPU pods, SLURM or JAX_* variables)."""
    quiet: bool = False
    """no progress bar: print only the summary line (and errors)."""


COMMANDS: dict[str, type] = {"reconstruct": Reconstruct, "match": Match, "demo": Demo, "export": Export,
                             "view": View, "convert": Convert, "checkpoints": Checkpoints, "stereo": Stereo,
                             "flow": Flow, "train": Train}
