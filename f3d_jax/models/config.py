"""Frozen model configurations, built from the official constructor keyword arguments.

The field names and defaults are those of the official constructors (`CroCoNet`,
`AsymmetricCroCo3DStereo`, `AsymmetricMASt3R`), so a checkpoint's constructor string maps onto them
one to one. Configs are hashable: they are static arguments of the jitted forward functions.

Every value is checked when a config is built (`argument_problem`, `arguments_problem`): types,
sane ranges, closed sets of names and the consistency of sizes. The same checks run on constructor
strings, `config.json` and `f3d_model.json` before anything is built, so a hostile checkpoint
cannot make the model builder loop for long or allocate huge tables.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

Mode = tuple[str, float, float]

# ---- sanity bounds of the constructor arguments ------------------------------------------------
# The released models use depths 8-24, embedding widths 512-1024, 12-16 heads (head width 64),
# patch 16, images of 224 or 512 and mlp_ratio 4. The bounds leave a wide margin (ViT-22B has 48
# layers, width 6144 and 48 heads) while keeping the abstract model build (one node per block)
# and every number derived from the config small: integers stay far below 2**31.
INT_RANGES: dict[str, tuple[int, int]] = {
    "patch_size": (1, 64),
    "enc_embed_dim": (1, 8192),
    "dec_embed_dim": (1, 8192),
    "enc_depth": (1, 64),
    "dec_depth": (1, 64),
    "enc_num_heads": (1, 128),
    "dec_num_heads": (1, 128),
}
IMG_SIDE_RANGE = (1, 4096)
MLP_RATIO_MAX = 16.0  # mlp_ratio in (0, 16]
DESC_DIM_RANGE = (1, 1024)  # MASt3R's output_mode='pts3d+desc<D>' (24 released)
ROPE_BASE_MAX = 1e6  # pos_embed='RoPE<base>', 0 < base <= 1e6 (100 released)
MAX_STRING = 64  # every string argument is a short name

# Closed sets of names (the official code raises on anything else, or f3d-jax does not build it).
HEAD_TYPES = ("linear", "dpt", "catmlp+dpt")
DEPTH_MODES = ("linear", "square", "exp")
CONF_MODES = ("exp", "sigmoid")
DESC_MODES = ("norm",)
FREEZE_MODES = ("none", "mask", "encoder", "encoder_and_decoder")
PATCH_EMBED_CLASSES = ("PatchEmbedDust3R", "ManyAR_PatchEmbed")
# `float(pos_embed[4:])` in the official code also takes 'nan', 'inf', '-1', ' 1_0 ': only plain
# positive decimals are accepted here.
_ROPE_RE = re.compile(r"RoPE([0-9]{1,12}(?:\.[0-9]{0,12})?(?:[eE][+-]?[0-9]{1,3})?)")
_OUTPUT_MODE_RE = re.compile(r"pts3d(?:\+desc([0-9]{1,4}))?")
_BOOL_KEYS = ("norm_im2_in_dec", "landscape_only", "two_confs")


def brief(v: Any, limit: int = 60) -> str:
    """A short, one-line `repr` for error messages (huge ints and strings are not spelled out)."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 10**30:
        return f"<{v.bit_length()}-bit int>"
    if isinstance(v, str) and len(v) > limit:
        return repr(v[:limit]) + f"... ({len(v)} characters)"
    if isinstance(v, tuple | list):
        inner = ", ".join(brief(e, limit) for e in v[:8]) + (", ..." if len(v) > 8 else "")
        if isinstance(v, list):
            return f"[{inner}]"
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, str | int | float | bool | type(None)):
        return repr(v)
    return f"<{type(v).__name__}>"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _in_range(v: Any, lo: int, hi: int) -> bool:
    return _is_int(v) and lo <= v <= hi


def parse_rope_base(pos_embed: str) -> float | None:
    """The RoPE frequency of `pos_embed` ('RoPE100' -> 100.0), None for 'cosine'.

    Raises:
        ValueError: anything else, or a frequency that is not a finite number in (0, 1e6].
    """
    if pos_embed == "cosine":
        return None
    m = _ROPE_RE.fullmatch(pos_embed) if isinstance(pos_embed, str) else None
    if not m:
        raise ValueError(f"pos_embed={brief(pos_embed)} should be 'cosine' or 'RoPE<frequency>' "
                         "(a positive decimal number, e.g. 'RoPE100')")
    base = float(m.group(1))
    if not (math.isfinite(base) and 0 < base <= ROPE_BASE_MAX):
        raise ValueError(f"pos_embed={brief(pos_embed)}: the RoPE frequency must be in (0, {ROPE_BASE_MAX:g}]")
    return base


