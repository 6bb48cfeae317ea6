"""Parity of `f3d_jax.retrieval` with the official MASt3R retrieval code, in two parts, each against the real thing:

1. the retrieval head (`mast3r.retrieval.model.RetrievalModel.forward_local`: float64 whitening, projector
   Linear-LayerNorm-GELU-Linear, l2norm attention, top-nfeat): the official torch module with random weights is
   saved with `torch.save` (a genuine `{'model', 'args': argparse.Namespace}` checkpoint) and an asmk-style
   codebook pickle; `load_retrieval` reads them and `local_features` runs on the same tokens.
   Needs F3D_REFERENCE_ROOT (the official env: torch + the mast3r checkout).
2. the ASMK score (`mast3r.retrieval.processor.Retriever`'s asmk parameters, faiss IndexFlatL2 on CPU as the
   official fallback class does): clustered synthetic local features (24 images in 4 groups), a codebook drawn from
   them; ours (`local_step` + `ivf_scores`) against asmk's `build_ivf` / `query_ivf`, the codebook read back by
   `read_codebook` from the pickle asmk's own `save_pickle` format.
   Needs ASMK_PYTHON: a python with `asmk` and `faiss-cpu` (e.g. `python -m venv v && v/bin/pip install asmk
   faiss-cpu numpy pyyaml`).

Command:  F3D_REFERENCE_ROOT=/path/to/ref ASMK_PYTHON=/path/to/v/bin/python python experiments/retrieval_parity.py
Last run (CPU): head: max |diff| 2.1e-6 on features of magnitude 4.5 (float32 against float64 whitening);
ASMK (d=128, K=1024 and d=1024, K=4096): max |diff| 2.5e-8, identical ranking of every row.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from experiments._bench_common import reference_python  # noqa: E402

HEAD_WORKER = r'''
import sys, argparse, pickle, numpy as np, torch
root, out = sys.argv[1], sys.argv[2]
sys.path[:0] = [root + "/mast3r", root + "/dust3r", root + "/croco"]
from mast3r.retrieval.model import RetrievalModel
torch.manual_seed(0)
D = 64
class Backbone(torch.nn.Module):  # stands in for the MASt3R encoder: the "image" is already its tokens
    def __init__(self):
        super().__init__(); self.enc_embed_dim = D; self.lin = torch.nn.Linear(1, 1)
    def _encode_image(self, img, true_shape):
        return img, None, None
args = argparse.Namespace(pretrained="MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric", freeze_backbone=1, prewhiten=0,
                          hdims="96_64", residual=False, postwhiten=0, featweights="l2norm", nfeat=20, imsize=512,
                          nclusters=128)
m = RetrievalModel(Backbone(), freeze_backbone=1, prewhiten=0, hdims=[96, 64], residual=False, postwhiten=0, nfeat=20)
with torch.no_grad():
    for w in (m.prewhiten, m.postwhiten):
        w.m.copy_(torch.randn(1, D, dtype=torch.float64))
        w.p.copy_(torch.eye(D, dtype=torch.float64) + 0.1 * torch.randn(D, D, dtype=torch.float64))
    for p in m.projector.parameters():
        p.add_(0.1 * torch.randn_like(p))
m.eval()
torch.save({"model": m.state_dict(), "args": args}, out + "/x_retrieval_trainingfree.pth")
cb = np.random.default_rng(0).standard_normal((128, D)).astype(np.float32)
pickle.dump({"type": "Codebook", "params": {"size": 128}, "state": {"centroids": cb}},
            open(out + "/x_retrieval_codebook.pkl", "wb"))
tokens = torch.randn(3, 50, D)
with torch.no_grad():
    feat, attn, idx = m.forward_local({"img": tokens, "true_shape": None})
np.savez(out + "/head.npz", tokens=tokens.numpy(), feat=feat.numpy(), attn=attn.numpy())
'''

ASMK_WORKER = r'''
import sys, pickle, numpy as np, faiss, asmk.index
from asmk import asmk_method, io_helpers
class FaissCpuL2Index(asmk.index.FaissL2Index):  # mast3r/retrieval/processor.py's class when there is no GPU
    def __init__(self, gpu_id):
        super().__init__(); self.gpu_id = gpu_id
    def _faiss_index_flat(self, dim):
        return faiss.IndexFlatL2(dim)
asmk.index.FaissGpuL2Index = FaissCpuL2Index
out = sys.argv[1]
z = np.load(out + "/feats.npz")
feats, cb = z["feats"], z["cb"]
state = {"type": "Codebook", "params": {"size": cb.shape[0]}, "state": {"centroids": cb}}
io_helpers.save_pickle(out + "/cb.pkl", state)
params = {"index": {"gpu_id": 0}, "train_codebook": {"codebook": {"size": cb.shape[0]}},
          "build_ivf": {"kernel": {"binary": True}, "ivf": {"use_idf": False}, "quantize": {"multiple_assignment": 1},
                        "aggregate": {}},
          "query_ivf": {"quantize": {"multiple_assignment": 5}, "aggregate": {}, "search": {"topk": None},
                        "similarity": {"similarity_threshold": 0.0, "alpha": 3.0}}}
m = asmk_method.ASMKMethod.initialize_untrained(params).train_codebook(None, cache_path=out + "/cb.pkl")
feat = feats.reshape(-1, feats.shape[-1]); ids = np.repeat(np.arange(len(feats)), feats.shape[1])
_, _, ranks, ranked = m.build_ivf(feat, ids).query_ivf(feat, ids)
scores = np.empty_like(ranked)
scores[np.arange(ranked.shape[0])[:, None], ranks] = ranked
np.save(out + "/official.npy", scores)
'''


def check_head(ref_py: str, root: Path, tmp: Path) -> None:
    import jax
    import jax.numpy as jnp

    from f3d_jax.retrieval import load_retrieval
    from f3d_jax.retrieval.head import local_features

    (tmp / "head_worker.py").write_text(HEAD_WORKER)
    subprocess.run([ref_py, str(tmp / "head_worker.py"), str(root), str(tmp)], check=True)
    rm = load_retrieval(tmp / "x_retrieval_trainingfree.pth")
    z = np.load(tmp / "head.npz")
    f, a = local_features(jax.device_put(rm), jnp.asarray(z["tokens"]), rm.n_local(z["tokens"].shape[1]))
    print(f"head: nfeat {rm.nfeat}, backbone {rm.backbone_name}; max |diff| features "
          f"{np.abs(np.asarray(f) - z['feat']).max():.2e} (max |value| {np.abs(z['feat']).max():.2f}), attention "
          f"{np.abs(np.asarray(a) - z['attn']).max():.2e}")


def check_asmk(asmk_py: str, tmp: Path, d: int, k_words: int, seed: int = 0) -> None:
    import jax
    import jax.numpy as jnp

    from f3d_jax.retrieval import read_codebook
    from f3d_jax.retrieval.asmk import ivf_scores, local_step
    from f3d_jax.retrieval.head import RetrievalModel

    rng = np.random.default_rng(seed)
    n, k = 24, 300
    base = [rng.standard_normal((k, d)) for _ in range(4)]
    feats = []
    for i in range(n):  # 4 groups of 6 images sharing 60 % of their features (with noise)
        f = rng.standard_normal((k, d))
        share = rng.random(k) < 0.6
        f[share] = base[i // 6][share] + 0.3 * rng.standard_normal((share.sum(), d))
        feats.append(f.astype(np.float32))
    cb = (np.concatenate(feats)[rng.choice(n * k, k_words, replace=False)]
          + 0.05 * rng.standard_normal((k_words, d))).astype(np.float32)
    np.savez(tmp / "feats.npz", feats=np.stack(feats), cb=cb)
    (tmp / "asmk_worker.py").write_text(ASMK_WORKER)
    subprocess.run([asmk_py, str(tmp / "asmk_worker.py"), str(tmp)], check=True)
    official = np.load(tmp / "official.npy")
    cb_read = read_codebook(tmp / "cb.pkl")
    assert np.array_equal(cb_read, cb)
    # no head: the "tokens" are the local features themselves, all kept
    rm = RetrievalModel(prewhiten=None, projector=(), projector_norms=(), postwhiten=None, codebook=cb_read, nfeat=k)
    dev = jax.device_put(rm)
    cn = jnp.sum(dev.codebook ** 2, -1)
    out = [jax.device_get(local_step(dev, cn, jnp.asarray(np.stack(feats[s:s + 8])), k, 5, 1)) for s in range(0, n, 8)]
    col = lambda j: [r for o in out for r in o[j]]  # noqa: E731
    ours = ivf_scores(col(0), np.concatenate(col(1)), col(2), np.concatenate(col(3)), nbits=32 * -(-d // 32),
                      alpha=3.0, threshold=0.0)
    same_rank = all((np.argsort(-ours[i], kind="stable") == np.argsort(-official[i], kind="stable")).all()
                    for i in range(n))
    print(f"asmk d={d} K={k_words}: official scores in [{official.min():.3f}, {official.max():.3f}]; max |diff| "
          f"{np.abs(ours - official).max():.2e}; identical ranking of every row: {same_rank}")


def main() -> None:
    ref = reference_python()
    asmk_py = os.environ.get("ASMK_PYTHON")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if ref is None:
            print("head: skipped (set F3D_REFERENCE_ROOT to the official env)")
        else:
            check_head(ref[0], ref[1], tmp)
        if not asmk_py:
            print("asmk: skipped (set ASMK_PYTHON to a python with asmk and faiss-cpu)")
        else:
            for d, kw in ((128, 1024), (1024, 4096)):
                check_asmk(asmk_py, tmp, d, kw)


if __name__ == "__main__":
    main()
