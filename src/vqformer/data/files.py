"""File helpers for the data layer: hashing, atomic writes, resumable downloads, manifest checks.

Every preparer writes its files atomically and records their sizes and sha256 in a manifest written last;
`check_prepared` re-hashes them when a run starts and prepares damaged data again from its source, or stops
naming the damaged files (docs/data_integrity.md; the preparers follow docs/data.md §6). No network access is assumed: a failed download turns
into a `DataUnavailableError` that tells the user how to fetch the file by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import http.client
import os
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from ..progress import progress

__all__ = [
    "DataIntegrityError",
    "DataIntegrityWarning",
    "DataUnavailableError",
    "atomic_path",
    "atomic_write_bytes",
    "check_prepared",
    "download",
    "ensure_writable",
    "file_problem",
    "fsync_dir",
    "load_meta",
    "md5_file",
    "sha256_file",
    "split_entries",
    "verify_file",
]

_CHUNK = 1 << 20


class DataUnavailableError(RuntimeError):
    """A required source file is absent and could not be fetched."""


class DataIntegrityError(RuntimeError):
    """A file exists but its size, hash or format is not what was expected."""


class DataIntegrityWarning(UserWarning):
    """Prepared data did not match its manifest and is prepared again from its source."""


_PROGRESS_BYTES = 1 << 30   # hashing files this large takes seconds to minutes (the PG-19 and ImageNet64 splits)


def _hash_file(path: str | os.PathLike, algo: str) -> str:
    h = hashlib.new(algo)
    size = os.path.getsize(path)
    with open(path, "rb") as f, progress(total=size, desc=f"{algo} {Path(path).name}", unit="B",
                                         disable=size < _PROGRESS_BYTES or None) as bar:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    return _hash_file(path, "sha256")


def md5_file(path: str | os.PathLike) -> str:
    return _hash_file(path, "md5")


def verify_file(path: str | os.PathLike, md5: str | None = None, sha256: str | None = None) -> None:
    """Raise DataIntegrityError naming the file and both hashes on mismatch."""
    for algo, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        actual = _hash_file(path, algo)
        if actual != expected.lower():
            raise DataIntegrityError(
                f"{os.path.abspath(path)}: {algo} mismatch: expected {expected.lower()}, got {actual}"
            )


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in `folder` durable: until the directory itself is flushed, a crash may undo it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:   # some filesystems refuse fsync on a directory; the rename is still atomic there
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it into place only if the block succeeds.

    The temp file lives in the same directory so that `os.replace` is a
    same-filesystem rename, hence atomic: readers see the old file or the
    complete new one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    # Not mkstemp: its 0600 mode would make prepared data unreadable to other users; this honours the umask.
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        # Flush to disk before the rename, or a crash could leave a renamed but empty file.
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def load_meta(path: str | os.PathLike, version: int, source: dict) -> dict | None:
    """A prepared dataset's manifest, or None when it is missing, unreadable, or was written by another
    preparation version or from another source (then the data is prepared again)."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("version") != version or meta.get("source") != source:
        return None
    return meta


def file_problem(path: Path, n_bytes: int | None, sha256: str | None, verify: bool = True) -> str | None:
    """Why `path` is not the file its manifest describes (missing, size, sha256 when `verify`), or None."""
    if not path.is_file():
        return f"{path}: missing"
    size = path.stat().st_size
    if n_bytes is not None and size != n_bytes:
        return f"{path}: {size} bytes, its manifest records {n_bytes}"
    if verify:
        if not sha256:
            return f"{path}: its manifest records no sha256"
        actual = sha256_file(path)
        if actual != sha256:
            return f"{path}: sha256 {actual}, its manifest records {sha256}"
    return None


def split_entries(meta: dict, paths: dict[str, Path]) -> dict[Path, tuple[int, str | None]]:
    """(size, sha256) of each split file as the manifest's `splits` table records them, for `check_prepared`."""
    return {path: (meta["splits"][split]["n_bytes"], meta["splits"][split].get("sha256"))
            for split, path in paths.items()}


def ensure_writable(folder: Path, context: str, hint: str) -> None:
    """Create `folder` if needed and create and remove a probe file in it; raise DataIntegrityError otherwise.

    A real write is the only test that holds for root as well: permission bits do not stop root, while a
    read-only mount or an immutable directory do, and `os.access` cannot see either.
    """
    probe = Path(folder) / f".write-probe.{os.getpid()}.{uuid.uuid4().hex[:12]}"
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
    except OSError as e:
        raise DataIntegrityError(f"{context}: {folder} is not writable ({e.strerror or e}). {hint}") from e


