"""Tiny DUSt3R (linear head) on synthetic pairs with the official criterion: a CPU smoke run of the stereo step
and of the grain data pipeline (about 40 s on a 2-core CPU; the loss drops from 5.6, mean of the first 5 updates,
to 1.3, mean of the last 10).

  f3d train experiments/configs/tiny_dust3r.py --out runs/tiny_dust3r
"""

from f3d_jax.train.config import DataConfig, TrainConfig
from f3d_jax.train.optim import OptimConfig

CONFIG = TrainConfig(
    name="tiny_dust3r",
    model=("AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(64, 64), "
           "patch_size=8, head_type='linear', output_mode='pts3d', depth_mode=('exp', -inf, inf), "
           "conf_mode=('exp', 1, inf), enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32, "
           "dec_depth=1, dec_num_heads=2)"),
    criterion="ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)",
    steps=60,
    batch_size=8,
    iters_per_epoch=2,
    optim=OptimConfig(lr=3e-3, min_lr=1e-4, warmup_epochs=2, epochs=30),
    # the grain pipeline of f3d_jax.train.data: 16 synthetic pairs rendered at 64x48, official crop + colour jitter
    data=DataConfig(source="grain-synthetic", num_scenes=16, size=(48, 64), resolutions=((64, 48),), aug_crop=8),
    mesh_data=1,
    log_every=10,
    save_every=30,
)
