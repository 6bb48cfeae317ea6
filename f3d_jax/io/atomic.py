"""Atomic writes: a file or a directory appears complete under its name, or not at all.

Files (`atomic_open`, `atomic_write_text`): written to a temporary sibling, flushed to disk and
renamed over the destination (`os.replace`).

Directories (`replace_dir`): built in a temporary sibling `.<name>.f3d-tmp-*`; an existing
destination is renamed to the backup sibling `.<name>.f3d-backup`, the new directory is renamed
into place, and the backup is deleted (renamed to a temporary name first, so that a half-deleted
directory never carries the backup's name). At every instant `dst` holds the complete old or the
complete new directory, except between the two renames, when `dst` is absent and the backup holds
the complete old one: `readable_path(dst)` finds it, and the next `replace_dir` (or `recover`)
renames it back. Leftovers of interrupted writes (temporary siblings, stale backups) are removed
by the next `replace_dir` on the same destination.

Concurrent writers of one destination are not supported (the last rename wins, and one writer may
remove another's temporary directory).
"""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write_text", "backup_path", "readable_path", "recover", "replace_dir", "temp_prefix"]

TMP_TAG = ".f3d-tmp-"
BACKUP_TAG = ".f3d-backup"


def _abs(path: str | os.PathLike) -> Path:
    # absolute without resolving symlinks (orbax needs absolute paths; `resolve` would follow links)
    return Path(os.path.abspath(os.fspath(path)))


def temp_prefix(dst: str | os.PathLike) -> str:
    """Name prefix of the temporary siblings of `dst` (`.<name>.f3d-tmp-`)."""
    return f".{Path(dst).name}{TMP_TAG}"


def backup_path(dst: str | os.PathLike) -> Path:
    """The backup sibling of `dst` (`.<name>.f3d-backup`), absolute."""
    dst = _abs(dst)
    return dst.with_name(f".{dst.name}{BACKUP_TAG}")


def _fsync_dir(path: Path) -> None:
    """Persists the renames in `path` (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    """Cleanup that must not mask the error being raised: OS errors are left for the next save."""
    try:
        fn(*args)
    except OSError:
        pass


def _temp_sibling(dst: Path) -> Path:
    return dst.with_name(f"{temp_prefix(dst)}{uuid.uuid4().hex[:12]}")


def _make_temp_dir(dst: Path) -> Path:
    """A new empty temporary sibling directory of `dst`, with the permissions of any new directory
    (0o777 less the umask; `tempfile.mkdtemp` would make it private)."""
    for _ in range(100):
        path = _temp_sibling(dst)
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{dst}: no free temporary name")


def _make_temp_file(dst: Path) -> tuple[int, Path]:
    """(fd, path) of a new temporary sibling file of `dst`, 0o666 less the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = _temp_sibling(dst)
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{dst}: no free temporary name")


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """`open(path, mode)` for writing, atomically: the file appears complete when the block ends.

    Args:
        path: destination file; its folder must exist.
        mode: a write mode ('wb', 'w').
        kwargs: passed to `open` (e.g. `encoding`).

    On an exception inside the block the temporary file is removed and `path` is untouched.
    """
    path = _abs(path)
    fd, tmp = _make_temp_file(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _quietly(os.unlink, tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Writes `text` to `path` atomically (temporary sibling, then rename)."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def _discard(path: Path, dst: Path) -> None:
    """Deletes `path`, first renaming it to a temporary sibling of `dst` unless it has such a name."""
    if not path.name.startswith(temp_prefix(dst)):
        trash = _temp_sibling(dst)
        os.replace(path, trash)
        path = trash
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        os.unlink(path)


def recover(dst: str | os.PathLike) -> None:
    """Finishes an interrupted `replace_dir` of `dst`.

    A backup with `dst` missing is the complete old directory: it is renamed back. A backup with
    `dst` present is stale (the new directory was in place): it is deleted. Temporary siblings
    are deleted.
    """
    dst = _abs(dst)
    backup = backup_path(dst)
    if backup.exists():
        if not dst.exists() and not dst.is_symlink():
            os.replace(backup, dst)
        else:
            _discard(backup, dst)
    for leftover in dst.parent.glob(glob.escape(temp_prefix(dst)) + "*"):
        _discard(leftover, dst)


def readable_path(dst: str | os.PathLike) -> Path | None:
    """`dst` if it exists, else its backup if an interrupted `replace_dir` left one, else None."""
    dst = _abs(dst)
    if dst.exists():
        return dst
    backup = backup_path(dst)
    return backup if backup.exists() else None


def replace_dir(dst: str | os.PathLike, fill: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Creates or replaces the directory `dst` atomically.

    Args:
        dst: destination directory (relative paths are made absolute); its parents are created.
        fill: called with an empty temporary directory (absolute path, a sibling of `dst`) to write
            the new content into.
        overwrite: replace an existing `dst` (else `FileExistsError`).

    Returns:
        The absolute path of `dst`.
    """
    dst = _abs(dst)
    os.makedirs(dst.parent, exist_ok=True)
    recover(dst)
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise FileExistsError(f"{dst}: already exists (pass overwrite=True to replace it)")
    tmp = _make_temp_dir(dst)
    try:
        fill(tmp)
    except BaseException:
        _quietly(shutil.rmtree, tmp)
        raise
    backup = backup_path(dst)
    moved = False
    try:
        if dst.exists() or dst.is_symlink():
            os.replace(dst, backup)
            moved = True
        os.replace(tmp, dst)
    except BaseException:
        if moved and not dst.exists():
            _quietly(os.replace, backup, dst)  # if this fails too, readers use the backup
        _quietly(shutil.rmtree, tmp)
        raise
    _fsync_dir(dst.parent)
    if moved:
        _quietly(_discard, backup, dst)  # a stale backup is removed by the next save
    return dst
