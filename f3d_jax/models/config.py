"""Frozen model configurations, built from the official constructor keyword arguments.

The field names and defaults are those of the official constructors (`CroCoNet`,
`AsymmetricCroCo3DStereo`, `AsymmetricMASt3R`), so a checkpoint's constructor string maps onto them
one to one. Configs are hashable: they are static arguments of the jitted forward functions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

Mode = tuple[str, float, float]


def _as_mode(v: Any, name: str) -> Mode | None:
    if v is None:
        return None
    if not (isinstance(v, (tuple, list)) and len(v) == 3 and isinstance(v[0], str)):
        raise ValueError(f"{name} must be (mode, vmin, vmax), got {v!r}")
    return (str(v[0]), float(v[1]), float(v[2]))


def _as_hw(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    h, w = v
    return (int(h), int(w))


@dataclasses.dataclass(frozen=True)
class CroCoConfig:
    """`CroCoNet(...)` arguments (defaults = the CroCo v1 release)."""

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
        object.__setattr__(self, "img_size", _as_hw(self.img_size))
        if self.pos_embed != "cosine" and not self.pos_embed.startswith("RoPE"):
            raise ValueError(f"unknown pos_embed {self.pos_embed!r} (expected 'cosine' or 'RoPE<base>')")
        for name, dim, heads in (("enc", self.enc_embed_dim, self.enc_num_heads),
                                 ("dec", self.dec_embed_dim, self.dec_num_heads)):
            if dim % heads:
                raise ValueError(f"{name}_embed_dim={dim} is not divisible by {name}_num_heads={heads}")

    @property
    def rope_base(self) -> float | None:
        """RoPE frequency base, or None for the fixed cosine table."""
        return float(self.pos_embed[4:]) if self.pos_embed.startswith("RoPE") else None

    @property
    def num_patches(self) -> int:
        return (self.img_size[0] // self.patch_size) * (self.img_size[1] // self.patch_size)

    def replace(self, **kw: Any) -> "CroCoConfig":
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> "CroCoConfig":
        """Build from official constructor kwargs; unknown names are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"{cls.official_class}: unsupported argument(s) {unknown}")
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

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "depth_mode", _as_mode(self.depth_mode, "depth_mode"))
        object.__setattr__(self, "conf_mode", _as_mode(self.conf_mode, "conf_mode"))
        if self.rope_base is None:
            raise ValueError("DUSt3R/MASt3R models need pos_embed='RoPE<base>'")
        if self.patch_embed_cls not in ("PatchEmbedDust3R", "ManyAR_PatchEmbed"):
            raise ValueError(f"unknown patch_embed_cls {self.patch_embed_cls!r}")
        if self.depth_mode[0] not in ("linear", "square", "exp"):
            raise ValueError(f"unknown depth_mode {self.depth_mode[0]!r}")
        if self.depth_mode[1:] != (-math.inf, math.inf):
            raise ValueError("depth_mode bounds must be (-inf, inf), as the official code asserts")
        if self.conf_mode is not None and self.conf_mode[0] not in ("exp", "sigmoid"):
            raise ValueError(f"unknown conf_mode {self.conf_mode[0]!r}")
        self._check_head()

    def _check_head(self) -> None:
        if self.output_mode != "pts3d":
            raise ValueError(f"DUSt3R supports output_mode='pts3d', got {self.output_mode!r}")
        if self.head_type not in ("linear", "dpt"):
            raise ValueError(f"unknown DUSt3R head_type {self.head_type!r} (expected 'linear' or 'dpt')")
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

    def __post_init__(self):
        object.__setattr__(self, "desc_conf_mode", _as_mode(self.desc_conf_mode, "desc_conf_mode"))
        super().__post_init__()
        if "norm" not in self.desc_mode:
            raise ValueError(f"unknown desc_mode {self.desc_mode!r}")

    def _check_head(self) -> None:
        if self.head_type != "catmlp+dpt" or not self.output_mode.startswith("pts3d+desc"):
            raise ValueError(f"MASt3R supports head_type='catmlp+dpt' with output_mode='pts3d+desc<D>', "
                             f"got {self.head_type!r}, {self.output_mode!r}")
        if not self.output_mode[10:].isdigit():
            raise ValueError(f"bad output_mode {self.output_mode!r}")
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


def config_from_official(class_name: str, kwargs: dict[str, Any]) -> CroCoConfig:
    """Config for an official constructor call `class_name(**kwargs)`."""
    if class_name not in CONFIG_CLASSES:
        raise ValueError(f"unknown model class {class_name!r} (known: {sorted(CONFIG_CLASSES)})")
    return CONFIG_CLASSES[class_name].from_kwargs(dict(kwargs))


def config_to_official(config: CroCoConfig) -> tuple[str, dict[str, Any]]:
    """(class name, constructor kwargs) of a config; inverse of `config_from_official`."""
    return config.official_class, dataclasses.asdict(config)