def _mode_problem(key: str, v: Any) -> str | None:
    """`depth_mode` / `conf_mode` / `desc_conf_mode`: a (name, vmin, vmax) triple (or None)."""
    if v is None and key != "depth_mode":
        return None
    if not (isinstance(v, tuple | list) and len(v) == 3 and isinstance(v[0], str)
            and _is_num(v[1]) and _is_num(v[2])):
        return "should be a (name, min, max) triple" + (" or None" if key != "depth_mode" else "")
    name, lo, hi = v
    names = DEPTH_MODES if key == "depth_mode" else CONF_MODES
    if name not in names:
        return f"should name one of {', '.join(map(repr, names))}"
    try:
        lo, hi = float(lo), float(hi)
    except OverflowError:
        return "has a bound too large for a float"
    if math.isnan(lo) or math.isnan(hi) or not lo < hi:
        return "should have bounds min < max (no NaN)"
    if key != "depth_mode" and (not math.isfinite(lo) or (name == "sigmoid" and not math.isfinite(hi))):
        return "should have a finite min (and a finite max for 'sigmoid')"
    return None


def argument_problem(key: str, v: Any) -> str | None:
    """What is wrong with the single constructor argument `key=v`, or None.

    Covers types (a bool is not an int), ranges, finiteness and closed sets of names; the
    relations between arguments are `arguments_problem`'s. Unknown keys are not checked here.
    """
    if key in INT_RANGES:
        lo, hi = INT_RANGES[key]
        return None if _in_range(v, lo, hi) else f"should be a positive int (at most {hi})"
    if key == "img_size":
        lo, hi = IMG_SIDE_RANGE
        if _in_range(v, lo, hi) or (isinstance(v, tuple | list) and len(v) == 2
                                    and all(_in_range(e, lo, hi) for e in v)):
            return None
        return f"should be an int or a (height, width) pair of ints in [{lo}, {hi}]"
    if key == "mlp_ratio":
        # comparisons only: math.isfinite would overflow on a huge int; NaN and inf fail them
        return None if _is_num(v) and 0 < v <= MLP_RATIO_MAX else f"should be a finite number in (0, {MLP_RATIO_MAX:g}]"
    if key == "mask_ratio":
        return None if _is_num(v) and 0 <= v < 1 else "should be a number in [0, 1)"
    if key in _BOOL_KEYS:
        return None if isinstance(v, bool) else "should be a bool"
    if key in ("pos_embed", "output_mode", "head_type", "freeze", "patch_embed_cls", "desc_mode"):
        if not isinstance(v, str):
            return "should be a string"
        if len(v) > MAX_STRING:
            return f"should be a short name (at most {MAX_STRING} characters)"
    if key == "pos_embed":
        try:
            parse_rope_base(v)
        except ValueError:
            return "should be 'cosine' or 'RoPE<frequency>' with a finite frequency in (0, 1e6]"
        return None
    closed = {"head_type": HEAD_TYPES, "freeze": FREEZE_MODES, "patch_embed_cls": PATCH_EMBED_CLASSES,
              "desc_mode": DESC_MODES}.get(key)
    if closed is not None:
        return None if v in closed else f"should be one of {', '.join(map(repr, closed))}"
    if key == "output_mode":
        m = _OUTPUT_MODE_RE.fullmatch(v)
        lo, hi = DESC_DIM_RANGE
        if not m or (m.group(1) is not None and not lo <= int(m.group(1)) <= hi):
            return f"should be 'pts3d' or 'pts3d+desc<D>' with D in [{lo}, {hi}]"
        return None
    if key in ("depth_mode", "conf_mode", "desc_conf_mode"):
        return _mode_problem(key, v)
    return None


def _hw(v: Any) -> tuple[int, int]:
    return (v, v) if _is_int(v) else (v[0], v[1])


