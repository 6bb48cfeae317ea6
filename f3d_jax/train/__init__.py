"""Training: losses, data pipelines, the jitted train step, optimiser, sharding, checkpoints (issue 15).

Modules: `losses` (criteria), `data` (grain pipelines), `optim` (AdamW with the official parameter groups and
schedule), `sharding` (2-D ('data', 'fsdp') mesh and path rules), `loop` (train state, step, loop),
`checkpoint` (orbax manager, partial init), `config` (`TrainConfig`, config files), `metrics` (JSONL and
TensorBoard event files), `trainer` (`train(config, out_dir)`, behind `f3d train`), `toy_data` (synthetic pairs
for the tiny configs). Import the submodules directly (`from f3d_jax.train.loop import make_train_step`).
"""
