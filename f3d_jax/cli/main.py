"""`f3d`: the command-line entry point (console script declared in pyproject.toml), built with tyro over the
config dataclasses of `f3d_jax.cli.options`; `f3d_jax.cli.run` does the work.

  f3d demo                                    offline: synthetic room, real alignment, every export
  f3d reconstruct IMAGES... --model SRC --out DIR [--align sparse --graph retrieval]   (MASt3R-SfM)
  f3d match IMG1 IMG2 --model MAST3R --out matches.png
  f3d export RESULT --format colmap ply ...   f3d view DIR
  f3d convert SRC DST                         f3d checkpoints

`main(argv)` returns the exit status: 0, 2 for bad input (a missing model, an unreadable image, a bad option
value: one line `f3d <command>: error: ...` on stderr, no traceback), 1 for a failed write (unwritable folder,
full disk; nothing is left half-written), 130 when interrupted. `--help` and option-parsing errors exit through
`SystemExit` (0 and 2), as argparse does. `F3D_DEBUG=1` shows the traceback of every error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from f3d_jax import __version__

DESCRIPTION = (f"f3d-jax {__version__}: CroCo, DUSt3R and MASt3R in JAX. Start with `f3d demo` (offline, no "
               "weights), then `f3d reconstruct photos/*.jpg --model naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt "
               "--out out/`.")


def _user_error(e: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit status) for an error the user can act on, None for a bug."""
    from f3d_jax.cli.run import CliError

    if isinstance(e, CliError):
        return str(e), e.code
    if isinstance(e, ImportError) and e.name and not e.name.startswith("f3d_jax"):
        top = e.name.split(".")[0]
        return f"the package {top!r} is needed here and is not installed: python -m pip install {top}", 1
    if isinstance(e, OSError) and not isinstance(e, FileExistsError):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e}", 1
    if isinstance(e, (ValueError, FileExistsError, FloatingPointError)):
        # CheckpointError, ImageLoadError, ReconstructionError, ViewerError and the checks of the pipeline are
        # ValueErrors naming the file or option
        return str(e), 2
    return None


def run(opts: object) -> int:
    """Runs one parsed subcommand; user errors become one line on stderr and an exit status."""
    from f3d_jax.cli.options import COMMANDS
    from f3d_jax.cli.run import RUNNERS

    name = next(k for k, v in COMMANDS.items() if isinstance(opts, v))
    try:
        return RUNNERS[type(opts)](opts)
    except KeyboardInterrupt:
        print(f"f3d {name}: interrupted", file=sys.stderr)
        return 0 if name == "view" else 130
    except Exception as e:
        found = _user_error(e)
        if found is None or os.environ.get("F3D_DEBUG", "") not in ("", "0"):
            raise
        message, code = found
        print(f"f3d {name}: error: {' '.join(message.split())}", file=sys.stderr)
        return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run `f3d` with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    import tyro

    from f3d_jax.cli.options import COMMANDS

    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--version"], ["-V"]):
        print(f"f3d-jax {__version__}")
        return 0
    if not args:
        args = ["--help"]
    opts = tyro.extras.subcommand_cli_from_dict(COMMANDS, prog="f3d", description=DESCRIPTION, args=args)
    return run(opts)


if __name__ == "__main__":
    sys.exit(main())
