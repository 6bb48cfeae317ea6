"""MASt3R ViT-L catmlp+dpt metric fine-tune from DUSt3R 512 DPT, full size (MASt3R README "Our Hyperparameters":
--lr 1e-4 --min_lr 1e-6 --warmup_epochs 8 --epochs 50 --batch_size 4 --accum_iter 2 on 8 GPUs; 698_820 pairs per
epoch summed over its 15 datasets: 21_838 iterations of 32 pairs).

  f3d train experiments/configs/mast3r_finetune.py --out runs/mast3r --mesh-fsdp 8
"""

from f3d_jax.train.config import DataConfig, TrainConfig
from f3d_jax.train.optim import OptimConfig

ITERS = 698_820 // 32

CONFIG = TrainConfig(
    name="mast3r_finetune",
    model=("AsymmetricMASt3R(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
           "head_type='catmlp+dpt', output_mode='pts3d+desc24', depth_mode=('exp', -inf, inf), "
           "conf_mode=('exp', 1, inf), enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, "
           "dec_depth=12, dec_num_heads=12, two_confs=True, desc_conf_mode=('exp', 0, inf))"),
    criterion=("ConfLoss(Regr3D(L21, norm_mode='?avg_dis'), alpha=0.2, loss_in_log=False) + "
               "0.075*ConfMatchingLoss(MatchingLoss(InfoNCE(mode='proper', temperature=0.05), negatives_padding=0, "
               "blocksize=8192), alpha=10.0, confmode='mean')"),
    pretrained="DUSt3R_ViTLarge_BaseDecoder_512_dpt",
    batch_size=32,
    accum_iter=2,
    iters_per_epoch=ITERS,
    steps=50 * ITERS // 2,
    optim=OptimConfig(lr=1e-4, min_lr=1e-6, warmup_epochs=8, epochs=50, weight_decay=0.05),
    data=DataConfig(source="synthetic", size=(384, 512)),
    remat="blocks",  # keep only block inputs for the backward pass (docs/training.md: memory)
    log_every=10,
    save_every=ITERS // 2,
)
