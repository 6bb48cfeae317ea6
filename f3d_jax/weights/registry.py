"""Registry of every checkpoint Naver released for CroCo, DUSt3R and MASt3R.

Mirrors the download tables of the official READMEs (naver/croco `README.MD` and `stereoflow/README.MD`,
naver/dust3r and naver/mast3r `README.md`, "Checkpoints" and "Our Hyperparameters") and the Hugging Face
repos the demos load with `from_pretrained("naver/<name>")`. Constructor strings are the training form
stored in each file's `args.model` (or its `croco_kwargs`); `inference_kwargs` applies the rewrite
of the official `load_model`. Nothing here downloads anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from f3d_jax.weights.constructor import official_load_model_rewrite, parse_constructor
from f3d_jax.weights.errors import CheckpointError

__all__ = ["CheckpointInfo", "get_checkpoint_info", "list_checkpoints"]

_LICENSE = "CC BY-NC-SA 4.0"
_CROCO_URL = "https://download.europe.naverlabs.com/ComputerVision/CroCo/"
_DUST3R_URL = "https://download.europe.naverlabs.com/ComputerVision/DUSt3R/"
_MAST3R_URL = "https://download.europe.naverlabs.com/ComputerVision/MASt3R/"
_DATASETS_NOTE = (
    "non-commercial use only; also subject to the licences of the training datasets and base "
    "checkpoints (see the official README and CHECKPOINTS_NOTICE)"
)
_RES_512 = ((384, 512), (336, 512), (288, 512), (256, 512), (160, 512))  # (H, W) landscape, + transposes


@dataclass(frozen=True)
class CheckpointInfo:
    """One released checkpoint.

    Attributes:
        name: official model name (the file stem), e.g. `DUSt3R_ViTLarge_BaseDecoder_512_dpt`.
        family: `croco`, `dust3r`, `mast3r`, `retrieval` or `stereoflow` (CroCo-Stereo / CroCo-Flow).
        class_name: official class (`CroCoNet`, `AsymmetricCroCo3DStereo`, `AsymmetricMASt3R`,
            `CroCoDownstreamBinocular`); None for the retrieval model, which is not a standalone network.
        constructor: the training-time constructor string (as in the file's `args.model`); None
            for the retrieval model, whose args are not published.
        files: file names of the download (weights first; the retrieval model adds its codebook).
        urls: official download URLs, parallel to `files`.
        hf_repo: Hugging Face repo id loaded by the official demos, or None.
        license: licence of the weights.
        license_note: extra conditions.
        pth_format: layout of the `.pth` top-level dict.
        training_resolutions: `(H, W)` training sizes (landscape; portrait transposes also used).
        backbone: for the retrieval model, the checkpoint whose encoder it runs on.
        kwargs_inferred: the exact kwargs are not published (CroCo v2 base/small), inferred from
            the README table.
        stereoflow: for CroCo-Stereo / -Flow, the `args` test.py reads: `task`, `crop`, `criterion`,
            `tile_conf_mode` and `croco_args` (a tuple of (name, value) pairs).
    """

    name: str
    family: str
    class_name: str | None
    constructor: str | None
    files: tuple[str, ...]
    urls: tuple[str, ...]
    hf_repo: str | None
    license: str
    license_note: str
    pth_format: str
    training_resolutions: tuple[tuple[int, int], ...] = ()
    backbone: str | None = None
    kwargs_inferred: bool = False
    stereoflow: tuple[tuple[str, Any], ...] = ()

    @property
    def args(self) -> MappingProxyType[str, Any]:
        """CroCo-Stereo / -Flow: the checkpoint `args` test.py reads (croco_args as a dict); else empty."""
        out = dict(self.stereoflow)
        if "croco_args" in out:
            out["croco_args"] = dict(out["croco_args"])
        return MappingProxyType(out)

    @property
    def kwargs(self) -> MappingProxyType[str, Any]:
        """Training-time constructor kwargs (read-only), parsed from `constructor`; for CroCo-Stereo / -Flow
        the backbone's `croco_args`."""
        if self.family == "stereoflow":
            return MappingProxyType(dict(dict(self.stereoflow)["croco_args"]))
        if self.constructor is None:
            return MappingProxyType({})
        return MappingProxyType(parse_constructor(self.constructor)[1])

    @property
    def inference_kwargs(self) -> MappingProxyType[str, Any]:
        """Kwargs of the model the official `load_model` / `from_pretrained` builds."""
        if self.class_name is None:
            return MappingProxyType({})
        if self.family == "stereoflow":  # test.py builds the model from croco_args as stored
            return self.kwargs
        return MappingProxyType(official_load_model_rewrite(self.class_name, self.kwargs))

    @property
    def file(self) -> str:
        """The main weight file name."""
        return self.files[0]

    @property
    def url(self) -> str:
        """The main weight file's download URL."""
        return self.urls[0]


def _croco(name: str, constructor: str, pth_format: str, inferred: bool) -> CheckpointInfo:
    return CheckpointInfo(
        name=name,
        family="croco",
        class_name="CroCoNet",
        constructor=constructor,
        files=(f"{name}.pth",),
        urls=(f"{_CROCO_URL}{name}.pth",),
        hf_repo=None,
        license=_LICENSE,
        license_note="non-commercial use only (naver/croco LICENSE)",
        pth_format=pth_format,
        training_resolutions=((224, 224),),
        kwargs_inferred=inferred,
    )


def _dust3r_like(name: str, family: str, constructor: str, resolutions: tuple[tuple[int, int], ...]) -> CheckpointInfo:
    base = _DUST3R_URL if family == "dust3r" else _MAST3R_URL
    return CheckpointInfo(
        name=name,
        family=family,
        class_name=constructor.split("(", 1)[0],
        constructor=constructor,
        files=(f"{name}.pth",),
        urls=(f"{base}{name}.pth",),
        hf_repo=f"naver/{name}",
        license=_LICENSE,
        license_note=_DATASETS_NOTE,
        pth_format="{'model': state_dict, 'args': argparse.Namespace(model=<constructor>, ...)}",
        training_resolutions=resolutions,
    )


def _stereoflow(name: str, task: str, backbone: str, crop: tuple[int, int] | None = None,
                criterion: str | None = None, tile_conf_mode: str | None = None) -> CheckpointInfo:
    """A CroCo-Stereo / CroCo-Flow release (croco/stereoflow/README.MD; train.py defaults for what its
    training command does not set)."""
    stereo = task == "stereo"
    crop = crop or ((352, 704) if stereo else (320, 384))
    croco = dict(_STEREOFLOW_BACKBONES[backbone], img_size=crop)
    args = (("task", task), ("crop", crop),
            ("criterion", criterion or ("LaplacianLossBounded2()" if stereo else "LaplacianLossBounded()")),
            ("tile_conf_mode", tile_conf_mode or ("conf_expsigmoid_15_3" if stereo else "conf_expsigmoid_10_5")),
            ("croco_args", tuple(croco.items())))
    return CheckpointInfo(
        name=name,
        family="stereoflow",
        class_name="CroCoDownstreamBinocular",
        constructor=None,
        files=(f"{name}.pth",),
        urls=(f"{_CROCO_URL}StereoFlow_models/{name}.pth",),
        hf_repo=None,
        license=_LICENSE,
        license_note=_DATASETS_NOTE,
        pth_format=_STEREOFLOW_PTH,
        training_resolutions=(crop,),
        backbone=backbone,
        kwargs_inferred=backbone != "CroCo_V2_ViTLarge_BaseDecoder",
        stereoflow=args,
    )


_STEREOFLOW_PTH = ("{'model': state_dict, 'args': argparse.Namespace(task, crop, criterion, tile_conf_mode, croco_args, "
                   "... every train.py argument)} (may also hold optimizer/scaler/epoch entries, ignored)")
# croco_args of the CroCo v2 backbones the stereo/flow models were fine-tuned from (croco_args_from_ckpt);
# the ViT-Base ones are inferred from the CroCo README (their croco_kwargs are not published)
_STEREOFLOW_BACKBONES: dict[str, dict[str, Any]] = {
    "CroCo_V2_ViTLarge_BaseDecoder": {"enc_embed_dim": 1024, "enc_depth": 24, "enc_num_heads": 16,
                                      "dec_embed_dim": 768, "dec_num_heads": 12, "dec_depth": 12,
                                      "pos_embed": "RoPE100"},
    "CroCo_V2_ViTBase_BaseDecoder": {"dec_embed_dim": 768, "dec_num_heads": 12, "dec_depth": 12, "pos_embed": "RoPE100"},
    "CroCo_V2_ViTBase_SmallDecoder": {"pos_embed": "RoPE100"},
}
_V2 = "{'model': state_dict, 'croco_kwargs': {...}} (CroCo v2 release)"
_VITL_BASEDEC = "enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12"
_DUST3R_MODES = "output_mode='pts3d', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf)"
_MANYAR_512 = "pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512)"

_RETRIEVAL = "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric_retrieval"

_ENTRIES: tuple[CheckpointInfo, ...] = (
    _croco("CroCo", "CroCoNet()", "{'model': state_dict} only (CroCo v1 release: CroCoNet() defaults)", False),
    _croco("CroCo_V2_ViTBase_SmallDecoder", "CroCoNet(pos_embed='RoPE100')", _V2, True),
    _croco(
        "CroCo_V2_ViTBase_BaseDecoder",
        "CroCoNet(dec_embed_dim=768, dec_num_heads=12, dec_depth=12, pos_embed='RoPE100')",
        _V2,
        True,
    ),
    _croco(
        "CroCo_V2_ViTLarge_BaseDecoder",
        "CroCoNet(enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_num_heads=12, "
        "dec_depth=12, pos_embed='RoPE100')",
        _V2,
        False,
    ),
    _dust3r_like(
        "DUSt3R_ViTLarge_BaseDecoder_224_linear",
        "dust3r",
        f"AsymmetricCroCo3DStereo(pos_embed='RoPE100', img_size=(224, 224), head_type='linear', {_DUST3R_MODES}, "
        f"{_VITL_BASEDEC})",
        ((224, 224),),
    ),
    _dust3r_like(
        "DUSt3R_ViTLarge_BaseDecoder_512_linear",
        "dust3r",
        f"AsymmetricCroCo3DStereo({_MANYAR_512}, head_type='linear', {_DUST3R_MODES}, {_VITL_BASEDEC})",
        _RES_512,
    ),
    _dust3r_like(
        "DUSt3R_ViTLarge_BaseDecoder_512_dpt",
        "dust3r",
        f"AsymmetricCroCo3DStereo({_MANYAR_512}, head_type='dpt', {_DUST3R_MODES}, {_VITL_BASEDEC})",
        _RES_512,
    ),
    _dust3r_like(
        "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric",
        "mast3r",
        f"AsymmetricMASt3R({_MANYAR_512}, head_type='catmlp+dpt', output_mode='pts3d+desc24', "
        f"depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), {_VITL_BASEDEC}, two_confs=True, "
        "desc_conf_mode=('exp', 0, inf))",
        _RES_512,
    ),
    CheckpointInfo(
        name=f"{_RETRIEVAL}_trainingfree",
        family="retrieval",
        class_name=None,
        constructor=None,
        files=(f"{_RETRIEVAL}_trainingfree.pth", f"{_RETRIEVAL}_codebook.pkl"),
        urls=(f"{_MAST3R_URL}{_RETRIEVAL}_trainingfree.pth", f"{_MAST3R_URL}{_RETRIEVAL}_codebook.pkl"),
        hf_repo=None,
        license=_LICENSE,
        license_note=_DATASETS_NOTE + "; the codebook .pkl (an ASMK pickle) is read by f3d_jax.retrieval.read_codebook "
                     "on the bounded pickle machine (numpy float arrays only, nothing executed)",
        pth_format=(
            "{'model': whitening/projector state dict without backbone.* keys (float64 whitening), "
            "'args': Namespace(pretrained=<MASt3R checkpoint>, ...)} (inferred, args not published)"
        ),
        training_resolutions=((384, 512),),
        backbone="MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric",
        kwargs_inferred=True,
    ),
)

_VITL, _VITB_BASE, _VITB_SMALL = "CroCo_V2_ViTLarge_BaseDecoder", "CroCo_V2_ViTBase_BaseDecoder", "CroCo_V2_ViTBase_SmallDecoder"
_ENTRIES += (
    _stereoflow("crocostereo", "stereo", _VITL),
    _stereoflow("crocostereo_subtrain", "stereo", _VITL),
    _stereoflow("crocostereo_eth3d", "stereo", _VITL, criterion="LaplacianLoss()", tile_conf_mode="conf_expbeta3"),
    _stereoflow("crocostereo_finetune_kitti", "stereo", _VITL, crop=(352, 1216)),
    _stereoflow("crocostereo_finetune_spring", "stereo", _VITL),
    _stereoflow("crocostereo_subtrain_vitb_smalldecoder", "stereo", _VITB_SMALL),
    _stereoflow("crocostereo_subtrain_vitb_basedecoder", "stereo", _VITB_BASE),
    _stereoflow("crocoflow", "flow", _VITL),
    _stereoflow("crocoflow_finetune_kitti", "flow", _VITL, crop=(352, 1216)),
    _stereoflow("crocoflow_finetune_spring", "flow", _VITL),
    _stereoflow("crocoflow_vitb_smalldecoder", "flow", _VITB_SMALL),
    _stereoflow("crocoflow_vitb_basedecoder", "flow", _VITB_BASE),
)

_REGISTRY: dict[str, CheckpointInfo] = {e.name: e for e in _ENTRIES}


def list_checkpoints(family: str | None = None) -> tuple[str, ...]:
    """Names of the released checkpoints, in the READMEs' order (optionally one family)."""
    return tuple(e.name for e in _ENTRIES if family is None or e.family == family)


def get_checkpoint_info(name: str) -> CheckpointInfo:
    """Registry entry by name; also accepts the file name (`<name>.pth`) or HF id (`naver/<name>`).

    Raises:
        CheckpointError: unknown name (the message lists the known ones).
    """
    key = name.removeprefix("naver/").removesuffix(".pth")
    if key in _REGISTRY:
        return _REGISTRY[key]
    for e in _ENTRIES:  # the retrieval entry is also known by its file stems
        if key in (f.rsplit(".", 1)[0] for f in e.files):
            return e
    raise CheckpointError(name, f"unknown checkpoint name; known: {', '.join(_REGISTRY)}")
