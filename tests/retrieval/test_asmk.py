"""MASt3R's retrieval model (ASMK over the encoder's local features) on a tiny checkpoint of the official structure,
against a numpy transcription of the official code (`RetrievalModel.forward_local`, asmk's `Codebook.quantize`,
`ASMKKernel.aggregate_image` / `similarity`, `IVF.search` with the `Retriever` parameters), plus loading errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from f3d_jax.retrieval import RetrievalModel, load_retrieval, read_codebook, similarity_matrix
from f3d_jax.retrieval.asmk import ivf_scores
from f3d_jax.weights.errors import CheckpointError

from .fake_checkpoint import write_codebook, write_pth
from .tiny import encoder_tokens, tiny_images, tiny_model

D = 32  # the tiny encoder's width
K = 32  # visual words
NFEAT = 12  # of the 16 tokens of a 64 x 64 image
ARGS = dict(pretrained="tiny", freeze_backbone=1, prewhiten=0, hdims="48_32", residual=False, postwhiten=0,
            featweights="l2norm", nfeat=NFEAT, imsize=512, nclusters=K)


def _erf(x):
    from math import erf
    return np.vectorize(erf)(x)


def head_reference(state: dict, tokens: np.ndarray, nfeat: int = NFEAT) -> np.ndarray:
    """`RetrievalModel.forward_local` in float64 numpy: (N, D) tokens -> (nfeat, D) local features."""
    x = (tokens - state["prewhiten.m"]) @ state["prewhiten.p"]
    y = x @ state["projector.0.weight"].T.astype(np.float64) + state["projector.0.bias"]
    mu, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
    y = (y - mu) / np.sqrt(var + 1e-5) * state["projector.1.weight"] + state["projector.1.bias"]
    y = 0.5 * y * (1 + _erf(y / np.sqrt(2)))  # exact GELU
    y = y @ state["projector.3.weight"].T.astype(np.float64) + state["projector.3.bias"]
    attn = np.linalg.norm(y, axis=-1)
    y = (y - state["postwhiten.m"]) @ state["postwhiten.p"]
    return y[np.argsort(-attn, kind="stable")[:nfeat]]


def asmk_reference(feats: list[np.ndarray], centroids: np.ndarray, alpha: float = 3.0, thr: float = 0.0) -> np.ndarray:
    """The official asmk steps as plain Python loops (query multiple assignment 5, database 1, binary, no idf)."""
    c = centroids.astype(np.float64)

    def quantize(x, ma):
        dist = ((x[:, None, :] - c[None]) ** 2).sum(-1)
        return np.argsort(dist, axis=1, kind="stable")[:, :ma]

    def aggregate(x, word_ids):  # ASMKKernel.aggregate_image, binary: bits of the residual sums
        words = np.unique(word_ids)
        return np.stack([(x[(word_ids == w).any(axis=1)] - c[w]).sum(0) > 0 for w in words]), words

    nbits = 32 * -(-c.shape[1] // 32)
    db = [aggregate(x, quantize(x, 1)) for x in feats]
    ivf: dict[int, list] = {}
    for img, (bits, words) in enumerate(db):
        for b, w in zip(bits, words):
            ivf.setdefault(int(w), []).append((img, b))
    out = np.zeros((len(feats), len(feats)))
    for q, x in enumerate(feats):
        bits, words = aggregate(x, quantize(x, 5))
        for b, w in zip(bits, words):
            for img, bd in ivf.get(int(w), []):
                s = 1 - 2 * np.count_nonzero(b != bd) / nbits
                if s >= thr:
                    out[q, img] += s ** alpha / np.sqrt(len(db[img][1]))
        out[q] /= np.sqrt(len(words))
    return out


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def case(model, tmp_path_factory):
    """A tiny retrieval checkpoint whose whitening and codebook are learnt (as the official PCA whitening and
    k-means, crudely) on 3 training images; 5 test images + a slightly perturbed copy of the first."""
    rng = np.random.default_rng(0)
    views = tiny_images([(64, 64)] * 8, seed=3)
    train, test = views[5:], views[:5]
    test.append(dict(test[0], img=np.clip(test[0]["img"] + 0.05 * rng.standard_normal(test[0]["img"].shape), -1, 1)
                     .astype(np.float32)))
    tok_train = np.concatenate(encoder_tokens(model, train))

    def pca_whitening(x):  # mast3r pcawhitenlearn_shrinkage
        m = x.mean(0, keepdims=True)
        ev, evec = np.linalg.eigh((x - m).T @ (x - m) / len(x))
        return m, evec / np.sqrt(np.clip(ev, 1e-6, None))

    state = {}
    state["prewhiten.m"], state["prewhiten.p"] = pca_whitening(tok_train)
    state["projector.0.weight"] = (rng.standard_normal((48, D)) / np.sqrt(D)).astype(np.float32)
    state["projector.0.bias"] = (0.1 * rng.standard_normal(48)).astype(np.float32)
    state["projector.1.weight"] = (1 + 0.1 * rng.standard_normal(48)).astype(np.float32)
    state["projector.1.bias"] = (0.1 * rng.standard_normal(48)).astype(np.float32)
    state["projector.3.weight"] = (rng.standard_normal((D, 48)) / np.sqrt(48)).astype(np.float32)
    state["projector.3.bias"] = (0.1 * rng.standard_normal(D)).astype(np.float32)
    state["postwhiten.m"], state["postwhiten.p"] = np.zeros((1, D)), np.eye(D)
    proj = np.concatenate([head_reference(state, t, 16) for t in encoder_tokens(model, train)])
    state["postwhiten.m"], state["postwhiten.p"] = pca_whitening(proj)
    feats_train = (proj - state["postwhiten.m"]) @ state["postwhiten.p"]
    centroids = (feats_train[rng.choice(len(feats_train), K, replace=False)]
                 + 0.1 * rng.standard_normal((K, D))).astype(np.float32)
    folder = tmp_path_factory.mktemp("retrieval")
    ckpt = write_pth(folder / "tiny_retrieval_trainingfree.pth", state, ARGS)
    write_codebook(folder / "tiny_retrieval_codebook.pkl", centroids)
    return dict(ckpt=ckpt, state=state, centroids=centroids, views=test, folder=folder)


def test_asmk_matches_official_transcription_and_ranks(model, case):
    rm = load_retrieval(case["ckpt"])
    assert isinstance(rm, RetrievalModel) and (rm.in_dim, rm.dim, rm.nfeat, rm.backbone_name) == (D, D, NFEAT, "tiny")
    assert [w.shape for w, _ in rm.projector] == [(48, D), (D, 48)] and len(rm.projector_norms) == 1
    np.testing.assert_array_equal(rm.codebook, case["centroids"])
    views = case["views"]
    s = similarity_matrix(model, views, retrieval=rm, symmetrize=False, batch_size=4)  # 4 + (2 + 2 padding)
    assert s.shape == (6, 6) and s.dtype == np.float32
    feats = [head_reference(case["state"], t) for t in encoder_tokens(model, views)]
    ref = asmk_reference(feats, case["centroids"])
    np.testing.assert_allclose(s, ref, atol=2e-6)
    # sensible ranking: each image is its own best match, the perturbed copy the original's next best
    assert np.all(np.argmax(s[:5, :5], axis=1) == np.arange(5))
    assert s[0, 5] > 3 * s[0, 1:5].max() and s[5, 0] > 3 * s[5, 1:5].max()
    sym = similarity_matrix(model, views, retrieval=rm, batch_size=4)
    np.testing.assert_array_equal(sym, sym.T)
    np.testing.assert_allclose(sym, (s + s.T) / 2, atol=1e-7)


def test_ivf_scores_against_official_loops():
    """The inverted-file search alone on random aggregations of unequal lengths (65 dims: a padded bit word)."""
    rng = np.random.default_rng(2)
    n, u, words, dim = 4, 7, 9, 65
    nw = -(-dim // 32)
    ids_q, ids_d, bq, bd, bits_q, bits_d = [], [], [], [], [], []
    for side, ids, packed, raw in (("q", ids_q, bq, bits_q), ("d", ids_d, bd, bits_d)):
        for i in range(n):
            cnt = int(rng.integers(1, u + 1))
            w = np.full(u, -1, np.int32)
            w[:cnt] = np.sort(rng.choice(words, cnt, replace=False))
            b = rng.random((u, dim)) > 0.5
            b[cnt:] = False
            ids.append(w)
            raw.append(b)
            padded = np.pad(b, ((0, 0), (0, nw * 32 - dim)))
            packed.append(np.packbits(padded, axis=1, bitorder="big").view(">u4").astype(np.uint32))
    got = ivf_scores(ids_q, np.concatenate(bq), ids_d, np.concatenate(bd), nbits=nw * 32, alpha=3.0, threshold=0.0)
    ref = np.zeros((n, n))
    for q in range(n):
        cq = int((ids_q[q] >= 0).sum())
        for d in range(n):
            cd = int((ids_d[d] >= 0).sum())
            for a in range(cq):
                for b in range(cd):
                    if ids_q[q][a] == ids_d[d][b]:
                        s = 1 - 2 * np.count_nonzero(bits_q[q][a] != bits_d[d][b]) / (nw * 32)
                        if s >= 0:
                            ref[q, d] += s ** 3 / np.sqrt(cd)
        ref[q] /= np.sqrt(cq)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert np.count_nonzero(ref) > n  # words do collide: the test exercises the kernel


def test_codebook_formats(tmp_path):
    """The asmk pickle (protocols 2-5), a bare pickled array (C or Fortran order) and a .npy all read the same."""
    c = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    for proto in (2, 3, 4, 5):
        np.testing.assert_array_equal(read_codebook(write_codebook(tmp_path / f"c{proto}.pkl", c, protocol=proto)), c)
        (tmp_path / f"b{proto}.pkl").write_bytes(pickle.dumps(np.asfortranarray(c), protocol=proto))
        np.testing.assert_array_equal(read_codebook(tmp_path / f"b{proto}.pkl"), c)
    np.save(tmp_path / "c.npy", c)
    np.testing.assert_array_equal(read_codebook(tmp_path / "c.npy"), c)
    k2 = write_codebook(tmp_path / "k.pkl", np.zeros((2048, 2), np.float32), size="2k")
    assert read_codebook(k2).shape == (2048, 2)


def _refused(fn, match):
    with pytest.raises(CheckpointError, match=match) as e:
        fn()
    assert len(str(e.value)) < 400
    return e.value


def test_bad_files(model, case, tmp_path):
    ckpt, state = case["ckpt"], case["state"]
    # the codebook: missing (named, with the official location), hostile, malformed, wrong width / size
    lone = tmp_path / "lone_retrieval_trainingfree.pth"
    lone.write_bytes(ckpt.read_bytes())
    err = _refused(lambda: load_retrieval(lone), "retrieval codebook is missing")
    assert err.source == str(tmp_path / "lone_retrieval_codebook.pkl")
    _refused(lambda: load_retrieval(ckpt, tmp_path / "nope.pkl"), "nope.pkl: the retrieval codebook is missing")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(print))
    _refused(lambda: load_retrieval(ckpt, tmp_path / "evil.pkl"), "evil.pkl: refusing to load.*builtins.print")
    (tmp_path / "text.pkl").write_text("centroids")
    _refused(lambda: read_codebook(tmp_path / "text.pkl"), "text.pkl: not an ASMK codebook")
    (tmp_path / "cut.pkl").write_bytes(write_codebook(tmp_path / "x.pkl", case["centroids"]).read_bytes()[:300])
    _refused(lambda: read_codebook(tmp_path / "cut.pkl"), "cut.pkl: codebook pickle: .*truncated")
    (tmp_path / "dict.pkl").write_bytes(pickle.dumps({"centroids": case["centroids"]}))
    _refused(lambda: read_codebook(tmp_path / "dict.pkl"), "dict.pkl: not an ASMK codebook.*keys \\['centroids'\\]")
    narrow = write_codebook(tmp_path / "narrow.pkl", case["centroids"][:, :16])
    _refused(lambda: load_retrieval(ckpt, narrow), "narrow.pkl: the codebook's centroids are 16-dim, but the retrieval "
                                                   "head tiny_retrieval_trainingfree.pth gives 32-dim")
    few = write_codebook(tmp_path / "few.pkl", case["centroids"][:8])
    _refused(lambda: load_retrieval(ckpt, few), "few.pkl: the codebook holds 8 centroids, but .* nclusters=32")
    _refused(lambda: read_codebook(write_codebook(tmp_path / "lies.pkl", case["centroids"], size="64k")),
             "params say size '64k' but it holds 32")
    cb = case["folder"] / "tiny_retrieval_codebook.pkl"

    # the checkpoint: wrong shapes, foreign keys, a broken projector chain, unsupported args
    def variant(name, args=ARGS, **changes):
        sd = {k: v for k, v in {**state, **changes}.items() if v is not None}
        return write_pth(tmp_path / f"{name}.pth", sd, args)

    _refused(lambda: load_retrieval(variant("sq", **{"prewhiten.p": state["prewhiten.p"][:, :31]}), cb),
             r"sq.pth: 'prewhiten.p' must be a square \(D, D\) matrix, got shape \(32, 31\)")
    _refused(lambda: load_retrieval(variant("lin", **{"projector.0.weight": np.zeros((48, 31), np.float32)}), cb),
             r"lin.pth: 'projector.0.weight' has shape \(48, 31\), expected \(48, 32\)")
    _refused(lambda: load_retrieval(variant("post", **{"postwhiten.m": np.zeros((1, 31))}), cb),
             r"post.pth: 'postwhiten.m' has shape \(1, 31\), expected \(1, 32\)")
    _refused(lambda: load_retrieval(variant("half", **{"postwhiten.m": None}), cb), "'postwhiten.p' without its pair")
    _refused(lambda: load_retrieval(variant("key", **{"head.weight": np.zeros(3, np.float32)}), cb),
             r"key.pth: not a MASt3R retrieval head: unexpected key\(s\) \['head.weight'\]")
    _refused(lambda: load_retrieval(variant("chain", **{"projector.1.weight": None, "projector.1.bias": None}), cb),
             "chain.pth: projector layer 3 does not fit")
    _refused(lambda: load_retrieval(variant("hd", args={**ARGS, "hdims": "64_32"}), cb),
             "hd.pth: args.hdims='64_32' but the projector's widths are \\[48, 32\\]")
    _refused(lambda: load_retrieval(variant("nk", args={**ARGS, "nclusters": "1k"}), cb),
             "tiny_retrieval_codebook.pkl: the codebook holds 32 centroids, but nk.pth was built with nclusters=1024")
    _refused(lambda: load_retrieval(variant("fw", args={**ARGS, "featweights": "softmax"}), cb),
             "fw.pth: featweights='softmax' is not supported")
    _refused(lambda: load_retrieval(tmp_path / "none.pth", cb), "none.pth: no such file")
    # a head for another encoder width; not a RetrievalModel
    other = {"prewhiten.m": np.zeros((1, 24)), "prewhiten.p": np.eye(24)}
    rm24 = load_retrieval(write_pth(tmp_path / "w24_x.pth", other, {**ARGS, "hdims": ""}),
                          write_codebook(tmp_path / "w24.pkl", np.zeros((K, 24), np.float32)))
    views = case["views"]
    with pytest.raises(ValueError, match="w24_x.pth expects 24-dim encoder features, but the model's encoder "
                                         "gives 32 .*: tiny"):
        similarity_matrix(model, views, retrieval=rm24)
    with pytest.raises(TypeError, match="retrieval must be None or a RetrievalModel"):
        similarity_matrix(model, views, retrieval="asmk")
