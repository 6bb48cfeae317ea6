"""DUSt3R 224 linear from CroCo v2 ViT-L (the DUSt3R README's "Our Hyperparameters", first command):
--lr 1e-4 --min_lr 1e-6 --warmup_epochs 10 --epochs 100 --batch_size 16 --accum_iter 1 on 8 GPUs; 8 datasets of
100_000 pairs per epoch (800_000 / 128 = 6250 iterations per epoch); --pretrained CroCo_V2_ViTLarge_BaseDecoder
(a CroCo checkpoint: dec_blocks2 is initialised from dec_blocks, the heads are new).

  f3d train experiments/configs/dust3r_224_linear.py --out runs/dust3r_224
"""

from f3d_jax.train.config import DataConfig, TrainConfig
from f3d_jax.train.optim import OptimConfig

CONFIG = TrainConfig(
    name="dust3r_224_linear",
    model=("AsymmetricCroCo3DStereo(pos_embed='RoPE100', img_size=(224, 224), head_type='linear', output_mode='pts3d', "
           "depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), enc_embed_dim=1024, enc_depth=24, "
           "enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12)"),
    criterion="ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)",
    pretrained="CroCo_V2_ViTLarge_BaseDecoder",
    batch_size=128,
    accum_iter=1,
    iters_per_epoch=6250,
    steps=100 * 6250,
    optim=OptimConfig(lr=1e-4, min_lr=1e-6, warmup_epochs=10, epochs=100, weight_decay=0.05),
    data=DataConfig(source="synthetic", size=(224, 224)),
    remat="blocks",  # keep only block inputs for the backward pass (docs/training.md: memory)
    log_every=20,
    save_every=5 * 6250,
)
