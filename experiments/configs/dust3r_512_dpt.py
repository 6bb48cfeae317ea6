"""DUSt3R 512 DPT from DUSt3R 512 linear (README: --lr 1e-4 --min_lr 1e-6 --warmup_epochs 15 --epochs 90
--batch_size 4 --accum_iter 2 on 8 GPUs; 80_000 pairs per epoch: 2500 iterations). The linear heads of the
checkpoint are "unexpected", the DPT heads "missing" (new), the rest loads.

  f3d train experiments/configs/dust3r_512_dpt.py --out runs/dust3r_512dpt --mesh-fsdp 8
"""

from f3d_jax.train.config import DataConfig, TrainConfig
from f3d_jax.train.optim import OptimConfig

CONFIG = TrainConfig(
    name="dust3r_512_dpt",
    model=("AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
           "head_type='dpt', output_mode='pts3d', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
           "enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12)"),
    criterion="ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)",
    pretrained="DUSt3R_ViTLarge_BaseDecoder_512_linear",
    batch_size=32,
    accum_iter=2,
    iters_per_epoch=2500,
    steps=90 * 2500 // 2,
    optim=OptimConfig(lr=1e-4, min_lr=1e-6, warmup_epochs=15, epochs=90, weight_decay=0.05),
    data=DataConfig(source="synthetic", size=(384, 512)),
    remat="blocks",  # keep only block inputs for the backward pass (docs/training.md: memory)
    log_every=10,
    save_every=5 * 2500 // 2,
)
