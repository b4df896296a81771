"""The one atomic-write helper: every file or folder the library writes goes through here.

A write goes to a hidden temporary sibling (same directory, so the final ``os.replace`` is atomic)
and is renamed over the target only once complete. A crash, a full disk or Ctrl-C leaves the
previous file intact and no temporary file behind (SIGKILL can leave one: :func:`clean_stale_temps`
removes those on the next start). New files get the usual permissions (``0666 & ~umask``), not
``mkstemp``'s 0600, so a server running as another user can read them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from fastvit.errors import FastViTError

TEMP_MARK = ".tmp"


class WriteError(FastViTError, OSError):
    """A file could not be written (full disk, read-only target, existing file...)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_sibling(path: Path, suffix: str = "") -> Path:
    """A unique hidden temporary name next to ``path``: ``.<name>.<token>.tmp<suffix>``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_MARK}{suffix}")


def _remove(p: Path) -> None:
    with contextlib.suppress(OSError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def describe_os_error(exc: OSError, path: Path) -> str:
    """One line for an OS error while writing ``path`` (what happened and what to do)."""
    if exc.errno == errno.ENOSPC:
        return f"no space left on device while writing {path}; any previous {path.name} is intact"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {path}: {exc.strerror.lower()}; choose a writable location"
    if exc.errno == errno.ENOTDIR:
        return f"cannot write {path}: a parent of it is a file, not a folder"
    if exc.errno == errno.EISDIR:
        return f"cannot write {path}: it is a folder; give a file name"
    return f"cannot write {path}: {exc.strerror or exc}"


def check_writable_target(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Validate an output path before any expensive work: refuse an existing target unless
    ``overwrite``, a folder where a file is expected, or a parent that is a file."""
    path = Path(path)
    if path.is_dir() and not path.suffix:
        raise WriteError(f"{path} is an existing folder; give a file name to write")
    if path.exists() and not overwrite:
        raise WriteError(f"{path} already exists; pass --overwrite to replace it")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise WriteError(f"cannot write {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise WriteError(f"cannot write {path}: {parent} is not writable")
            break
    return path


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, *, overwrite: bool = True, suffix: str | None = None
) -> Iterator[Path]:
    """Yield a temporary path to write into; on success it replaces ``path`` atomically.

    ``suffix`` keeps an extension on the temporary name for writers that check it (defaults to
    ``path``'s suffix). The writer may create a file or a folder (e.g. ``.mlpackage``). With
    ``overwrite=False`` an existing ``path`` is refused before anything is written. OS errors
    (full disk, read-only target) become a one-line :class:`WriteError`.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise WriteError(f"{path} already exists; pass --overwrite to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(describe_os_error(exc, path)) from None
    tmp = temp_sibling(path, path.suffix if suffix is None else suffix)
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~_umask())
        if path.is_dir() and tmp.is_dir():
            _remove(path)  # os.replace cannot replace a non-empty folder
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        if isinstance(exc, FastViTError):
            raise
        raise WriteError(describe_os_error(exc, path)) from None
    except BaseException:
        _remove(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (fsynced before the rename)."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite=overwrite)


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files this helper left in ``folder`` (a killed process cannot clean up).

    Call it only on a folder that no other live process is writing to (e.g. a locked run dir).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and TEMP_MARK in p.name]
    for p in stale:
        _remove(p)
    return stale


PARTIAL_MARK = ".partial"


def partial_path(path: str | os.PathLike) -> Path:
    """The resumable temporary sibling of a download target: ``.<name>.partial``.

    Unlike :func:`atomic_path`'s temporaries it has a fixed name and is kept when a download
    is interrupted, so the next attempt resumes it; :func:`finish_partial` renames it over the
    target once complete and verified.
    """
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL_MARK}")


def finish_partial(part: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Atomically move a completed partial file to ``path`` (usual permissions)."""
    part, path = Path(part), Path(path)
    try:
        os.chmod(part, 0o666 & ~_umask())
        os.replace(part, path)
    except OSError as exc:
        raise WriteError(describe_os_error(exc, path)) from None
    return path
