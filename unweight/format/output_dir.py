"""Write a directory atomically: build it under a temporary name beside DST, rename on success.

An interrupted run leaves only a hidden `.NAME.tmp-*` directory, never something
that looks like a finished checkpoint; an existing DST is replaced only with force.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import DestinationError


@contextmanager
def atomic_directory(dst: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary directory that becomes `dst` when the block finishes without error."""
    check_destination(dst, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=_existing_parent(dst)))
    try:
        _open_permissions(tmp)
        yield tmp
        _replace(tmp, dst)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DestinationError(f"{dst}: cannot write ({e.strerror or e})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_destination(dst: Path, force: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise DestinationError(f"{dst}: exists and is not a directory")
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise DestinationError(f"{dst}: exists and is not empty (pass --force to replace it)")


def _open_permissions(path: Path) -> None:
    """mkdtemp makes 0700 directories; the result should get the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def _existing_parent(dst: Path) -> Path:
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DestinationError(f"{dst.parent}: cannot create the output directory ({e.strerror or e})") from e
    if not os.access(dst.parent, os.W_OK):
        raise DestinationError(f"{dst.parent}: directory is not writable")
    return dst.parent


def _replace(tmp: Path, dst: Path) -> None:
    """Move the finished directory into place; an older DST is removed only after that succeeds."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        dst.rename(old)
    tmp.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