def check_prepared(
    meta_path: Path,
    version: int,
    source: dict,
    expected: Callable[[dict], dict[Path, tuple[int | None, str | None]]],
    locate_source: Callable[[], str | None],
    fix: str,
    verify: bool = True,
) -> dict | None:
    """The manifest of intact prepared data, or None when the caller must prepare it (again).

    `expected(meta)` maps each prepared file to the (size, sha256) the manifest records. Damaged files are
    prepared again when `locate_source()` names the source (with a DataIntegrityWarning); when it returns
    None, or the folder cannot be written, a DataIntegrityError names every damaged file and `fix`.
    A missing, unreadable or outdated manifest means "not prepared": the caller prepares, folder writable.
    """
    out_dir = Path(meta_path).parent
    meta = load_meta(meta_path, version, source)
    try:
        files = expected(meta) if meta is not None else None
    except (KeyError, TypeError, ValueError):   # a manifest of the right version without the fields we need
        files = None
    if files is None:
        ensure_writable(out_dir, f"{out_dir} holds no prepared data ({meta_path.name} is missing, unreadable or "
                                 f"from another version or source) and it cannot be prepared",
                        "Make it writable, or point data.root (paths.data_dir) to a writable folder.")
        return None
    problems = [p for path, (n_bytes, sha) in files.items() if (p := file_problem(path, n_bytes, sha, verify))]
    if not problems:
        return meta
    damaged = "prepared data does not match its manifest " + str(meta_path) + ":\n    " + "\n    ".join(problems)
    origin = locate_source()
    if origin is None:
        raise DataIntegrityError(f"{damaged}\nIts source is not available to prepare it again. To fix it: {fix}")
    ensure_writable(out_dir, f"{damaged}\nIt would be prepared again from {origin}, but cannot be",
                    f"To fix it: make the folder writable and run again, or {fix}")
    warnings.warn(f"{damaged}\npreparing it again from {origin}", DataIntegrityWarning, stacklevel=3)
    return None


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def _manual_download_message(url: str, dest: Path, reason: object) -> str:
    return (
        f"Could not download {url} ({reason}).\n"
        f"Download it by hand, e.g. `curl -L -o {dest} {url}`, and place it at:\n"
        f"    {dest}\n"
        f"then run again."
    )


def download(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    show_progress: bool = True,
) -> Path:
    """Fetch `url` to `dest`, resuming a previous partial download in `dest.part`.

    The final file only appears once it is complete and its checksum matches;
    a mismatching download is deleted (it cannot be resumed into a good file).
    """
    dest = Path(os.path.abspath(dest))
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "vqformer-data"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            status = getattr(resp, "status", 200)
            if offset and status == 206:
                content_range = resp.headers.get("Content-Range", "")
                if not content_range.startswith(f"bytes {offset}-"):
                    part.unlink(missing_ok=True)
                    raise DataUnavailableError(
                        _manual_download_message(url, dest, f"server resumed at the wrong offset: {content_range!r}")
                    )
                mode = "ab"
            else:
                # The server ignored the Range header: start over.
                mode = "wb"
            length = resp.headers.get("Content-Length")
            done = offset if mode == "ab" else 0
            total = done + int(length) if length and length.isdigit() else None
            bar = progress(total=total, initial=done, desc=dest.name, unit="B", disable=not show_progress or None)
            with open(part, mode) as f, bar:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
                # On disk before the rename below, or a crash could leave a complete-looking name over lost data.
                f.flush()
                os.fsync(f.fileno())
    except urllib.error.HTTPError as e:
        # 416 on a resume means the partial file is already complete; the checksum decides.
        if not (e.code == 416 and offset):
            raise DataUnavailableError(_manual_download_message(url, dest, f"HTTP {e.code} {e.reason}")) from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise DataUnavailableError(_manual_download_message(url, dest, e)) from e

    try:
        verify_file(part, md5=md5, sha256=sha256)
    except DataIntegrityError as e:
        part.unlink(missing_ok=True)
        raise DataIntegrityError(
            f"download of {url} to {dest} is corrupt ({e}); the partial file was deleted, run again"
        ) from e
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest
