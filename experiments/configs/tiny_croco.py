"""Tiny CroCo v2 pretraining on synthetic pairs: trains on a CPU in about a minute; the masked-patch loss drops
from 1.17 (mean of the first 5 updates) to 0.875 (last 10), below the ~1.0 of predicting each patch's mean.

  f3d train experiments/configs/tiny_croco.py --out runs/tiny_croco
"""

from f3d_jax.train.config import DataConfig, TrainConfig
from f3d_jax.train.optim import OptimConfig

CONFIG = TrainConfig(
    name="tiny_croco",
    model=("CroCoNet(img_size=32, patch_size=8, mask_ratio=0.75, enc_embed_dim=32, enc_depth=1, enc_num_heads=2, "
           "dec_embed_dim=32, dec_depth=1, dec_num_heads=2, pos_embed='RoPE100')"),
    steps=60,
    batch_size=8,
    iters_per_epoch=2,  # 16 pairs / 8
    optim=OptimConfig(lr=3e-3, min_lr=1e-4, warmup_epochs=2, epochs=30, weight_decay=0.05),
    data=DataConfig(source="synthetic", num_scenes=16, seed=0),
    mesh_data=1,
    log_every=10,
    save_every=30,
)
