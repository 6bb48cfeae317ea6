"""MASt3R's retrieval model (`mast3r/retrieval/model.py: RetrievalModel` + `processor.py: Retriever`): a small head
on the frozen MASt3R encoder, and the ASMK codebook.

Per image (official `extract_features_and_attention` + `how_select_local`):

  f = encoder(img)                  (N, Ce) tokens after enc_norm (the backbone's `_encode_image`)
  f = (f - m_pre) @ P_pre           prewhitening (`Whitener`, float64 in the official code), optional
  p = projector(f) [+ f]            Linear (-> LayerNorm -> GELU -> Linear)*; identity when hdims is empty
  a = ||p||_2                       attention ('l2norm' feature weights)
  p = (p - m_post) @ P_post         postwhitening, optional
  local features: the `nfeat` rows of p with the largest a (nfeat < 0: that fraction of the N tokens)

Against the official torch module (`experiments/retrieval_parity.py`: a genuine `torch.save` checkpoint with float64
whitening): max |difference| 2e-6 on features of magnitude 4.5 (float32 whitening here).

The checkpoint is a torch `.pth` `{'model': state dict (no backbone.* keys), 'args': Namespace(...)}`, read
without torch (`f3d_jax.weights.torch_pickle.read_pth`); the codebook a separate file
(`f3d_jax.retrieval.codebook.read_codebook`). Shapes and the head's structure are checked when loading, and the
backbone width when the model is used (`check_backbone`).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from f3d_jax.weights.errors import CheckpointError
from f3d_jax.weights.torch_pickle import Namespace, read_pth

__all__ = ["RetrievalModel", "default_codebook_path", "load_retrieval"]

TORCH_LN_EPS = 1e-5  # the projector's nn.LayerNorm (torch default)
_KEY = re.compile(r"(prewhiten|postwhiten)\.(m|p)|projector\.([0-9]{1,3})\.(weight|bias)")


@struct.dataclass
class RetrievalModel:
    """The retrieval head and ASMK codebook of MASt3R-SfM (`load_retrieval`), a pytree of float32 arrays.

    Attributes:
      prewhiten: (m (1, Ce), P (Ce, Ce)) or None.
      projector: the projector's Linear layers, each (W (out, in), b (out,)); empty = identity.
      projector_norms: the LayerNorms between them, each (w, b) (one fewer; a GELU follows each, as the official
        `build_projector`: Linear, then (LayerNorm, GELU, Linear) per extra width).
      postwhiten: (m (1, D), P (D, D)) or None.
      codebook: (K, D) float32 visual-word centroids.
      residual: add the prewhitened features to the projector output (static).
      nfeat: local features kept per image (static; < 0: that fraction of the tokens).
      alpha, similarity_threshold: ASMK kernel (official Retriever: 3.0, 0.0) (static).
      query_assignments, database_assignments: visual words per local feature on each side (official: 5, 1).
      source: the checkpoint file, codebook_source: the codebook file (static, for messages).
      backbone_name: `args.pretrained` (the MASt3R checkpoint the head was built on), or None.
    """

    prewhiten: tuple | None
    projector: tuple
    projector_norms: tuple
    postwhiten: tuple | None
    codebook: Any
    residual: bool = struct.field(pytree_node=False, default=False)
    nfeat: float = struct.field(pytree_node=False, default=300)
    alpha: float = struct.field(pytree_node=False, default=3.0)
    similarity_threshold: float = struct.field(pytree_node=False, default=0.0)
    query_assignments: int = struct.field(pytree_node=False, default=5)
    database_assignments: int = struct.field(pytree_node=False, default=1)
    source: str = struct.field(pytree_node=False, default="")
    codebook_source: str = struct.field(pytree_node=False, default="")
    backbone_name: str | None = struct.field(pytree_node=False, default=None)

    @property
    def in_dim(self) -> int:
        """The encoder width the head expects (Ce)."""
        if self.prewhiten is not None:
            return int(self.prewhiten[1].shape[0])
        if self.projector:
            return int(self.projector[0][0].shape[1])
        return int(self.codebook.shape[1])

    @property
    def dim(self) -> int:
        """The local features' width D (= the codebook's)."""
        return int(self.codebook.shape[1])

    def n_local(self, n_tokens: int) -> int:
        """Local features kept from an image of `n_tokens` tokens (official `how_select_local`)."""
        k = int(-self.nfeat * n_tokens) if self.nfeat < 0 else int(self.nfeat)
        return max(1, min(k, n_tokens))

    def check_backbone(self, enc_embed_dim: int, where: str = "similarity_matrix") -> None:
        if enc_embed_dim != self.in_dim:
            raise ValueError(f"{where}: the retrieval head {self.source} expects {self.in_dim}-dim encoder features, "
                             f"but the model's encoder gives {enc_embed_dim} (use the MASt3R model it was built on"
                             + (f": {self.backbone_name}" if self.backbone_name else "") + ")")


def local_features(rm: RetrievalModel, feat: jax.Array, nfeat: int) -> tuple[jax.Array, jax.Array]:
    """The head on encoder tokens.

    Args:
      rm: the retrieval model (its arrays float32).
      feat: (B, N, Ce) encoder output.
      nfeat: number of local features to keep (static, `rm.n_local(N)`).

    Returns:
      (B, nfeat, D) local features (postwhitened), (B, nfeat) their attention (L2 norm before postwhitening), in
      decreasing attention order.
    """
    hi = jax.lax.Precision.HIGHEST  # the official whitening runs in float64: keep float32 products exact
    x = feat.astype(jnp.float32)
    if rm.prewhiten is not None:
        m, p = rm.prewhiten
        x = jnp.matmul(x - m, p, precision=hi)
    y = x
    for i, (w, b) in enumerate(rm.projector):
        if i > 0:
            nw, nb = rm.projector_norms[i - 1]
            mu = jnp.mean(y, -1, keepdims=True)
            var = jnp.mean(jnp.square(y - mu), -1, keepdims=True)
            y = jax.nn.gelu((y - mu) * jax.lax.rsqrt(var + TORCH_LN_EPS) * nw + nb, approximate=False)
        y = jnp.matmul(y, w.T, precision=hi) + b
    if rm.projector and rm.residual:
        y = y + x
    attn = jnp.linalg.norm(y, axis=-1)
    if rm.postwhiten is not None:
        m, p = rm.postwhiten
        y = jnp.matmul(y - m, p, precision=hi)
    top, idx = jax.lax.top_k(attn, nfeat)
    return jnp.take_along_axis(y, idx[..., None], axis=1), top


# ---------------------------------------------------------------------------------------------------------------
# loading


def default_codebook_path(checkpoint_path: str | os.PathLike) -> Path:
    """The official codebook location (`Retriever`): the checkpoint's folder, its name without the last
    '_'-separated part, + '_codebook.pkl' (`..._retrieval_trainingfree.pth` -> `..._retrieval_codebook.pkl`)."""
    p = Path(checkpoint_path)
    parts = p.name.split("_")
    return p.with_name("_".join(parts[:-1]) + "_codebook.pkl")


def _array(src: Path, sd: dict, key: str, shape: tuple[int, ...]) -> np.ndarray:
    a = sd[key]
    if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
        raise CheckpointError(src, f"'{key}' is not a floating-point tensor")
    if a.shape != shape:
        raise CheckpointError(src, f"'{key}' has shape {a.shape}, expected {shape}")
    a = np.asarray(a, np.float32)
    if not np.isfinite(a).all():
        raise CheckpointError(src, f"'{key}' holds NaN or infinite values")
    return a


def _whitener(src: Path, sd: dict, name: str, dim: int | None) -> tuple[tuple | None, int | None]:
    """((m (1, D), P (D, D)) float32 or None when absent, the width after it)."""
    keys = [k for k in (f"{name}.m", f"{name}.p") if k in sd]
    if not keys:
        return None, dim
    if len(keys) == 1:
        raise CheckpointError(src, f"'{keys[0]}' without its pair ({name}.m and {name}.p go together)")
    p = sd[f"{name}.p"]
    if not isinstance(p, np.ndarray) or p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise CheckpointError(src, f"'{name}.p' must be a square (D, D) matrix, got shape {getattr(p, 'shape', None)}")
    d = int(p.shape[0])
    if dim is not None and d != dim:
        raise CheckpointError(src, f"'{name}.p' is {d} x {d}, but the features it whitens are {dim}-dim")
    return (_array(src, sd, f"{name}.m", (1, d)), _array(src, sd, f"{name}.p", (d, d))), d


def _args_dict(args: Any) -> dict:
    if isinstance(args, Namespace):
        return args.to_dict()
    return dict(args) if isinstance(args, dict) else {}


def load_retrieval(checkpoint_path: str | os.PathLike, codebook_path: str | os.PathLike | None = None, *,
                   alpha: float = 3.0, similarity_threshold: float = 0.0, query_assignments: int = 5,
                   database_assignments: int = 1) -> RetrievalModel:
    """Load MASt3R's retrieval model (`MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric_retrieval_trainingfree.pth`)
    and its ASMK codebook, without torch and without executing pickle code.

    Args:
      checkpoint_path: the retrieval `.pth` (`{'model': head state dict, 'args': Namespace}`).
      codebook_path: the codebook (`*_codebook.pkl`, or a `.npy` of the (K, D) centroids). Default: the official
        location next to the checkpoint (`default_codebook_path`).
      alpha, similarity_threshold, query_assignments, database_assignments: the ASMK parameters; the defaults are
        those of the official `Retriever` (`similarity: {alpha: 3.0, similarity_threshold: 0.0}`, multiple
        assignment 5 for queries and 1 for the database).

    Returns:
      `RetrievalModel` (float32 arrays on the host; the official whitening matrices are float64).

    Raises:
      CheckpointError (a ValueError) naming the file: missing checkpoint or codebook (the message gives the path
        looked for), unreadable / hostile file, keys outside the retrieval head, wrong shapes (a whitening matrix
        or projector layer that does not chain, a codebook whose width differs from the head's output),
        unsupported args (`featweights` other than 'l2norm').
    """
    src = Path(checkpoint_path)
    ckpt = read_pth(src)
    sd = ckpt.get("model")
    if not isinstance(sd, dict):
        raise CheckpointError(src, "not a retrieval checkpoint: no 'model' state dict "
                                   f"(top-level keys: {sorted(map(str, ckpt))[:8]})")
    args = _args_dict(ckpt.get("args"))
    backbone = [k for k in sd if str(k).startswith("backbone.")]
    if backbone:
        warnings.warn(f"{src}: the retrieval checkpoint holds {len(backbone)} backbone.* tensors (a fine-tuned "
                      "backbone?); they are ignored: the encoder is the model passed to similarity_matrix",
                      stacklevel=2)
        sd = {k: v for k, v in sd.items() if k not in backbone}
    bad = [k for k in sd if not (isinstance(k, str) and _KEY.fullmatch(k))]
    if bad:
        raise CheckpointError(src, f"not a MASt3R retrieval head: unexpected key(s) {bad[:4]} (expected prewhiten.m/p, "
                                   "projector.<i>.weight/bias, postwhiten.m/p)")
    if args.get("featweights", "l2norm") != "l2norm":
        raise CheckpointError(src, f"featweights={args['featweights']!r} is not supported (only 'l2norm', as official)")

    prewhiten, dim = _whitener(src, sd, "prewhiten", None)
    idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith("projector.")})
    layers: list[tuple] = []
    for pos, i in enumerate(idx):
        # official build_projector: Linear at 0, 3, 6, ..., LayerNorm at 1, 4, ... (GELU at 2, 5, ...: no params)
        kind = {0: "linear", 1: "layernorm"}.get(i % 3)
        if kind is None or (kind == "layernorm" and (pos == 0 or idx[pos - 1] != i - 1)) or (
                kind == "linear" and pos > 0 and idx[pos - 1] != i - 2):
            raise CheckpointError(src, f"projector layer {i} does not fit the official Linear/LayerNorm/GELU chain "
                                       f"(layers present: {idx})")
        if f"projector.{i}.weight" not in sd or f"projector.{i}.bias" not in sd:
            raise CheckpointError(src, f"projector.{i} needs both weight and bias")
        w = sd[f"projector.{i}.weight"]
        if kind == "linear":
            if not isinstance(w, np.ndarray) or w.ndim != 2:
                raise CheckpointError(src, f"'projector.{i}.weight' must be a (out, in) matrix")
            d_in = int(w.shape[1]) if dim is None else dim
            out = int(w.shape[0])
            layers.append(("linear", _array(src, sd, f"projector.{i}.weight", (out, d_in)),
                           _array(src, sd, f"projector.{i}.bias", (out,))))
            dim = out
        else:
            layers.append(("layernorm", _array(src, sd, f"projector.{i}.weight", (dim,)),
                           _array(src, sd, f"projector.{i}.bias", (dim,))))
    if layers and layers[-1][0] != "linear":
        raise CheckpointError(src, "the projector ends with a LayerNorm (official: it ends with a Linear)")
    in_dim = prewhiten[1].shape[0] if prewhiten is not None else (layers[0][1].shape[1] if layers else None)
    linears = tuple((w, b) for kind, w, b in layers if kind == "linear")
    norms = tuple((w, b) for kind, w, b in layers if kind == "layernorm")
    residual = bool(args.get("residual", False))
    if residual and layers and dim != in_dim:
        raise CheckpointError(src, f"residual projector: output width {dim} differs from its input {in_dim}")
    hdims = args.get("hdims")
    if isinstance(hdims, str) and hdims and layers:
        want = [int(h) for h in hdims.split("_") if h.isdigit()]
        got = [int(w.shape[0]) for kind, w, _ in layers if kind == "linear"]
        if want != got:
            raise CheckpointError(src, f"args.hdims={hdims!r} but the projector's widths are {got}")
    postwhiten, dim = _whitener(src, sd, "postwhiten", dim)

    nfeat = args.get("nfeat", 300)
    if isinstance(nfeat, bool) or not isinstance(nfeat, (int, float, np.integer, np.floating)) or not (
            nfeat >= 1 or -1.0 <= nfeat < 0):
        raise CheckpointError(src, f"args.nfeat={nfeat!r} must be a positive count or a fraction in [-1, 0)")

    from f3d_jax.retrieval.codebook import read_codebook
    cpath = default_codebook_path(src) if codebook_path is None else Path(codebook_path)
    if not cpath.exists():
        how = "the official location next to the checkpoint; pass codebook_path=" if codebook_path is None else ""
        raise CheckpointError(cpath, f"the retrieval codebook is missing ({how or 'no such file'}"
                                     f"{'...' if how else ''})")
    codebook = read_codebook(cpath)
    if dim is not None and codebook.shape[1] != dim:
        raise CheckpointError(cpath, f"the codebook's centroids are {codebook.shape[1]}-dim, but the retrieval head "
                                     f"{src.name} gives {dim}-dim local features")
    ncl = args.get("nclusters")
    if isinstance(ncl, str):  # asmk spells sizes '64k' / '1M' too
        from f3d_jax.retrieval.codebook import codebook_size
        ncl = codebook_size(ncl)
    if isinstance(ncl, int) and not isinstance(ncl, bool) and ncl != codebook.shape[0]:
        raise CheckpointError(cpath, f"the codebook holds {codebook.shape[0]} centroids, but {src.name} was built "
                                     f"with nclusters={ncl}")
    for name, v, lo in (("query_assignments", query_assignments, 1), ("database_assignments", database_assignments, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= codebook.shape[0]:
            raise ValueError(f"load_retrieval: {name} must be an int in [1, {codebook.shape[0]}], got {v!r}")
    pretrained = args.get("pretrained")
    return RetrievalModel(
        prewhiten=prewhiten, projector=linears, projector_norms=norms, postwhiten=postwhiten, codebook=codebook,
        residual=residual,
        nfeat=float(nfeat) if float(nfeat) < 0 else int(nfeat), alpha=float(alpha),
        similarity_threshold=float(similarity_threshold), query_assignments=query_assignments,
        database_assignments=database_assignments, source=str(src), codebook_source=str(cpath),
        backbone_name=str(pretrained) if isinstance(pretrained, str) else None)
