"""Exact float32 on every backend: the precision attribute of every dot / convolution in the lowered StableHLO.

XLA:CPU computes float32 dots exactly whatever the attribute says, so the CPU test of "fp32 means fp32 on GPU and
TPU" is the attribute itself: with the default `precision=None` (float32 params) every `dot_general` and
`convolution` of the encoder, the decoders, the linear and DPT heads, CroCo and the dense-GA optimisation must carry
`HIGHEST`, and with 'high' / 'default' (or bfloat16 params) none may. Models are lowered on abstract params
(`ShapeDtypeStruct`): nothing is initialised or run, except one tiny end-to-end `inference` call.
"""

from __future__ import annotations

import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f3d_jax.align import AlignState, DenseConfig, make_problem
from f3d_jax.align.core import align_dense
from f3d_jax.align.losses import alignment_loss
from f3d_jax.infer.engine import InferenceEngine, inference
from f3d_jax.models.config import CroCoConfig, DUSt3RConfig
from f3d_jax.models.model import (Model, abstract_params, croco_forward, decode_pairs, encode_images, stereo_forward,
                                  symmetric_forward)
from f3d_jax.nn.precision import check_precision, resolve_precision

S = jax.ShapeDtypeStruct
HW = (32, 32)  # 2 x 2 tokens of 16 px
LINEAR = DUSt3RConfig(img_size=HW, patch_size=16, enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32,
                      dec_depth=1, dec_num_heads=2, pos_embed="RoPE100", landscape_only=False)
DPT = LINEAR.replace(head_type="dpt", dec_depth=10)  # the official DPT head needs dec_depth > 9
CROCO = CroCoConfig(img_size=16, patch_size=8, enc_embed_dim=16, enc_depth=1, enc_num_heads=2, dec_embed_dim=16,
                    dec_depth=1, dec_num_heads=2, pos_embed="RoPE100")
IMG = S((1, *HW, 3), jnp.float32)
TS = S((1, 2), jnp.int32)


# ---- the checker -------------------------------------------------------------------------------------------------


def precisions(stablehlo: str) -> list[tuple[str, str]]:
    """(op, precision) of every `dot_general` / `convolution` of a StableHLO module (nested functions included).

    The pretty form prints `precision = [A, B]` on dots and `#stablehlo<precision A>` on convolutions (and on
    dots in the generic form); an op without the attribute is DEFAULT. Mixed operand precisions read 'A,B'.
    """
    found = []
    for line in stablehlo.splitlines():
        op = next((o for o in ("dot_general", "convolution") if f"stablehlo.{o}" in line), None)
        if op is None:
            continue
        m = re.search(r"precision = \[(\w+), (\w+)\]", line)
        ps = m.groups() if m else tuple(re.findall(r"#stablehlo<precision (\w+)>", line)) or ("DEFAULT", "DEFAULT")
        found.append((op, ps[0] if len(set(ps)) == 1 else ",".join(ps)))
    return found


def assert_all_at(stablehlo: str, want: str, min_dots: int = 1, min_convs: int = 0) -> Counter:
    """Every dot / convolution at `want`, and at least `min_dots` dots and `min_convs` convolutions."""
    found = precisions(stablehlo)
    ops = Counter(op for op, _ in found)
    assert ops["dot_general"] >= min_dots, f"{ops['dot_general']} dot_general ops, expected >= {min_dots}"
    assert ops["convolution"] >= min_convs, f"{ops['convolution']} convolutions, expected >= {min_convs}"
    off = Counter(f"{op}:{p}" for op, p in found if p != want)
    assert not off, f"{sum(off.values())} of {len(found)} dots/convolutions are not {want}: {dict(off)}"
    return ops


def test_checker_detects_default_precision():
    """The checker fails on what it must catch: a plain float32 matmul / convolution lowers at DEFAULT."""
    x = S((4, 4), jnp.float32)

    def dot_and_conv(a, b):
        return a @ b, jax.lax.conv_general_dilated(a[None, None], b[None, None, :3, :3], (1, 1), "SAME")

    plain = jax.jit(dot_and_conv).lower(x, x).as_text()
    assert precisions(plain) == [("dot_general", "DEFAULT"), ("convolution", "DEFAULT")]
    with pytest.raises(AssertionError, match="2 of 2 dots/convolutions are not HIGHEST"):
        assert_all_at(plain, "HIGHEST")

    def exact(a, b):
        with jax.default_matmul_precision("highest"):
            return dot_and_conv(a, b)

    assert assert_all_at(jax.jit(exact).lower(x, x).as_text(), "HIGHEST", min_convs=1) == {"dot_general": 1,
                                                                                             "convolution": 1}
    mixed = jax.jit(lambda a, b: jnp.dot(a, b, precision=("highest", "default"))).lower(x, x).as_text()
    assert precisions(mixed) == [("dot_general", "HIGHEST,DEFAULT")]
    with pytest.raises(AssertionError, match="dot_general ops, expected >= 1"):  # no dots at all is a failure too
        assert_all_at(jax.jit(lambda a: a + 1).lower(x).as_text(), "HIGHEST")


