"""Small I/O helpers: checksums, atomic writes, BIDS-derivative names.

Every file tmstarget writes goes through :func:`atomic_write`, so an interrupted run never
leaves a half-written output that a later step could mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np

#: BIDS entity order used for every output name (the BIDS specification's order; ``stat`` is
#: tmstarget's own, after ``desc``).
ENTITY_ORDER: tuple[str, ...] = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo",
                                 "part", "space", "res", "desc", "stat")


def sha256sum(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def bids_name(entities: Mapping[str, str | None], suffix: str, extension: str) -> str:
    """Build a BIDS file name from entities in the standard order.

    Parameters
    ----------
    entities : mapping
        Entity name (``sub``, ``ses``, ``task``, ``run``, ``space``, ``desc``, ...) to label.
        ``None`` or empty labels are left out.
    suffix : str
        BIDS suffix (``boldmap``, ``coords``, ...).
    extension : str
        With the leading dot (``.nii.gz``).

    Returns
    -------
    str
    """
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}")
    parts = [f"{k}-{entities[k]}" for k in ENTITY_ORDER if entities.get(k)]
    return "_".join([*parts, suffix]) + extension


def current_umask() -> int:
    """The process umask (read from ``/proc`` where possible, which does not change it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # no /proc (macOS): set and restore
    os.umask(old)
    return old


def default_file_mode() -> int:
    """Mode a plain ``open(path, "w")`` would give a new file: ``0o666`` minus the umask.

    :func:`tempfile.mkstemp` creates files readable by their owner only (0600); outputs are
    given this mode instead, so a group or a navigator PC's share can read them (0644 under
    the usual umask 022).
    """
    return 0o666 & ~current_umask()


def mkstemp_beside(path: Path) -> tuple[int, str]:
    """A temporary file in ``path``'s folder with the mode of a normally created file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:200]}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return fd, tmp


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb",
                 durable: bool = True) -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success.

    The file gets the mode a normally created file would (umask honoured, 0644 under 022).
    With ``durable`` (the default) its content reaches the disk (``fsync``) before the rename;
    ``durable=False`` is for files that are remade when lost or torn by a crash (the planning
    stamps, :class:`tmstarget.provenance.Stamps`): the rename still makes the write all or
    nothing for every reader while the system runs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp_beside(path)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Write JSON atomically, sorted keys off (order is meaningful), NaN written as null."""
    text = json.dumps(_nan_to_none(json.loads(json.dumps(data, default=_json_default))), indent=2,
                      ensure_ascii=False, allow_nan=False)
    with atomic_write(path, "w") as fh:
        fh.write(text + "\n")


def write_text(path: str | os.PathLike[str], text: str, durable: bool = True) -> None:
    """Write a text file atomically (``durable``: see :func:`atomic_write`)."""
    with atomic_write(path, "w", durable=durable) as fh:
        fh.write(text)


def write_nifti(img: nb.Nifti1Image, path: str | os.PathLike[str]) -> None:
    """Write a NIfTI image atomically and reproducibly (gzip header without a timestamp)."""
    import gzip

    path = Path(path)
    with atomic_write(path, "wb") as fh:
        if path.name.endswith(".gz"):
            with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
                gz.write(img.to_bytes())
        else:
            fh.write(img.to_bytes())


def data_file(name: str) -> Path:
    """Path of a file shipped in ``tmstarget/data`` (templates, Colin27; see its NOTICE.md)."""
    return Path(str(resources.files("tmstarget") / "data" / name))
