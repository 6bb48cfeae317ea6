"""Training losses of CroCo, DUSt3R, MASt3R and CroCo-Stereo/Flow, as pure jit-able JAX functions (NHWC).

* `masked_mse(pred, target, mask, norm_pix_loss=True)`: CroCo pretraining (`MaskedMSE`).
* `build_criterion(text)`: the official criterion strings (DUSt3R, MASt3R, stereo/flow), parsed with `ast`.
* the building blocks: `Regr3D`, `ConfLoss`, `L21` (point maps), `InfoNCE`, `APLoss`, `MatchingLoss`,
  `ConfMatchingLoss` (matching), `L1Loss`, `LaplacianLoss`, `LaplacianLossBounded`, `LaplacianLossBounded2`
  (stereo/flow), and `sample_correspondences` (GT correspondences from a PRNG key).
"""

from f3d_jax.train.losses.correspondences import reproject_indices, sample_correspondences
from f3d_jax.train.losses.croco import masked_mse
from f3d_jax.train.losses.matching import APLoss, ConfMatchingLoss, InfoNCE, MatchingLoss
from f3d_jax.train.losses.multiloss import Sum, Term
from f3d_jax.train.losses.parse import (NAMESPACES, TEST_CRITERIA, TRAIN_CRITERIA, CriterionError, build_criterion,
                                        infer_namespace)
from f3d_jax.train.losses.pointmaps import L21, ConfLoss, L21Loss, Regr3D, normalize_pointcloud
from f3d_jax.train.losses.stereoflow import L1Loss, LaplacianLoss, LaplacianLossBounded, LaplacianLossBounded2

__all__ = [
    "APLoss", "ConfLoss", "ConfMatchingLoss", "CriterionError", "InfoNCE", "L1Loss", "L21", "L21Loss",
    "LaplacianLoss", "LaplacianLossBounded", "LaplacianLossBounded2", "MatchingLoss", "NAMESPACES", "Regr3D",
    "Sum", "TEST_CRITERIA", "TRAIN_CRITERIA", "Term", "build_criterion", "infer_namespace", "masked_mse", "normalize_pointcloud",
    "reproject_indices", "sample_correspondences",
]