def arguments_problem(kw: Mapping[str, Any]) -> str | None:
    """What is inconsistent between constructor arguments (all of them, defaults included), or None.

    Assumes each value passed `argument_problem`: embedding widths divisible by the head counts,
    head widths divisible by 4 for RoPE-2D (two rotated halves of even width), table widths
    divisible by 4 for the cosine table, the image a whole number of patches, a non-empty MLP.
    """
    rope = kw["pos_embed"] != "cosine"
    for side in ("enc", "dec"):
        dim, heads = kw[f"{side}_embed_dim"], kw[f"{side}_num_heads"]
        if dim % heads:
            return f"{side}_embed_dim={dim} is not divisible by {side}_num_heads={heads}"
        if rope and (dim // heads) % 4:
            return (f"{side}_embed_dim / {side}_num_heads = {dim // heads}: RoPE-2D needs a head width "
                    "divisible by 4")
        if not rope and dim % 4:
            return f"{side}_embed_dim={dim}: the cosine position table needs a width divisible by 4"
        if int(dim * kw["mlp_ratio"]) < 1:
            return f"{side}_embed_dim * mlp_ratio = {dim} * {kw['mlp_ratio']} leaves an empty MLP"
    h, w = _hw(kw["img_size"])
    p = kw["patch_size"]
    if h % p or w % p:
        return f"img_size={brief(kw['img_size'])} is not a multiple of patch_size={p}"
    return None


def check_arguments(kwargs: Mapping[str, Any], complete: Mapping[str, Any] | None = None) -> None:
    """Raises ValueError naming the first bad argument of `kwargs`, then any inconsistency of
    `complete` (the full argument set, defaults included; default: `kwargs`)."""
    for k, v in kwargs.items():
        problem = argument_problem(k, v)
        if problem:
            raise ValueError(f"{k}={brief(v)} {problem}")
    problem = arguments_problem(kwargs if complete is None else complete)
    if problem:
        raise ValueError(problem)


def _as_mode(v: Any) -> Mode | None:
    return None if v is None else (str(v[0]), float(v[1]), float(v[2]))


def _as_hw(v: Any) -> tuple[int, int]:
    h, w = _hw(v)
    return (int(h), int(w))


@dataclasses.dataclass(frozen=True)
class CroCoConfig:
    """`CroCoNet(...)` arguments (defaults = the CroCo v1 release).

    Raises:
        ValueError: a value of the wrong type or out of range, inconsistent sizes, or a setting
            f3d-jax does not build (the message names the argument).
    """

    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    mask_ratio: float = 0.9
    enc_embed_dim: int = 768
    enc_depth: int = 12
    enc_num_heads: int = 12
    dec_embed_dim: int = 512
    dec_depth: int = 8
    dec_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_im2_in_dec: bool = True
    pos_embed: str = "cosine"

    official_class = "CroCoNet"

    def __post_init__(self):
        # validate the raw values before any conversion (int() of a huge or NaN value would raise
        # something else than a clear ValueError, or take long)
        check_arguments({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        object.__setattr__(self, "img_size", _as_hw(self.img_size))
        for name in ("depth_mode", "conf_mode", "desc_conf_mode"):
            if hasattr(self, name):
                object.__setattr__(self, name, _as_mode(getattr(self, name)))
        self._check_support()

    def _check_support(self) -> None:
        """Settings that are valid but that this class does not build."""

    @property
    def rope_base(self) -> float | None:
        """RoPE frequency base, or None for the fixed cosine table."""
        return parse_rope_base(self.pos_embed)

    @property
    def num_patches(self) -> int:
        return (self.img_size[0] // self.patch_size) * (self.img_size[1] // self.patch_size)

    def replace(self, **kw: Any) -> "CroCoConfig":
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> "CroCoConfig":
        """Build from official constructor kwargs; unknown names are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            shown = ", ".join(brief(k) for k in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise ValueError(f"{cls.official_class}: unsupported argument(s) {shown}")
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class DUSt3RConfig(CroCoConfig):
    """`AsymmetricCroCo3DStereo(...)` arguments."""

    output_mode: str = "pts3d"
    head_type: str = "linear"
    depth_mode: Mode = ("exp", -math.inf, math.inf)
    conf_mode: Mode | None = ("exp", 1.0, math.inf)
    freeze: str = "none"
    landscape_only: bool = True
    patch_embed_cls: str = "PatchEmbedDust3R"

    official_class = "AsymmetricCroCo3DStereo"

    def _check_support(self) -> None:
        if self.rope_base is None:
            raise ValueError("DUSt3R/MASt3R models need pos_embed='RoPE<base>'")
        if self.depth_mode[1:] != (-math.inf, math.inf):
            raise ValueError("depth_mode bounds must be (-inf, inf), as the official code asserts")
        self._check_head()

    def _check_head(self) -> None:
        if self.output_mode != "pts3d":
            raise ValueError(f"DUSt3R supports output_mode='pts3d', got {brief(self.output_mode)}")
        if self.head_type not in ("linear", "dpt"):
            raise ValueError(f"unknown DUSt3R head_type {brief(self.head_type)} (expected 'linear' or 'dpt')")
        if self.head_type == "dpt":
            self._check_dpt()

    def _check_dpt(self) -> None:
        if self.dec_depth <= 9:
            raise ValueError(f"the DPT head needs dec_depth > 9, got {self.dec_depth}")
        if self.patch_size != 16:
            raise ValueError(f"the official DPT head is fixed to patch size 16, got {self.patch_size}")

    @property
    def has_conf(self) -> bool:
        return self.conf_mode is not None

    @property
    def manyar(self) -> bool:
        """Training-style patch embedding: portrait images stored transposed (landscape)."""
        return self.patch_embed_cls == "ManyAR_PatchEmbed"

    @property
    def dpt_hooks(self) -> tuple[int, int, int, int]:
        depth = self.dec_depth
        return (0, depth * 2 // 4, depth * 3 // 4, depth)

    def for_inference(self) -> "DUSt3RConfig":
        """The official `load_model` rewrite: `PatchEmbedDust3R`, `landscape_only=False`."""
        return self.replace(patch_embed_cls="PatchEmbedDust3R", landscape_only=False)

    def for_training(self) -> "DUSt3RConfig":
        """Training-time orientation handling (`ManyAR_PatchEmbed`, `landscape_only=True`)."""
        return self.replace(patch_embed_cls="ManyAR_PatchEmbed", landscape_only=True)


@dataclasses.dataclass(frozen=True)
class MASt3RConfig(DUSt3RConfig):
    """`AsymmetricMASt3R(...)` arguments (`head_type='catmlp+dpt'`, `output_mode='pts3d+desc<D>'`)."""

    output_mode: str = "pts3d+desc24"
    head_type: str = "catmlp+dpt"
    desc_mode: str = "norm"
    two_confs: bool = False
    desc_conf_mode: Mode | None = None

    official_class = "AsymmetricMASt3R"

    def _check_head(self) -> None:
        if self.head_type != "catmlp+dpt" or not self.output_mode.startswith("pts3d+desc"):
            raise ValueError(f"MASt3R supports head_type='catmlp+dpt' with output_mode='pts3d+desc<D>', "
                             f"got {brief(self.head_type)}, {brief(self.output_mode)}")
        self._check_dpt()

    @property
    def desc_dim(self) -> int:
        return int(self.output_mode[10:])

    @property
    def effective_desc_conf_mode(self) -> Mode | None:
        return self.desc_conf_mode if self.desc_conf_mode is not None else self.conf_mode


CONFIG_CLASSES: dict[str, type[CroCoConfig]] = {
    c.official_class: c for c in (CroCoConfig, DUSt3RConfig, MASt3RConfig)
}


def config_from_official(class_name: str, kwargs: Mapping[str, Any]) -> CroCoConfig:
    """Config for an official constructor call `class_name(**kwargs)`.

    Raises:
        ValueError: unknown class or argument, or a value `CroCoConfig` refuses.
    """
    if not isinstance(class_name, str) or class_name not in CONFIG_CLASSES:
        raise ValueError(f"unknown model class {brief(class_name)} (known: {sorted(CONFIG_CLASSES)})")
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"constructor arguments should be a mapping of names, got {brief(kwargs)}")
    return CONFIG_CLASSES[class_name].from_kwargs(dict(kwargs))


def config_to_official(config: CroCoConfig) -> tuple[str, dict[str, Any]]:
    """(class name, constructor kwargs) of a config; inverse of `config_from_official`."""
    return config.official_class, dataclasses.asdict(config)
