"""File helpers for the data layer: hashing, atomic writes, resumable downloads.

Implements the "written atomically, verified by hash" rule of
docs/data.md §6 used by every preparer of
docs/transformer_vq.md §4.3. No network access is assumed: a failed download turns
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
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "DataIntegrityError",
    "DataUnavailableError",
    "atomic_path",
    "atomic_write_bytes",
    "download",
    "md5_file",
    "sha256_file",
    "verify_file",
]

_CHUNK = 1 << 20


class DataUnavailableError(RuntimeError):
    """A required source file is absent and could not be fetched."""


class DataIntegrityError(RuntimeError):
    """A file exists but its size, hash or format is not what was expected."""


def _hash_file(path: str | os.PathLike, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
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


def split_files_match(meta: dict, paths: dict[str, Path], verify: bool) -> bool:
    """Every split file exists with the size the manifest records (and its sha256 when ``verify``)."""
    for split, path in paths.items():
        info = meta.get("splits", {}).get(split)
        if info is None or not path.is_file() or path.stat().st_size != info["n_bytes"]:
            return False
        if verify and sha256_file(path) != info["sha256"]:
            return False
    return True


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
            with open(part, mode) as f:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
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
    return dest
