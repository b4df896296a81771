"""Fetching weight files: the Hugging Face Hub (its cache, resume and offline mode) and a
verified HTTP download for plain URLs (resumable partial file, size and SHA-256 checks).

Where files go: ``$FASTVIT_HOME`` (default ``$XDG_CACHE_HOME/fastvit`` or
``~/.cache/fastvit``) for URL downloads; Hub files stay in the Hub's own cache
(``HF_HOME`` / ``HF_HUB_CACHE``). ``HF_HUB_OFFLINE=1`` makes both offline: only files already
on disk are used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from fastvit.errors import CheckpointError
from fastvit.fileio import WriteError, finish_partial, partial_path

CHUNK = 1 << 20
_HTML_STARTS = (b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")


class DownloadError(CheckpointError):
    """A file could not be fetched (offline, unreachable, HTTP error, bad content)."""


def fastvit_home() -> Path:
    """Cache root for downloaded weights (``FASTVIT_HOME`` overrides)."""
    env = os.environ.get("FASTVIT_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "fastvit"


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value (read at call time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _progress_bar(total: int | None, initial: int, name: str, show: bool | None):
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        file=sys.stderr,
        leave=False,
    )


def download_url(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to ``dest`` safely and return ``dest``.

    Bytes go to ``.<name>.partial`` next to ``dest``; an interrupted download keeps it and the
    next call resumes with an HTTP Range request (or restarts when the server ignores it). The
    file replaces ``dest`` only when its length matches the server's (and ``size``), its
    SHA-256 matches ``sha256`` when given, and it is not an HTML page. Every failure is a
    one-line :class:`DownloadError`; a wrong file is deleted, never kept.
    """
    dest = Path(dest)
    if is_offline():
        raise DownloadError(f"offline mode (HF_HUB_OFFLINE) and {dest} is not downloaded yet")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create the cache folder {dest.parent}: {e.strerror}") from None
    part = partial_path(dest)
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "fastvit"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # our partial file is not a prefix of theirs: restart
            part.unlink()
            return download_url(
                url, dest, sha256=sha256, size=size, progress=progress, timeout=timeout
            )
        raise DownloadError(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, HTTPException, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"unreachable ({reason})") from None
    with resp:
        ctype = resp.headers.get("Content-Type", "")
        if "text/html" in ctype.lower():
            raise DownloadError("the server answered with an HTML page, not a checkpoint")
        length = resp.headers.get("Content-Length")
        resumed = have > 0 and resp.status == 206
        start = have if resumed else 0
        total = start + int(length) if length is not None else None
        bar = _progress_bar(total, start, dest.name, progress)
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        except (OSError, HTTPException) as e:
            got = part.stat().st_size if part.exists() else 0
            if (
                isinstance(e, OSError)
                and not isinstance(e, (ConnectionError, TimeoutError))
                and e.errno is not None
            ):
                raise WriteError(f"cannot write {part}: {e.strerror}") from None
            of = f" of {total}" if total else ""
            raise DownloadError(
                f"download interrupted after {got}{of} bytes; run again to resume it"
            ) from None
        finally:
            if bar is not None:
                bar.close()
    got = part.stat().st_size
    if total is not None and got != total:
        raise DownloadError(
            f"download interrupted after {got} of {total} bytes; run again to resume it"
        )
    problem = _check_file(part, sha256, size)
    if problem:
        part.unlink()
        raise DownloadError(problem)
    return finish_partial(part, dest)


def _check_file(path: Path, sha256: str | None, size: int | None) -> str | None:
    """What is wrong with a downloaded file, or None."""
    n = path.stat().st_size
    if size is not None and n != size:
        return f"downloaded file has {n} bytes, expected {size}"
    with open(path, "rb") as f:
        head = f.read(64).lstrip().lower()
    if head.startswith(_HTML_STARTS):
        return "the server sent an HTML page, not a checkpoint"
    if sha256:
        digest = file_sha256(path)
        if digest.lower() != sha256.lower():
            return f"SHA-256 mismatch (got {digest[:12]}..., expected {sha256[:12]}...)"
    return None


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def hub_cache_dir() -> str | None:
    """The Hub cache folder from the environment at call time (None: the Hub's default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def hub_download(repo_id: str, filenames: tuple[str, ...], revision: str | None = None) -> Path:
    """The first of ``filenames`` that the Hub repository has, through ``huggingface_hub``
    (cached; offline mode uses the cache only). Raises a one-line DownloadError."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError:
        raise DownloadError(
            "huggingface_hub is not installed (pip install huggingface_hub)"
        ) from None
    offline = is_offline()
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings would break our one-line errors
    try:
        return _hub_try(
            huggingface_hub,
            repo_id,
            filenames,
            revision,
            offline,
            EntryNotFoundError,
            LocalEntryNotFoundError,
        )
    finally:
        hub_logger.setLevel(level)


def _hub_try(
    huggingface_hub,
    repo_id,
    filenames,
    revision,
    offline,
    EntryNotFoundError,
    LocalEntryNotFoundError,
) -> Path:
    last = "no file found"
    for name in filenames:
        try:
            return Path(
                huggingface_hub.hf_hub_download(
                    repo_id,
                    name,
                    revision=revision,
                    cache_dir=hub_cache_dir(),
                    local_files_only=offline,
                    library_name="fastvit",
                )
            )
        except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError: first)
            last = "offline mode and not in the Hub cache" if offline else "Hub unreachable"
            if offline:
                continue
            break
        except EntryNotFoundError:  # the repository has no such file: try the next name
            last = f"no {name}"
            continue
        except Exception as e:  # RepositoryNotFound, HTTP errors, network errors
            last = " ".join(str(e).split())[:120]
            break
    raise DownloadError(last)
