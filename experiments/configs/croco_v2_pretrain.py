"""CroCo v2 ViT-L / Base decoder pretraining, as the CroCo README's command:

  torchrun --nproc_per_node=8 pretrain.py --model "CroCoNet(enc_embed_dim=1024, enc_depth=24, enc_num_heads=16,
    dec_embed_dim=768, dec_num_heads=12, dec_depth=12, pos_embed='RoPE100')" --warmup_epochs 12 --max_epoch 125
    --epochs 250 --amp 0 (batch 64 per GPU, blr 1.5e-4: lr = 1.5e-4 * 512 / 256 = 3e-4, weight decay 0.05)

Here: global batch 512 (64 x 8 devices), the schedule over 250 epochs, training stopped at 125 (`steps`).
Set ITERS_PER_EPOCH to len(your pair dataset) // 512 (the official loader's length). Until the on-disk pair
pipeline (f3d_jax.train.data) is wired in, the data source is the synthetic one.

  f3d train experiments/configs/croco_v2_pretrain.py --out runs/croco_v2 --mesh-fsdp 8
"""

from f3d_jax.train.config import DataConfig, TrainConfig
from f3d_jax.train.optim import OptimConfig

ITERS_PER_EPOCH = 10_000

CONFIG = TrainConfig(
    name="croco_v2_pretrain",
    model=("CroCoNet(enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_num_heads=12, "
           "dec_depth=12, pos_embed='RoPE100')"),
    batch_size=512,
    accum_iter=1,
    iters_per_epoch=ITERS_PER_EPOCH,
    steps=125 * ITERS_PER_EPOCH,  # --max_epoch 125
    optim=OptimConfig(lr=None, blr=1.5e-4, min_lr=0.0, warmup_epochs=12, epochs=250, weight_decay=0.05),
    norm_pix_loss=True,
    data=DataConfig(source="synthetic", size=(224, 224)),
    compute_dtype="float32",  # --amp 0; "bfloat16" for speed (fp32 master weights)
    remat="blocks",  # keep only block inputs for the backward pass (docs/training.md: memory)
    log_every=20,
    save_every=ITERS_PER_EPOCH,
    keep=3,
)