# ---- models --------------------------------------------------------------------------------------------------------


def _params(config, dtype=jnp.float32):
    return jax.tree.map(lambda s: S(s.shape, dtype), abstract_params(config))


def test_dpt_encoder_decoder_heads_exact_by_default():
    """Encoder, both decoders and both DPT heads (1x1/3x3 convs, transposed convs, the fused resize+conv taps):
    all HIGHEST with float32 params and the default precision."""
    text = stereo_forward.lower(DPT, _params(DPT), IMG, IMG, TS, TS).as_text()
    ops = assert_all_at(text, "HIGHEST", min_dots=100, min_convs=10)
    assert ops["dot_general"] + ops["convolution"] > 300


def test_dpt_decode_pairs_high():
    """The decoder step of pair inference (decoders + DPT heads) at TF32: no HIGHEST left anywhere."""
    feat, pos = S((2, 4, DPT.enc_embed_dim), jnp.float32), S((2, 4, 2), jnp.int32)
    ts = S((2, 2), jnp.int32)
    text = decode_pairs.lower(DPT, _params(DPT), feat, pos, feat, pos, HW, HW, ts, ts, precision="high",
                              pairs_per_step=1).as_text()
    assert_all_at(text, "HIGH", min_dots=100, min_convs=10)


@pytest.mark.parametrize("precision,want", [(None, "HIGHEST"), ("default", "DEFAULT"), ("tensorfloat32", "HIGH")])
def test_linear_head_forward(precision, want):
    text = stereo_forward.lower(LINEAR, _params(LINEAR), IMG, IMG, TS, TS, precision=precision).as_text()
    assert_all_at(text, want, min_dots=20)


def test_symmetric_forward_and_xla_attention_exact():
    """MASt3R-style symmetric forward, and `jax.nn.dot_product_attention(implementation='xla')`, which builds its own
    einsums: both reached by the traced precision."""
    assert_all_at(symmetric_forward.lower(LINEAR, _params(LINEAR), IMG, IMG, TS, TS).as_text(), "HIGHEST", 30)
    assert_all_at(stereo_forward.lower(LINEAR, _params(LINEAR), IMG, IMG, TS, TS, impl="xla").as_text(), "HIGHEST",
                  20)


def test_encoder_precision_follows_dtype():
    """precision=None: exact for float32 params, the backend default for bfloat16 ones (where the attribute would
    only slow the float32 parts down); an explicit precision wins over the dtype."""
    assert_all_at(encode_images.lower(LINEAR, _params(LINEAR), IMG, TS).as_text(), "HIGHEST", 7)
    bf16 = _params(LINEAR, jnp.bfloat16)
    assert_all_at(encode_images.lower(LINEAR, bf16, IMG, TS).as_text(), "DEFAULT", 7)
    assert_all_at(encode_images.lower(LINEAR, bf16, IMG, TS, precision="highest").as_text(), "HIGHEST", 7)


@pytest.mark.parametrize("precision,want", [(None, "HIGHEST"), ("high", "HIGH")])
def test_croco_forward(precision, want):
    img, mask = S((1, 16, 16, 3), jnp.float32), S((1, CROCO.num_patches), jnp.bool_)
    assert_all_at(croco_forward.lower(CROCO, _params(CROCO), img, img, mask, precision=precision).as_text(), want, 10)


def test_precision_values():
    assert [check_precision(p) for p in (None, "highest", "HIGH", "default", "float32", "tensorfloat32",
                                         "bfloat16")] == [None, "highest", "high", "default", "highest", "high",
                                                          "default"]
    assert resolve_precision(None, jnp.float32) == "highest"
    assert resolve_precision(None, jnp.bfloat16) == resolve_precision(None, jnp.float16) == "default"
    assert resolve_precision("high", jnp.bfloat16) == "high"
    for bad in ("fast", "HIGHEST_PRECISION", 3, jax.lax.Precision.HIGHEST):
        with pytest.raises(ValueError, match="precision must be None or one of"):
            check_precision(bad)


# ---- the inference engine ----------------------------------------------------------------------------------------


def _tiny_model() -> Model:
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), abstract_params(LINEAR))
    return Model(LINEAR, params)


