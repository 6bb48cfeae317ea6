"""`f3d`: the command-line entry point (console script declared in pyproject.toml).

Subcommands today: `checkpoints` (the released checkpoints and their licences) and `convert`
(an official `.pth` / Hugging Face folder or repo id into an f3d-jax orbax checkpoint). Errors in
the user's input (a bad checkpoint, an existing destination) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from f3d_jax import __version__

_DTYPES = ("float32", "bfloat16", "float16")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="f3d", description="CroCo, DUSt3R and MASt3R in JAX.")
    p.add_argument("--version", action="version", version=f"f3d-jax {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    ck = sub.add_parser("checkpoints", help="list the released checkpoints (name, Hugging Face repo, licence)")
    ck.add_argument("--family", choices=("croco", "dust3r", "mast3r", "retrieval"), default=None)

    cv = sub.add_parser("convert", help="convert an official checkpoint into an f3d-jax orbax checkpoint")
    cv.add_argument("src", help="a .pth file, a Hugging Face folder or repo id, or a released checkpoint name")
    cv.add_argument("dst", help="the orbax checkpoint directory to write")
    cv.add_argument("--dtype", choices=_DTYPES, default=None, help="cast floating params (default: keep)")
    cv.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at DST")
    return p


def _checkpoints(family: str | None) -> int:
    from f3d_jax.weights.registry import get_checkpoint_info, list_checkpoints

    for name in list_checkpoints(family):
        info = get_checkpoint_info(name)
        print(f"{name}\t{info.family}\t{info.hf_repo or '-'}\t{info.license}")
    return 0


def _convert(src: str, dst: str, dtype: str | None, overwrite: bool) -> int:
    from f3d_jax.weights.loading import load_model, save_model

    model = load_model(src, dtype=dtype)
    out = save_model(model, dst, overwrite=overwrite)
    print(f"wrote {out} ({model.config.official_class})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `f3d` with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    from f3d_jax.weights.errors import CheckpointError

    try:
        if args.command == "checkpoints":
            return _checkpoints(args.family)
        return _convert(args.src, args.dst, args.dtype, args.overwrite)
    except (CheckpointError, FileExistsError) as e:
        print(f"f3d {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
