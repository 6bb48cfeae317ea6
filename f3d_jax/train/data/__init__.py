"""Training data (issue 15): the on-disk pair format, grain sources, the official DUSt3R crop/resize, resolution
buckets, a synthetic source, deterministic resumable iteration.

Quick start (no download: pairs rendered by `f3d_jax.eval.synthetic`):

    from f3d_jax.train.data import DataConfig, SyntheticPairs, make_pair_dataset, iterate
    ds = make_pair_dataset(SyntheticPairs(64, size=(96, 72)), DataConfig(batch_size=4, resolutions=((64, 48),)))
    it = iterate(ds)
    batch = next(it)                   # {'view1': {'img': (4, 48, 64, 3), 'pts3d': ..., ...}, 'view2': {...}}
    state = it.get_state()             # JSON-serialisable; iterate(ds, state) resumes exactly

Modules: `crop` (official cropping), `views` (raw view -> official view dict), `pairs_format` (on-disk format,
`write_pairs_dataset`, `PairsSource`), `synthetic_source` (`SyntheticPairs`, `export_synthetic_pairs`),
`pipeline` (`DataConfig`, `make_pair_dataset`, `PairIterator`, `iterate`, `make_batch_symmetric`).
"""

from f3d_jax.train.data.crop import (bbox_from_intrinsics_in_out, camera_matrix_of_crop, crop_image_depthmap,
                                     crop_resize_if_necessary, rescale_image_depthmap)
from f3d_jax.train.data.pairs_format import INDEX_NAME, PairsSource, write_pairs_dataset
from f3d_jax.train.data.pipeline import (TRAIN_RESOLUTIONS_512, BatchMaker, DataConfig, PairIterator,
                                         batch_resolution, croco_transforms, iterate, make_batch_symmetric,
                                         make_pair_dataset)
from f3d_jax.train.data.synthetic_source import SyntheticPairs, export_synthetic_pairs, render_synthetic_views
from f3d_jax.train.data.views import (CorruptSample, color_jitter, depthmap_to_absolute_camera_coordinates,
                                      img_norm, imagenet_norm, make_view)

__all__ = [
    "INDEX_NAME", "TRAIN_RESOLUTIONS_512", "BatchMaker", "CorruptSample", "DataConfig", "PairIterator", "PairsSource",
    "SyntheticPairs", "batch_resolution", "bbox_from_intrinsics_in_out", "camera_matrix_of_crop", "color_jitter",
    "croco_transforms", "crop_image_depthmap", "crop_resize_if_necessary", "depthmap_to_absolute_camera_coordinates",
    "export_synthetic_pairs", "img_norm", "imagenet_norm", "iterate", "make_batch_symmetric", "make_pair_dataset",
    "make_view", "render_synthetic_views", "rescale_image_depthmap", "write_pairs_dataset",
]