def test_engine_precision_keyword():
    """`inference(precision=...)` runs through the jitted steps and agrees with the model's default (exact) forward
    (XLA:CPU computes float32 exactly at every precision); a bad value is a clear error before any work."""
    model = _tiny_model()
    rng = np.random.default_rng(1)
    views = [dict(img=rng.uniform(-1, 1, (1, *HW, 3)).astype(np.float32), true_shape=np.array([HW], np.int32),
                  idx=k, instance=str(k)) for k in range(2)]
    pairs = [(views[0], views[1]), (views[1], views[0])]
    high = inference(pairs, model, batch_size=2, verbose=False, precision="high", devices=jax.devices()[:1])
    stack = lambda k: {"img": np.concatenate([p[k]["img"] for p in pairs])}  # noqa: E731
    ref = model(stack(0), stack(1))  # precision None: HIGHEST
    assert np.abs(np.asarray(ref[0]["pts3d"])).max() > 0
    for k, pred in zip(("pred1", "pred2"), ref):
        for name, arr in pred.items():
            np.testing.assert_allclose(high[k][name], np.asarray(arr), rtol=1e-6, atol=1e-6, err_msg=f"{k}.{name}")
    with pytest.raises(ValueError, match="precision must be None or one of"):
        InferenceEngine(model, 2, precision="fp32")
    with pytest.raises(ValueError, match="precision must be None or one of"):
        model({"img": np.zeros((1, *HW, 3), np.float32)}, {"img": np.zeros((1, *HW, 3), np.float32)}, precision="x")


# ---- dense global alignment --------------------------------------------------------------------------------------


def _tiny_problem():
    n, h, w = 3, 4, 5
    edges = np.array([(i, j) for i in range(n) for j in range(n) if i != j], np.int32)
    e = len(edges)
    rng = np.random.default_rng(0)
    pts = lambda: rng.normal(size=(e, h, w, 3)).astype(np.float32)  # noqa: E731
    conf = lambda: (1.5 + rng.random((e, h, w))).astype(np.float32)  # noqa: E731
    prob = make_problem(edges, pts(), pts(), conf(), conf())
    start = AlignState(cam2world=jnp.tile(jnp.eye(4), (n, 1, 1)), focals=jnp.full((n,), 5.0),
                       principal_points=jnp.full((n, 2), 2.0), depthmaps=jnp.ones((n, h, w)),
                       pw_poses=jnp.tile(jnp.eye(4), (e, 1, 1)), pw_scales=jnp.ones((e,)))
    return prob, start


@pytest.mark.parametrize("param,precision,want", [("manifold", None, "HIGHEST"), ("official", "high", "HIGH")])
def test_dense_alignment_precision(param, precision, want):
    """The whole optimisation at `DenseConfig.precision` (default 'highest'): the manifold parameterisation's SE3
    algebra (40-odd dots outside the loss), and the loss's own gradient einsum, which follows 'high' too."""
    prob, start = _tiny_problem()
    config = DenseConfig(niter=2, param=param, **({} if precision is None else {"precision": precision}))
    text = jax.jit(align_dense, static_argnames="config").lower(prob, start, config).as_text()
    assert_all_at(text, want, min_dots=2 if param == "official" else 20)


def test_alignment_loss_default_and_bad_precision():
    assert DenseConfig().precision == "highest"
    n, e, p = 3, 6, 20
    rng = np.random.default_rng(0)
    args = dict(R_im=jnp.tile(jnp.eye(3), (n, 1, 1)), T_im=jnp.zeros((n, 3)), cam_pts=jnp.ones((n, 3, p)),
                R_pw=jnp.tile(jnp.eye(3), (e, 1, 1)), T_pw=jnp.zeros((e, 3)), s_pw=jnp.ones((e,)),
                pred_i=jnp.asarray(rng.normal(size=(e, 3, p)), jnp.float32),
                pred_j=jnp.asarray(rng.normal(size=(e, 3, p)), jnp.float32),
                conf_i=jnp.full((e, p), 2.0), conf_j=jnp.full((e, p), 3.0), keep=jnp.ones((n, p)),
                edge_weights=jnp.ones((e,)), ei=jnp.array([0, 0, 1, 1, 2, 2]), ej=jnp.array([1, 2, 0, 2, 0, 1]))
    loss = jax.jit(jax.value_and_grad(lambda R: alignment_loss(**{**args, "R_im": R})))
    assert_all_at(loss.lower(args["R_im"]).as_text(), "HIGHEST", 1)
    with pytest.raises(ValueError, match="precision must be one of"):
        alignment_loss(**args, precision="tf32")
    with pytest.raises(ValueError, match="DenseConfig: precision must be one of"):
        DenseConfig(precision="float32x")
