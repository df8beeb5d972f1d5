"""Planning-time checks of input files that can never crash the process.

The workflow is planned in one process for the whole cohort, so nothing here may open image
data with a library that can take the process down (``nibabel`` with ``indexed_gzip`` on an
unreadable file ended the whole run with a segmentation fault). Images are judged from their
first bytes only: the file is opened with plain :func:`open`, a gzip stream is inflated with the
standard library's :mod:`gzip` just far enough for the NIfTI header (348 or 540 bytes), and the
header is parsed from those bytes. Every problem becomes a *reason* (a short sentence naming
what is wrong) that the planner turns into one ``skipped`` line for that participant; the other
participants go on.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from pathlib import Path
from typing import Any

from .errors import InputError

#: Bytes read from the start of an image: the NIfTI-2 header is 540 bytes, NIfTI-1 is 348.
_HEADER_BYTES = 540


def _raw_start(path: Path, n: int) -> bytes:
    """The first ``n`` (decompressed) bytes of a file, or fewer if it is shorter."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
        fh.seek(0)
        if magic == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                return gz.read(n)
        return fh.read(n)


def read_nifti_header(path: str | os.PathLike[str]) -> Any:
    """Parse the NIfTI-1/2 header of an image from its first bytes (never reads the data).

    Parameters
    ----------
    path : path-like
        ``.nii`` or ``.nii.gz``.

    Returns
    -------
    nibabel.Nifti1Header or nibabel.Nifti2Header

    Raises
    ------
    InputError
        The file cannot be opened, decompressed, or is not a NIfTI image.
    """
    import nibabel as nb

    p = Path(path)
    reason = file_problem(p)
    if reason is not None:
        raise InputError(p, reason, _hint_for(reason))
    try:
        raw = _raw_start(p, _HEADER_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        what = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise InputError(p, f"the file cannot be read or decompressed ({what}).",
                         "Copy it again or rerun fMRIPrep for this participant.") from None
    for cls, size in ((nb.Nifti1Header, 348), (nb.Nifti2Header, 540)):
        if len(raw) < size:
            continue
        for order in ("<", ">"):
            if int.from_bytes(raw[:4], "little" if order == "<" else "big") != size:
                continue
            try:
                hdr = cls.from_fileobj(io.BytesIO(raw[:size]), check=False)
                hdr.get_data_shape()
                return hdr
            except Exception as exc:  # noqa: BLE001 - any header parsing failure
                raise InputError(p, f"the NIfTI header cannot be decoded ({exc}).",
                                 "Copy it again or rerun fMRIPrep for this participant.") from None
    raise InputError(p, "this is not a NIfTI image (no NIfTI-1/2 header at the start of the "
                     "file).", "Copy it again or rerun fMRIPrep for this participant.")


#: Image dimensions already read, by file identity (:func:`_identity`): planning asks for
#: the shape of a BOLD run several times (its input check, then the memory and run-time
#: requests of several jobs); a cohort's worth of gzip headers was read again each time.
_SHAPES: dict[tuple[Any, ...], tuple[int, ...]] = {}


def _identity(path: str | os.PathLike[str]) -> tuple[Any, ...] | None:
    """Path and (device, inode, size, modification and change times): a changed or replaced
    file has another identity. ``None`` if it cannot be stat'ed."""
    p = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(p)
    except OSError:
        return None
    return (p, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_shape(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """:func:`read_nifti_header`'s dimensions, remembered under the identity the file had
    before it was read."""
    ident = _identity(path)
    shape = tuple(int(v) for v in read_nifti_header(path).get_data_shape())
    if ident is not None:
        _SHAPES[ident] = shape
    return shape


def image_shape(path: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """Image dimensions from the header, or ``None`` if the header cannot be read.

    Read once per file identity (same path, size and times: the cached answer)."""
    ident = _identity(path)
    if ident is not None and ident in _SHAPES:
        return _SHAPES[ident]
    try:
        return _read_shape(path)
    except InputError:
        return None


def file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a file cannot be used at all (missing, broken link, unreadable), else ``None``."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        try:
            dest = os.readlink(p)
        except OSError:
            dest = "?"
        return f"the file is a broken symbolic link (it points to {dest}, which does not exist)."
    if not p.exists():
        return "the file does not exist."
    if not p.is_file():
        return "this is not a regular file."
    try:
        with open(p, "rb") as fh:
            fh.read(1)
    except PermissionError:
        return "the file cannot be read (permission denied)."
    except OSError as exc:
        return f"the file cannot be read ({exc.strerror or exc})."
    return None


def _hint_for(reason: str) -> str:
    if "permission" in reason:
        return ("Give your user read access to it (e.g. chmod a+r), or exclude this "
                "participant.")
    if "symbolic link" in reason or "does not exist" in reason:
        return "Restore the file (or the folder the link points to), or exclude this participant."
    return "Copy it again or rerun fMRIPrep for this participant."


def read_json_object(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Read a JSON file that must hold one object (``{...}``), with a one-line error otherwise.

    Parameters
    ----------
    path : path-like
    what : str
        What the file is, for the message (e.g. ``"BOLD sidecar"``).

    Raises
    ------
    InputError
        Unreadable, not UTF-8, not valid JSON, or valid JSON that is not an object.
    """
    p = Path(path)
    reason = file_problem(p)
    if reason is not None:
        raise InputError(p, f"the {what}: {reason}", _hint_for(reason))
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(p, f"the {what} is not valid JSON ({exc}).",
                         "Repair or regenerate it: it must hold one JSON object, in curly "
                         "braces.") from None
    except OSError as exc:
        raise InputError(p, f"the {what} cannot be read ({exc.strerror or exc}).",
                         "Copy it again.") from None
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", int: "a number", float: "a number",
                bool: "true/false", type(None): "null"}.get(type(data), type(data).__name__)
        raise InputError(p, f"the {what} is {kind}, not a JSON object.",
                         "Repair or regenerate it: it must hold one JSON object, in curly "
                         "braces.")
    return data


def input_problem(path: str | os.PathLike[str], kind: str) -> str | None:
    """One line saying why an input file is unusable (naming it), or ``None`` if it looks fine.

    Parameters
    ----------
    path : path-like
    kind : {"nifti", "json", "file"}
        ``nifti``: the header must decode; ``json``: it must be a JSON object; ``file``: it must
        be readable.
    """
    p = Path(path)
    try:
        if kind == "nifti":
            _read_shape(p)
        elif kind == "json":
            read_json_object(p, "JSON file")
        else:
            reason = file_problem(p)
            if reason is not None:
                raise InputError(p, reason, _hint_for(reason))
    except InputError as exc:
        return " ".join(str(exc).splitlines())
    return None


def grid_mismatch(shape: tuple[int, ...], affine: Any, ref_shape: tuple[int, ...],
                  ref_affine: Any, ref_name: str, what: str = "brain mask") -> str:
    """Say how an image's grid differs from a reference grid: shape, or where the affines differ.

    Examples
    --------
    A mask shifted by 0.1 mm has the same shape as the BOLD; the message then says that the
    voxel-to-world affines differ, and by how much, rather than print two equal shapes.
    """
    import numpy as np

    if tuple(shape[:3]) != tuple(ref_shape[:3]):
        return (f"the {what}'s grid {tuple(shape[:3])} does not match the BOLD grid "
                f"{tuple(ref_shape[:3])} of {ref_name}.")
    a, b = np.asarray(affine, dtype=float), np.asarray(ref_affine, dtype=float)
    shift = float(np.abs(a[:3, 3] - b[:3, 3]).max())
    lin = float(np.abs(a[:3, :3] - b[:3, :3]).max())
    parts = []
    if shift > 0:
        parts.append(f"origin {shift:.3g} mm apart")
    if lin > 0:
        parts.append(f"voxel axes differing by up to {lin:.3g} mm")
    return (f"the {what}'s grid does not match the BOLD grid of {ref_name}: same shape "
            f"{tuple(shape[:3])}, but the voxel-to-world affines differ ({', '.join(parts)}).")


def tsv_cell(value: Any) -> Any:
    """A value safe for one TSV cell: tabs, newlines and other control characters escaped."""
    if not isinstance(value, str):
        return value
    if value.isprintable():
        return value
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in value)
