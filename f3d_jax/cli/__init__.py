"""The `f3d` command line (sits on top of everything; nothing in the package imports it).

`main` (the console script: parsing with tyro, one-line errors), `options` (one frozen config dataclass per
subcommand; `AlignOptions` mirrors `f3d_jax.align.DenseConfig`), `run` (what each subcommand does), `summary`
(summary.png and the pose comparison of `f3d demo`), `timing` (seconds per stage, compile time apart).
"""
