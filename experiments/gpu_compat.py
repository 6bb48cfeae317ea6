"""Run the shared GPU runner (`../shared/tools/gpu/gpu_bench.py`, laid out as `.gpu/gpu_bench.py` by its
prepare.sh) against today's package, without editing it.

The runner was written against internals that have since moved: `f3d_jax.infer.engine._encode_step(config,
impl, mesh)` / `_decode_step(config, impl, mesh, hw1, hw2, pairs_per_step)` (factories of jitted steps, used
for XLA's flop count; now the module-level jitted `f3d_jax.infer.steps.encode_step` / `decode_step` with
static keywords) and `f3d_jax.align.init.init_mst` (now `f3d_jax.align.initialise.initialise_mst`). This
script installs thin adapters with the old signatures into the imported modules (in this process only: the
package keeps no private aliases), then runs the runner as `__main__` with the remaining arguments.

Usage (from the checkout root; the runner finds the project as the current directory):
    python experiments/gpu_compat.py .gpu/gpu_bench.py [--quick] [--sections ...] [--budget S]
`experiments/run_gpu.sh` is the one device command (see there).
"""

from __future__ import annotations

import runpy
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class _Step:
    """What the runner does with a step: `.lower(*args)` -> a `jax.stages.Lowered` (for `cost_analysis`)."""

    def __init__(self, jitted, **static):
        self._jitted, self._static = jitted, static

    def lower(self, *args):
        return self._jitted.lower(*args, **self._static)

    def __call__(self, *args):
        return self._jitted(*args, **self._static)


def install() -> None:
    """Put the old names the runner calls into the imported package modules."""
    sys.path.insert(0, str(REPO))
    import f3d_jax.align
    import f3d_jax.infer.engine as engine
    from f3d_jax.align.initialise import initialise_mst
    from f3d_jax.infer.steps import decode_step, encode_step

    def _encode_step(config, impl, mesh, precision=None):
        return _Step(encode_step, config=config, impl=impl, mesh=mesh, precision=precision)

    def _decode_step(config, impl, mesh, hw1, hw2, pairs_per_step=None, precision=None):
        return _Step(decode_step, config=config, impl=impl, mesh=mesh, hw1=tuple(hw1), hw2=tuple(hw2),
                     pairs_per_step=pairs_per_step, precision=precision)

    engine._encode_step = _encode_step
    engine._decode_step = _decode_step
    init = types.ModuleType("f3d_jax.align.init", "adapter: init_mst = f3d_jax.align.initialise.initialise_mst")
    init.init_mst = initialise_mst
    sys.modules["f3d_jax.align.init"] = init
    f3d_jax.align.init = init


def main() -> None:
    if len(sys.argv) < 2 or not sys.argv[1].endswith(".py"):
        raise SystemExit("usage: python experiments/gpu_compat.py PATH/TO/gpu_bench.py [runner arguments]")
    runner = Path(sys.argv[1]).resolve()
    if not runner.is_file():
        raise SystemExit(f"gpu_compat: runner not found: {runner} (lay it out with ../shared/tools/gpu/prepare.sh)")
    install()
    sys.argv = [str(runner), *sys.argv[2:]]
    runpy.run_path(str(runner), run_name="__main__")


if __name__ == "__main__":
    main()
