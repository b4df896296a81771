"""The run directory: never replaced silently, never shared by two live trainings.

A new run refuses a directory that already holds a run's files unless ``--overwrite`` is given
(then exactly those files are removed, once the new run's setup succeeded; anything else in the
folder is left alone). A lock file held for the whole run makes a second training into the same
directory fail at once. On start the temporary files a killed process left behind are removed,
and a run that fails before its first checkpoint removes what it created (the directory too,
when it made it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from types import TracebackType

from fastvit.errors import ConfigError
from fastvit.fileio import atomic_path, clean_stale_temps

#: files and folders a training run writes into its directory
RUN_FILES = (
    "last.pt",
    "best.pt",
    "metrics.csv",
    "curves.png",
    "summary.json",
    "model.safetensors",
    "model_reparam.safetensors",
    "tensorboard",
)
LOCK_NAME = ".fastvit-train.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: run without a lock
    fcntl = None


def run_files(path: Path) -> list[str]:
    """The run files present in ``path``."""
    return [n for n in RUN_FILES if (path / n).exists()]


def _rm(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


class RunDir:
    """Context manager owning a run directory for the duration of a run (rank 0 only).

    ``resume_from``: the directory of the checkpoint being resumed (None for a new run).
    Entering creates the directory, takes the lock, removes stale temporary files and checks
    the directory may be written; leaving releases the lock and, when the run failed before
    writing a checkpoint, removes what it created.
    """

    def __init__(
        self, path: str | os.PathLike, *, overwrite: bool = False, resume_from: Path | None = None
    ) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.resume_from = resume_from
        self.created = False
        self.checkpointed = False  # set once the run wrote a checkpoint here
        self.had_run = False
        self._lock_fd: int | None = None
        self._created_top: Path | None = None
        self._replace: list[str] = []

    # ----------------------------------------------------------------- enter / exit
    def __enter__(self) -> RunDir:
        try:
            if self.path.exists() and not self.path.is_dir():
                raise ConfigError(f"output {self.path} is a file; --output must be a directory")
            missing = [d for d in (self.path, *self.path.parents) if not d.exists()]
            self._created_top = missing[-1] if missing else None
            self.created = bool(missing)
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
            if not os.access(self.path, os.W_OK):
                raise ConfigError(
                    f"output directory {self.path} is not writable; choose another --output"
                )
        except OSError as e:
            self._release()
            raise ConfigError(
                f"output directory {self.path} is not writable "
                f"({e.strerror or e}); choose another --output"
            ) from None
        except BaseException:
            self._release()
            raise
        try:
            clean_stale_temps(self.path)
            self._check_existing()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and not self.checkpointed and not self.had_run:
            for name in RUN_FILES:  # a run that never got to a checkpoint leaves nothing
                _rm(self.path / name)
        self._release()

    def _check_existing(self) -> None:
        same_run = self.resume_from is not None and (
            self.resume_from.resolve() == self.path.resolve()
        )
        present = run_files(self.path)
        self.had_run = bool(present)
        if not present or same_run:
            return
        if not self.overwrite:
            what = (
                "resume it with --resume " + str(self.path / "last.pt")
                if ("last.pt" in present)
                else "pick another --output"
            )
            raise ConfigError(
                f"{self.path} already holds a run ({', '.join(present)}); {what}, or pass "
                "--overwrite to replace it"
            )
        self._replace = present  # removed by begin(), once the new run's setup succeeded

    def begin(self) -> None:
        """The run is set up and about to train: remove the files of the run it replaces
        (``--overwrite``), so a setup error leaves the previous run untouched."""
        for name in self._replace:
            _rm(self.path / name)
        if self._replace:
            self.had_run = False
        self._replace = []

    # ----------------------------------------------------------------- lock
    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    def _lock(self) -> None:
        if fcntl is None:
            return
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ConfigError(
                    f"another training (pid {holder}) is running in {self.path}; wait for it "
                    "to finish or choose another --output"
                ) from None
            # the previous holder may have removed the file between our open and flock
            if (
                os.path.exists(self.lock_path)
                and os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            ):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)  # while still holding it (see _lock)
            os.close(self._lock_fd)
            self._lock_fd = None
        if self.created:  # only empty folders go: those of a run that failed before writing
            for d in (self.path, *self.path.parents):
                try:
                    d.rmdir()
                except OSError:
                    break
                if d == self._created_top:
                    break
            self.created = False

    # ----------------------------------------------------------------- files
    def adopt_best(self) -> bool:
        """Resuming into a new directory: bring the source run's ``best.pt`` along, so the
        final model is still the best epoch's. Returns whether this is such a resume."""
        if self.resume_from is None or self.resume_from.resolve() == self.path.resolve():
            return False
        src = self.resume_from / "best.pt"
        if src.is_file() and not (self.path / "best.pt").exists():
            with atomic_path(self.path / "best.pt") as tmp:
                shutil.copyfile(src, tmp)
        return True
