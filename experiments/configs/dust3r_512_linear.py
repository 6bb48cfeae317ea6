"""DUSt3R 512 linear from DUSt3R 224 (README: --lr 1e-4 --min_lr 1e-6 --warmup_epochs 20 --epochs 100
--batch_size 4 --accum_iter 2 on 8 GPUs; 8 x 10_000 pairs per epoch at 512x{384,336,288,256,160}: 80_000 / 32 =
2500 iterations per epoch; ManyAR_PatchEmbed for the landscape/portrait buckets).

  f3d train experiments/configs/dust3r_512_linear.py --out runs/dust3r_512
"""

from f3d_jax.train.config import DataConfig, TrainConfig
from f3d_jax.train.optim import OptimConfig

CONFIG = TrainConfig(
    name="dust3r_512_linear",
    model=("AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
           "head_type='linear', output_mode='pts3d', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
           "enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12)"),
    criterion="ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)",
    pretrained="DUSt3R_ViTLarge_BaseDecoder_224_linear",
    batch_size=32,
    accum_iter=2,
    iters_per_epoch=2500,
    steps=100 * 2500 // 2,  # optimiser updates: 100 epochs of 2500 micro-batches, 2 per update
    optim=OptimConfig(lr=1e-4, min_lr=1e-6, warmup_epochs=20, epochs=100, weight_decay=0.05),
    data=DataConfig(source="synthetic", size=(384, 512)),
    remat="blocks",  # keep only block inputs for the backward pass (docs/training.md: memory)
    log_every=10,
    save_every=10 * 2500 // 2,
)
