"""Training: losses and criteria (`f3d_jax.train.losses`), stereo/flow metrics
(`f3d_jax.train.stereoflow_metrics`), and the data pipeline, train loop, sharding and checkpoints.

Nothing is imported here, so `import f3d_jax.train` stays cheap: import the submodule you need
(`from f3d_jax.train.losses import build_criterion`).
"""
