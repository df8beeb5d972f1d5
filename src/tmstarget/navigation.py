"""Export a planned coil pose to neuronavigation systems (research use only).

tmstarget never drives a device. This module writes the planned target and coil pose in the
formats neuronavigation systems import, so that an operator can load them next to the
subject's own T1w image: Brainsight, Localite TMS Navigator, ANT Neuro visor2, 3D Slicer, a
vendor-neutral CSV/JSON pair and a NIfTI sphere overlay.

One internal pose
-----------------
Every export starts from one :class:`CoilPose`: a 4x4 matrix ``M`` in the NIfTI world frame
(RAS+, mm) of the T1w that the navigator will load, in the SimNIBS coil convention:

* column 0 ``x`` = ``y`` x ``z``;
* column 1 ``y`` points *away from the handle*;
* column 2 ``z`` points *into the head* (the negative outward scalp normal);
* column 3 is the coil centre (mm).

The rotation must be orthonormal with determinant +1. A left-handed or non-rigid matrix is
refused everywhere (Brainsight, for one, silently "repairs" a left-handed matrix by negating its
x axis, which turns the coil upside down). Each vendor's axes are derived from ``M`` only:

=================  ===================================================================
Brainsight         ``B = M @ diag(-1, 1, -1, 1)`` (x reversed, y away from handle, z out)
Localite           ``L = M @ P``, ``P`` swaps x/z and reverses y (x into head, y to handle)
ANT visor2         ``M`` itself (``CoilAxesConvention: "simnibs"``), row-major
3D Slicer          control-point ``orientation`` = ``M[:3, :3]`` row-major (columns = axes)
=================  ===================================================================

Handle convention (DLPFC)
-------------------------
:func:`handle_direction` returns the common DLPFC handle direction: in the plane tangent to the
scalp, the handle points **backwards (posterior), rotated ``angle_deg`` (default 45 degrees)
away from the mid-sagittal line toward the lateral side of the stimulated hemisphere**. For a
left-DLPFC target the handle therefore points posterior *and to the left* (posterolateral);
the coil's ``y`` axis (away from the handle) points anterior-medial. Pass
``hemisphere="right"`` for right-sided targets and another ``angle_deg`` if your protocol
differs (``0`` = handle straight back, parallel to the midline).

T1w header rules
----------------
The exports are bound to the T1w's NIfTI world frame. The T1w must have non-zero
``qform_code`` and ``sform_code`` whose matrices agree to 1e-3 mm over the image: navigators
differ in which of the two they use (ANT binds to the qform, Brainsight offers both), so a
disagreement could silently move or mirror the target. Fix such a header (for example
``img.set_qform(img.affine, 1); img.set_sform(img.affine, 1)`` in nibabel, which is what SimNIBS
does) before exporting.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nb
import numpy as np

from . import __version__
from .errors import InputError
from .io import mkstemp_beside, sha256sum

__all__ = [
    "BRAINSIGHT_INTENTS",
    "CoilPose",
    "T1wInfo",
    "brainsight_coordinate_system",
    "handle_direction",
    "pose_from_geometry",
    "read_t1w_info",
    "validate_pose",
    "write_all",
    "write_ant_mrk",
    "write_brainsight",
    "write_csv",
    "write_fcsv",
    "write_json",
    "write_localite_entry_target",
    "write_localite_instrument_markers",
    "write_slicer_markups_json",
    "write_sphere",
]

#: Tolerance on ``R.T @ R - I`` (max abs) and on ``det(R) - 1`` for a coil rotation.
ORTHONORMAL_TOL = 1e-6
#: Largest qform/sform disagreement (mm, anywhere in the image box) that is accepted.
FORM_AGREEMENT_MM = 1e-3

#: Brainsight names of NIfTI xform intent codes (NIfTI-1: 1 scanner, 2 aligned,
#: 3 Talairach, 4 MNI 152, 5 other template).
BRAINSIGHT_INTENTS: dict[int, str] = {
    1: "Scanner",
    2: "Aligned",
    3: "Talairach",
    4: "MNI-152",
    5: "Other-Template",
}

_QUATERN_KEYS = ("quatern_b", "quatern_c", "quatern_d")
_QOFFSET_KEYS = ("qoffset_x", "qoffset_y", "qoffset_z")

# Coil-axes changes (SimNIBS -> vendor), see the module docstring and the format spec.
_SIMNIBS_TO_BRAINSIGHT = np.diag([-1.0, 1.0, -1.0, 1.0])
_SIMNIBS_TO_LOCALITE = np.array(
    [[0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

_SLICER_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/"
    "Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#"
)

# Characters XML 1.0 cannot carry at all (C0 controls except tab, LF, CR; surrogates; FFFE/FFFF).
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


# --------------------------------------------------------------------------------------------
# T1w header information
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class T1wInfo:
    """What an export must know about the T1w the navigator will load.

    Build it with :func:`read_t1w_info`, which refuses unusable headers.

    Attributes
    ----------
    name : str
        File name (no directory) of the T1w.
    sha256 : str
        SHA-256 of the T1w file's bytes.
    shape : tuple of int
        Spatial shape (i, j, k).
    qform_code, sform_code : int
        NIfTI xform intent codes.
    qform, sform : ndarray, shape (4, 4)
        The two voxel-to-world matrices (RAS+ mm).
    quatern : tuple of float
        ``quatern_b, quatern_c, quatern_d`` exactly as stored in the header.
    qoffset : tuple of float
        ``qoffset_x, qoffset_y, qoffset_z``.
    pixdim : tuple of float
        ``pixdim[0:4]`` (``pixdim[0]`` is qfac).
    """

    name: str
    sha256: str
    shape: tuple[int, int, int]
    qform_code: int
    sform_code: int
    qform: np.ndarray
    sform: np.ndarray
    quatern: tuple[float, float, float]
    qoffset: tuple[float, float, float]
    pixdim: tuple[float, float, float, float]


def _form_disagreement_mm(a: np.ndarray, b: np.ndarray, shape: Sequence[int]) -> float:
    """Largest distance (mm) between where two affines put the corners of the image box."""
    corners = np.array(
        [
            [i, j, k, 1.0]
            for i in (0, shape[0] - 1)
            for j in (0, shape[1] - 1)
            for k in (0, shape[2] - 1)
        ]
    )
    return float(np.max(np.linalg.norm((corners @ a.T - corners @ b.T)[:, :3], axis=1)))


def _check_forms(
    where: str,
    shape: Sequence[int],
    qform_code: int,
    sform_code: int,
    qform: np.ndarray,
    sform: np.ndarray,
) -> None:
    """Refuse a T1w header whose world frame is missing or ambiguous."""
    hint = (
        "Give the T1w one world frame: the same matrix in qform and sform, both with a non-zero "
        "code (nibabel: img.set_qform(img.affine, 1); img.set_sform(img.affine, 1); SimNIBS "
        "does this), check the image is not mirrored, and load that same file in the navigator."
    )
    if qform_code == 0 and sform_code == 0:
        raise InputError(
            where,
            "the T1w has qform_code 0 and sform_code 0, so it has no world (RAS) frame; a "
            "navigator would place the target in an undefined space.",
            hint,
        )
    if qform_code == 0 or sform_code == 0:
        which = "qform_code" if qform_code == 0 else "sform_code"
        raise InputError(
            where,
            f"the T1w has {which} 0 (qform_code {qform_code}, sform_code {sform_code}); "
            "navigators disagree on which frame to use then, so the target could be displaced "
            "or mirrored.",
            hint,
        )
    for label, mat in (("qform", qform), ("sform", sform)):
        if mat.shape != (4, 4) or not np.all(np.isfinite(mat)):
            raise InputError(where, f"the T1w {label} is not a finite 4x4 matrix.", hint)
        if abs(np.linalg.det(mat[:3, :3])) < 1e-9:
            raise InputError(where, f"the T1w {label} is singular.", hint)
    diff = _form_disagreement_mm(qform, sform, shape)
    if diff > FORM_AGREEMENT_MM:
        flip = np.sign(np.linalg.det(qform[:3, :3])) != np.sign(np.linalg.det(sform[:3, :3]))
        extra = " One of them is mirrored relative to the other." if flip else ""
        raise InputError(
            where,
            f"the T1w qform and sform disagree by up to {diff:.3g} mm (allowed "
            f"{FORM_AGREEMENT_MM} mm).{extra} Navigators differ in which one they use, so the "
            "target would land in a different place (or hemisphere) depending on the system.",
            hint,
        )


def read_t1w_info(t1w_path: str | os.PathLike[str]) -> T1wInfo:
    """Read and check the T1w header that the navigator will load.

    Parameters
    ----------
    t1w_path : path-like
        The subject's T1w NIfTI (the very file loaded into the navigator).

    Returns
    -------
    T1wInfo

    Raises
    ------
    InputError
        If the file cannot be read as NIfTI-1/2, has qform/sform code 0, or its qform and sform
        disagree by more than :data:`FORM_AGREEMENT_MM`.
    """
    path = Path(t1w_path)
    try:
        img = nb.load(str(path))
    except Exception as exc:
        raise InputError(
            path, f"cannot read the T1w as NIfTI ({exc}).", "Pass the T1w NIfTI file."
        ) from exc
    if not isinstance(img, (nb.Nifti1Image, nb.Nifti2Image)):
        raise InputError(path, "the T1w is not a NIfTI image.", "Convert it to NIfTI first.")
    hdr = img.header
    if len(img.shape) < 3:
        raise InputError(path, f"the T1w has shape {img.shape}, not 3-D.", "Pass a 3-D T1w.")
    shape = tuple(int(s) for s in img.shape[:3])
    qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
    qform = np.asarray(hdr.get_qform(), dtype=float)
    sform = np.asarray(hdr.get_sform(), dtype=float)
    _check_forms(str(path), shape, qcode, scode, qform, sform)
    return T1wInfo(
        name=path.name,
        sha256=sha256sum(path),
        shape=shape,  # type: ignore[arg-type]
        qform_code=qcode,
        sform_code=scode,
        qform=_frozen(qform),
        sform=_frozen(sform),
        quatern=(float(hdr["quatern_b"]), float(hdr["quatern_c"]), float(hdr["quatern_d"])),
        qoffset=(float(hdr["qoffset_x"]), float(hdr["qoffset_y"]), float(hdr["qoffset_z"])),
        pixdim=tuple(float(v) for v in hdr["pixdim"][:4]),  # type: ignore[arg-type]
    )


def _frozen(a: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    out = np.array(a, dtype=float, copy=True)
    if shape is not None and out.shape != shape:
        raise ValueError(f"expected shape {shape}, got {out.shape}")
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------------------------
# The pose
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CoilPose:
    """A planned coil pose in the T1w's world frame (RAS+ mm, SimNIBS coil convention).

    Construct with :func:`pose_from_geometry`; direct construction is validated too (see
    :func:`validate_pose`). Arrays are stored read-only.

    Attributes
    ----------
    matrix : ndarray, shape (4, 4)
        Columns ``x``, ``y`` (away from the handle), ``z`` (into the head) and the coil centre.
    target_mm : ndarray, shape (3,)
        Cortical target (RAS mm).
    entry_mm : ndarray, shape (3,)
        Scalp entry point (RAS mm).
    name : str
        Label shown in the navigator (any text; every writer escapes it).
    image_name, image_sha256 : str
        The T1w file the pose belongs to.
    image_shape : tuple of int
        Its spatial shape.
    qform_code, sform_code : int
        Its xform codes.
    qform, sform : ndarray, shape (4, 4)
        Its voxel-to-world matrices.
    quatern, qoffset, pixdim : tuple of float
        Raw qform header fields (written to ANT visor2 files). When omitted they are derived
        from ``qform``; when given they must reproduce it (checked).
    space : str
        Space label, ``"T1w"``.
    target_label, entry_label : str, optional
        Labels of the cortical target and of the scalp (coil) entry where a format has
        separate entries (Localite EntryTarget, Slicer, fcsv); default ``name`` and
        ``"<name> entry"``.
    note : str
        Status text (e.g. ``UNRELIABLE: ...``) added to every file's comment/provenance.
    """

    matrix: np.ndarray
    target_mm: np.ndarray
    entry_mm: np.ndarray
    name: str
    image_name: str
    image_sha256: str
    image_shape: tuple[int, int, int]
    qform_code: int
    sform_code: int
    qform: np.ndarray
    sform: np.ndarray
    quatern: tuple[float, float, float] | None = None
    qoffset: tuple[float, float, float] | None = None
    pixdim: tuple[float, float, float, float] | None = None
    space: str = "T1w"
    target_label: str | None = None
    entry_label: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "matrix", _frozen(self.matrix, (4, 4)))
            object.__setattr__(self, "target_mm", _frozen(self.target_mm, (3,)))
            object.__setattr__(self, "entry_mm", _frozen(self.entry_mm, (3,)))
            object.__setattr__(self, "qform", _frozen(self.qform, (4, 4)))
            object.__setattr__(self, "sform", _frozen(self.sform, (4, 4)))
        except (ValueError, TypeError) as exc:
            raise InputError(
                None, f"coil pose '{self.name}': {exc}.", "Pass 4x4 matrices and 3-vectors."
            ) from exc
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        object.__setattr__(self, "qform_code", int(self.qform_code))
        object.__setattr__(self, "sform_code", int(self.sform_code))
        object.__setattr__(self, "name", str(self.name))
        if self.quatern is None or self.qoffset is None or self.pixdim is None:
            h = nb.Nifti1Header()
            h.set_qform(np.asarray(self.qform), code=max(self.qform_code, 1))
            if self.quatern is None:
                object.__setattr__(self, "quatern", tuple(float(h[k]) for k in _QUATERN_KEYS))
            if self.qoffset is None:
                object.__setattr__(self, "qoffset", tuple(float(h[k]) for k in _QOFFSET_KEYS))
            if self.pixdim is None:
                object.__setattr__(self, "pixdim", tuple(float(v) for v in h["pixdim"][:4]))
        object.__setattr__(self, "quatern", tuple(float(v) for v in self.quatern))
        object.__setattr__(self, "qoffset", tuple(float(v) for v in self.qoffset))
        object.__setattr__(self, "pixdim", tuple(float(v) for v in self.pixdim))
        validate_pose(self)

    # Derived directions -------------------------------------------------------------------
    @property
    def center_mm(self) -> np.ndarray:
        """Coil centre (RAS mm)."""
        return self.matrix[:3, 3].copy()

    @property
    def normal_out(self) -> np.ndarray:
        """Outward scalp normal (unit) = ``-z``."""
        return -self.matrix[:3, 2]

    @property
    def handle(self) -> np.ndarray:
        """Handle direction (unit, tangent to the scalp) = ``-y``."""
        return -self.matrix[:3, 1]

    @property
    def provenance(self) -> str:
        """One line naming the space and the T1w the coordinates belong to."""
        return (
            f"space {self.space}: NIfTI world RAS+ mm of T1w file '{self.image_name}' "
            f"(sha256 {self.image_sha256}; qform_code {self.qform_code}, sform_code "
            f"{self.sform_code}); written by tmstarget {__version__}, research use only"
            + (f"; {self.note}" if self.note else "")
        )

    @property
    def target_name(self) -> str:
        """Label of the cortical target point."""
        return self.target_label or self.name

    @property
    def entry_name(self) -> str:
        """Label of the scalp entry (coil) point."""
        return self.entry_label or f"{self.name} entry"


def _rotation_problem(rot: np.ndarray) -> str | None:
    """Describe why ``rot`` is not a proper rotation, or return ``None``."""
    if rot.shape != (3, 3) or not np.all(np.isfinite(rot)):
        return "the coil rotation is not a finite 3x3 matrix"
    err = float(np.max(np.abs(rot.T @ rot - np.eye(3))))
    if err >= ORTHONORMAL_TOL:
        return (
            f"the coil rotation is not orthonormal (max |R^T R - I| = {err:.2e}, allowed "
            f"{ORTHONORMAL_TOL:g}); it would scale or shear the coil"
        )
    det = float(np.linalg.det(rot))
    if det < 0:
        return (
            f"the coil matrix is left-handed (det = {det:+.6f}); it is a mirror image of a coil "
            "pose, and some navigators silently flip an axis to 'repair' it, turning the coil over"
        )
    if abs(det - 1.0) >= ORTHONORMAL_TOL:
        return f"the coil rotation has det = {det:.8f}, not +1"
    return None


def validate_pose(pose: CoilPose) -> None:
    """Refuse a pose that no navigator should receive.

    Checks: the rotation is orthonormal (``max|RᵀR − I| < 1e-6``) with determinant +1; the last
    row is ``0 0 0 1``; positions are finite; the target lies on the into-the-head side of the
    coil (``(target − centre)·z > 0``, i.e. ``z`` is not reversed); the T1w header information
    has non-zero codes and agreeing qform/sform.

    Raises
    ------
    InputError
    """
    m = pose.matrix
    where = pose.image_name or None
    hint = "Rebuild the pose with tmstarget.navigation.pose_from_geometry; do not edit the matrix."
    if not np.all(np.isfinite(m)):
        raise InputError(where, f"coil pose '{pose.name}': the matrix has non-finite values.", hint)
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=0, rtol=0):
        raise InputError(
            where,
            f"coil pose '{pose.name}': the last matrix row is {m[3].tolist()}, not 0 0 0 1.",
            hint,
        )
    problem = _rotation_problem(m[:3, :3])
    if problem:
        raise InputError(where, f"coil pose '{pose.name}': {problem}. Nothing was written.", hint)
    for label, v in (("target", pose.target_mm), ("entry", pose.entry_mm)):
        if not np.all(np.isfinite(v)):
            raise InputError(
                where, f"coil pose '{pose.name}': the {label} point is not finite.", hint
            )
    depth = float((pose.target_mm - m[:3, 3]) @ m[:3, 2])
    if depth <= 0:
        raise InputError(
            where,
            f"coil pose '{pose.name}': the target is {abs(depth):.1f} mm on the outside of the "
            "coil "
            "(its z axis points away from the target); the scalp normal is probably inward.",
            "Pass the OUTWARD scalp normal to pose_from_geometry.",
        )
    if not pose.space:
        raise InputError(where, f"coil pose '{pose.name}': no space label.", hint)
    if len(pose.image_shape) != 3:
        raise InputError(where, "the T1w shape must have 3 entries.", hint)
    _check_forms(
        pose.image_name, pose.image_shape, pose.qform_code, pose.sform_code, pose.qform, pose.sform
    )
    if len(pose.quatern) != 3 or len(pose.qoffset) != 3 or len(pose.pixdim) != 4:
        raise InputError(where, "quatern/qoffset/pixdim must have 3/3/4 values.", hint)
    h = nb.Nifti1Header()
    for k, v in zip(_QUATERN_KEYS + _QOFFSET_KEYS, (*pose.quatern, *pose.qoffset)):
        h[k] = v
    h["pixdim"][:4] = pose.pixdim
    h["qform_code"] = max(pose.qform_code, 1)
    qdiff = _form_disagreement_mm(
        np.asarray(h.get_qform(), dtype=float), pose.qform, pose.image_shape
    )
    if qdiff > FORM_AGREEMENT_MM:
        raise InputError(
            where,
            f"the qform quaternion fields (quatern/qoffset/pixdim) disagree with the qform matrix "
            f"by up to {qdiff:.3g} mm; an ANT visor2 file would be bound to the wrong image frame.",
            "Build the pose with pose_from_geometry from the T1w file.",
        )


def _unit(v: Any, what: str) -> np.ndarray:
    a = np.asarray(v, dtype=float).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise InputError(
            None, f"{what} must be a finite 3-vector, got {v!r}.", "Pass (x, y, z) in RAS mm."
        )
    n = float(np.linalg.norm(a))
    if n < 1e-12:
        raise InputError(None, f"{what} has zero length.", "Pass a non-zero direction.")
    return a / n


def handle_direction(
    normal_out: Sequence[float] | np.ndarray,
    angle_deg: float = 45.0,
    hemisphere: Literal["left", "right"] = "left",
    *,
    anterior: Sequence[float] = (0.0, 1.0, 0.0),
    right: Sequence[float] = (1.0, 0.0, 0.0),
) -> np.ndarray:
    """Common DLPFC handle direction: posterior, ``angle_deg`` from the midline toward lateral.

    In the plane tangent to the scalp (perpendicular to ``normal_out``) let ``p`` be the
    posterior direction (``-anterior`` projected on the plane) and ``l`` the lateral direction
    of ``hemisphere`` (``-right`` for left, ``+right`` for right; projected, and made
    perpendicular to ``p``). The handle points along ``cos(a) p + sin(a) l``: for a left target
    and 45 degrees, backwards and to the left (posterolateral), 45 degrees from the
    mid-sagittal line. The coil's ``y`` axis (away from the handle) then points anteromedially.

    Parameters
    ----------
    normal_out : array-like, shape (3,)
        Outward scalp normal at the coil centre (RAS).
    angle_deg : float
        Angle between the handle and the midline (posterior direction), toward lateral.
        ``0`` = straight back; ``90`` = straight lateral.
    hemisphere : {"left", "right"}
        Side of the target; sets which way "lateral" is.
    anterior, right : array-like
        World directions of anterior and right (default RAS axes). Pass the subject's AC-PC
        axes if the T1w world is tilted relative to the head.

    Returns
    -------
    ndarray, shape (3,)
        Unit handle direction, perpendicular to ``normal_out``.
    """
    if hemisphere not in ("left", "right"):
        raise InputError(None, f"hemisphere must be 'left' or 'right', got {hemisphere!r}.", "")
    n = _unit(normal_out, "normal_out")
    ant = _unit(anterior, "anterior")
    rgt = _unit(right, "right")
    post = -ant - ((-ant) @ n) * n
    if np.linalg.norm(post) < 1e-6:
        raise InputError(
            None,
            "the scalp normal is parallel to the anterior-posterior axis, so 'posterior along the "
            "scalp' is undefined.",
            "Pass handle_dir explicitly.",
        )
    post /= np.linalg.norm(post)
    lat = -rgt if hemisphere == "left" else rgt
    lat = lat - (lat @ n) * n - (lat @ post) * post
    if np.linalg.norm(lat) < 1e-6:
        raise InputError(
            None,
            "the lateral direction is undefined at this scalp point.",
            "Pass handle_dir explicitly.",
        )
    lat /= np.linalg.norm(lat)
    a = math.radians(float(angle_deg))
    h = math.cos(a) * post + math.sin(a) * lat
    return h / np.linalg.norm(h)


def pose_from_geometry(
    center: Sequence[float] | np.ndarray,
    normal_out: Sequence[float] | np.ndarray,
    handle_dir: Sequence[float] | np.ndarray,
    target: Sequence[float] | np.ndarray,
    *,
    t1w: str | os.PathLike[str] | T1wInfo,
    name: str = "target",
    entry: Sequence[float] | np.ndarray | None = None,
    space: str = "T1w",
) -> CoilPose:
    """Build a :class:`CoilPose` from scalp geometry (all in the T1w's RAS mm).

    ``z = -n``; ``y = -normalize(h - (h·z) z)``; ``x = y × z``; centre = ``center``.

    Parameters
    ----------
    center : array-like, shape (3,)
        Coil centre (on the scalp, or scalp plus hair/coil offset).
    normal_out : array-like, shape (3,)
        Outward scalp normal (need not be unit).
    handle_dir : array-like, shape (3,)
        Handle direction (see :func:`handle_direction`); its component along the normal is
        removed.
    target : array-like, shape (3,)
        Cortical target.
    t1w : path-like or T1wInfo
        The T1w the navigator will load (checked by :func:`read_t1w_info`).
    name : str
        Label.
    entry : array-like, optional
        Scalp entry point; defaults to ``center``.
    space : str
        Space label written to every file.

    Returns
    -------
    CoilPose

    Raises
    ------
    InputError
        Bad T1w header, degenerate directions, or a normal that points toward the target.
    """
    info = t1w if isinstance(t1w, T1wInfo) else read_t1w_info(t1w)
    c = np.asarray(center, dtype=float).reshape(-1)
    t = np.asarray(target, dtype=float).reshape(-1)
    if c.shape != (3,) or t.shape != (3,):
        raise InputError(None, "center and target must be 3-vectors (RAS mm).", "")
    z = -_unit(normal_out, "normal_out")
    h = _unit(handle_dir, "handle_dir")
    h_t = h - (h @ z) * z
    if np.linalg.norm(h_t) < 1e-6:
        raise InputError(
            None,
            "the handle direction is parallel to the scalp normal.",
            "Pass a handle direction along the scalp.",
        )
    y = -h_t / np.linalg.norm(h_t)
    x = np.cross(y, z)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, c
    e = c if entry is None else np.asarray(entry, dtype=float).reshape(-1)
    return CoilPose(
        matrix=m,
        target_mm=t,
        entry_mm=e,
        name=name,
        image_name=info.name,
        image_sha256=info.sha256,
        image_shape=info.shape,
        qform_code=info.qform_code,
        sform_code=info.sform_code,
        qform=info.qform,
        sform=info.sform,
        quatern=info.quatern,
        qoffset=info.qoffset,
        pixdim=info.pixdim,
        space=space,
    )


# --------------------------------------------------------------------------------------------
# Writing helpers
# --------------------------------------------------------------------------------------------


def _atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then ``os.replace`` it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp_beside(path)  # umask honoured (0644 under 022), not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _xml_text(s: str) -> str:
    """Remove characters XML 1.0 cannot carry (escaping of ``<&"`` etc. is done by ElementTree)."""
    return _XML_ILLEGAL.sub("", s)


def _xml_comment(s: str) -> str:
    """Text safe inside ``<!-- -->``: no ``--``, no trailing ``-``."""
    s = _xml_text(s).replace("--", "- -")
    return s + " " if s.endswith("-") else s


def _line_field(s: str, forbidden: str = "\t\r\n") -> str:
    """A single-line field for line-based formats: controls and ``forbidden`` become spaces."""
    out = "".join(" " if (ch in forbidden or ord(ch) < 32 or ord(ch) == 127) else ch for ch in s)
    return out


def _fmt(v: float) -> str:
    return repr(float(v))


def _check_pose(pose: CoilPose) -> None:
    if not isinstance(pose, CoilPose):
        raise InputError(
            None, f"expected a CoilPose, got {type(pose).__name__}.", "Use pose_from_geometry."
        )
    validate_pose(pose)


# --------------------------------------------------------------------------------------------
# Brainsight
# --------------------------------------------------------------------------------------------


def brainsight_coordinate_system(
    pose: CoilPose, version: int = 14, form: Literal["q", "s"] = "q"
) -> str:
    """Brainsight coordinate-system name for the pose's T1w header.

    Version 14 (Brainsight 2.5+): ``NIfTI:Q:<intent>`` or ``NIfTI:S:<intent>``, from the qform
    (default) or sform code. Version 12 (2.4): ``NIfTI:<intent>`` from the qform code (qform
    wins when the codes are equal; with agreeing matrices either is correct). Intent names:
    1 Scanner, 2 Aligned, 3 Talairach, 4 MNI-152, 5 Other-Template.
    """
    _check_pose(pose)
    if form not in ("q", "s"):
        raise InputError(None, f"form must be 'q' or 's', got {form!r}.", "")
    code = pose.qform_code if form == "q" else pose.sform_code
    if code not in BRAINSIGHT_INTENTS:
        raise InputError(
            pose.image_name,
            f"the T1w {form}form_code {code} has no Brainsight coordinate-system name.",
            "Set the code to 1 (scanner) or 2 (aligned).",
        )
    intent = BRAINSIGHT_INTENTS[code]
    if version >= 14:
        return f"NIfTI:{form.upper()}:{intent}"
    if version in (12, 13):
        return f"NIfTI:{intent}"
    raise InputError(
        None, f"Brainsight export version {version} is not supported.", "Use 12 or 14."
    )


def _render_brainsight(pose: CoilPose, version: int = 14, form: Literal["q", "s"] = "q") -> bytes:
    coord = brainsight_coordinate_system(pose, version, form)
    b = pose.matrix @ _SIMNIBS_TO_BRAINSIGHT
    name = _line_field(pose.name, "\t\r\n;").lstrip("#").strip() or "target"
    notes = (
        "Each column is delimited by a tab. Each value within a column is delimited by a "
        f"semicolon. tmstarget: {_line_field(pose.provenance, chr(9) + chr(10) + chr(13))}."
    )
    cols = ["Target Name", "Loc. X", "Loc. Y", "Loc. Z"] + [
        f"m{i}n{j}" for i in range(3) for j in range(3)
    ]
    # Row 1 (unchanged since the first release): the coil pose, at the coil centre on the scalp.
    # Row 2: the cortical target as a trajectory target with the coil's orientation (z out of
    # the head along the coil axis), so Brainsight shows the coil's distance to the cortical
    # point and its off-axis error, as for a target placed on the cortex by hand.
    tname = _line_field(pose.target_label or f"{pose.name} trajectory",
                        "\t\r\n;").lstrip("#").strip() or "trajectory"
    if tname == name:
        tname = f"{name} (cortical)"
    rows = [(name, b[:3, 3]), (tname, pose.target_mm)]
    lines = [
        f"# Version: {version}",
        f"# Coordinate system: {coord}",
        f"# Created by: tmstarget {__version__}",
        "# Units: millimetres, degrees, milliseconds, and microvolts",
        "# Encoding: UTF-8",
        f"# Notes: {notes}",
        "# " + "\t".join(cols),
    ]
    for label, loc in rows:
        lines.append("\t".join(
            [label]
            + [f"{float(loc[k]):.6f}" for k in range(3)]
            + [f"{b[j, i]:.8f}" for i in range(3) for j in range(3)]
        ))
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_brainsight(
    pose: CoilPose,
    path: str | os.PathLike[str],
    *,
    version: int = 14,
    form: Literal["q", "s"] = "q",
) -> Path:
    """Write a Brainsight target file (tab-separated ``.txt``).

    ``B = M @ diag(-1, 1, -1, 1)``; column ``m{i}n{j}`` holds ``B[j, i]`` (component j of axis i).
    Two targets: the first (named ``pose.name``, e.g. "... coil on scalp") has ``Loc.`` at the
    coil centre; the second (``pose.target_label``, else "<name> trajectory") is the
    cortical target with the coil's orientation (a trajectory target: Brainsight then reports
    the coil's distance and off-axis error to the cortical point). The coordinate system is named from the T1w header (see
    :func:`brainsight_coordinate_system`); the ``# Notes`` line names the space and T1w file.
    Tabs, semicolons and line breaks in the name become spaces and a leading ``#`` is dropped
    (the format has no escaping).

    Parameters
    ----------
    pose : CoilPose
    path : path-like
    version : {14, 12}
        14 for Brainsight 2.5 and later, 12 for 2.4.
    form : {"q", "s"}
        Version 14 only: name the qform (default) or the sform.
    """
    _check_pose(pose)
    return _atomic_write_bytes(path, _render_brainsight(pose, version, form))


# --------------------------------------------------------------------------------------------
# Localite
# --------------------------------------------------------------------------------------------


def _localite_space(space: str) -> str:
    s = str(space).upper()
    if s not in ("RAS", "LPS"):
        raise InputError(
            None,
            f"Localite coordinateSpace must be 'RAS' or 'LPS', got {space!r}.",
            "NIfTI sessions use RAS; DICOM sessions use LPS.",
        )
    return s


def _xml_bytes(root: ET.Element) -> bytes:
    ET.indent(root, space="    ")
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n").encode("utf-8")


def _render_localite_instrument(pose: CoilPose, coordinate_space: str) -> bytes:
    space = _localite_space(coordinate_space)
    lm = pose.matrix @ _SIMNIBS_TO_LOCALITE
    if space == "LPS":
        lm = _RAS_TO_LPS @ lm
    root = ET.Element("InstrumentMarkerList", {"coordinateSpace": space})
    root.append(
        ET.Comment(_xml_comment(f"coordinateSpace {space} of the T1w world. {pose.provenance}"))
    )
    im = ET.SubElement(
        root, "InstrumentMarker", {"alwaysVisible": "false", "index": "0", "selected": "false"}
    )
    marker = ET.SubElement(
        im,
        "Marker",
        {
            "additionalInformation": _xml_text(f"tmstarget {pose.space} {pose.image_name}"),
            "color": "#ff0000",
            "description": _xml_text(pose.name),
            "set": "true",
        },
    )
    ET.SubElement(
        marker, "Matrix4D", {f"data{i}{j}": _fmt(lm[i, j]) for i in range(4) for j in range(4)}
    )
    return _xml_bytes(root)


def write_localite_instrument_markers(
    pose: CoilPose, path: str | os.PathLike[str], *, coordinate_space: str = "RAS"
) -> Path:
    """Write a Localite ``InstrumentMarkerList`` XML with the coil pose.

    ``L = M @ P`` with ``P = [[0,0,1,0],[0,-1,0,0],[1,0,0,0],[0,0,0,1]]`` (Localite: x into the
    head, y toward the handle, z = SimNIBS x); ``Matrix4D`` attribute ``dataIJ`` = ``L[I, J]``.
    For ``coordinate_space="LPS"`` (DICOM sessions) ``L = diag(-1,-1,1,1) @ L``: the first two
    rows of the rotation *and the position's x and y* change sign. NIfTI sessions use ``"RAS"``.
    An XML comment names the space and the T1w file.
    """
    _check_pose(pose)
    return _atomic_write_bytes(path, _render_localite_instrument(pose, coordinate_space))


def _render_localite_entry_target(pose: CoilPose, coordinate_space: str) -> bytes:
    space = _localite_space(coordinate_space)

    def pt(v: np.ndarray) -> np.ndarray:
        return v * np.array([-1.0, -1.0, 1.0]) if space == "LPS" else v

    root = ET.Element("EntryTargetList", {"coordinateSpace": space})
    root.append(
        ET.Comment(_xml_comment(f"coordinateSpace {space} of the T1w world. {pose.provenance}"))
    )
    el = ET.SubElement(root, "Element", {"index": "0", "selected": "true"})
    pair_name = (pose.name if pose.target_label is None
                 else f"{pose.target_name} / {pose.entry_name}")
    pair = ET.SubElement(el, "EntryTargetPair", {"description": _xml_text(pair_name)})
    for tag, v, color, label in (
        ("Entry", pose.entry_mm, "#00ff00", pose.entry_label or pose.name),
        ("Target", pose.target_mm, "#ff0000", pose.target_name),
    ):
        node = ET.SubElement(pair, tag)
        mk = ET.SubElement(
            node, "Marker", {"color": color, "description": _xml_text(label), "set": "true"}
        )
        p = pt(v)
        ET.SubElement(mk, "ColVec3D", {f"data{k}": _fmt(p[k]) for k in range(3)})
    return _xml_bytes(root)


def write_localite_entry_target(
    pose: CoilPose, path: str | os.PathLike[str], *, coordinate_space: str = "RAS"
) -> Path:
    """Write a Localite ``EntryTargetList`` XML (entry and target as ``ColVec3D``, no orientation).

    Layout: ``EntryTargetList/Element/EntryTargetPair/{Entry,Target}/Marker/ColVec3D``
    (``data0..2`` = x, y, z mm). For ``"LPS"`` x and y change sign.
    """
    _check_pose(pose)
    return _atomic_write_bytes(path, _render_localite_entry_target(pose, coordinate_space))


# --------------------------------------------------------------------------------------------
# ANT Neuro visor2
# --------------------------------------------------------------------------------------------


def _render_ant(pose: CoilPose) -> bytes:
    doc = {
        "Configuration": {
            "SourceInfo": {
                "AppName": "tmstarget",
                "AppVersion": __version__,
                "Space": pose.space,
                "AssociatedImageFile": pose.image_name,
                "AssociatedImageSHA256": pose.image_sha256,
                "Note": pose.provenance,
            },
            "AssociatedImageInfo": {
                "NIfTI_quatern": [float(v) for v in pose.quatern],
                "NIfTI_qoffset": [float(v) for v in pose.qoffset],
                "NIfTI_pixdim": [float(v) for v in pose.pixdim],
            },
        },
        "TargetMarkers": [
            {
                "CoilTarget": {
                    "Name": pose.name,
                    "CoordinateSystem": "ASSOCIATED_IMAGE",
                    "PositionalUnit": "mm",
                    "CoilAxesConvention": "simnibs",
                    "CoilInfo": {"Type": "", "Id": ""},
                    "CoilPose": {
                        "RigidTransformMatrix4x4": [[float(v) for v in row] for row in pose.matrix]
                    },
                }
            }
        ],
    }
    return (json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def write_ant_mrk(pose: CoilPose, path: str | os.PathLike[str]) -> Path:
    """Write an ANT Neuro visor2 ``.mrk`` (JSON) marker file.

    ``TargetMarkers[0].CoilTarget`` with ``CoordinateSystem "ASSOCIATED_IMAGE"``,
    ``PositionalUnit "mm"``, ``CoilAxesConvention "simnibs"`` and
    ``CoilPose.RigidTransformMatrix4x4`` = ``M`` (a list of rows). ``Configuration.
    AssociatedImageInfo`` binds the file to the T1w qform (``NIfTI_quatern``, ``NIfTI_qoffset``,
    ``NIfTI_pixdim`` copied from the header); ``SourceInfo`` names the space and T1w file.
    """
    _check_pose(pose)
    return _atomic_write_bytes(path, _render_ant(pose))


# --------------------------------------------------------------------------------------------
# 3D Slicer
# --------------------------------------------------------------------------------------------


def _render_slicer_json(
    pose: CoilPose, descriptions: tuple[str, str] | None = None, markup_description: str | None = None
) -> bytes:
    orient = [float(v) for v in pose.matrix[:3, :3].reshape(-1)]  # row-major; columns = axes

    def cp(idx: int, label: str, pos: np.ndarray, desc: str) -> dict[str, Any]:
        return {
            "id": str(idx),
            "label": label,
            "description": desc,
            "associatedNodeID": "",
            "position": [float(v) for v in pos],
            "orientation": orient,
            "selected": True,
            "locked": True,
            "visibility": True,
            "positionStatus": "defined",
        }

    tdesc, edesc = descriptions or (
        "cortical target; coil orientation (columns x, y away from handle, "
        f"z into head); {pose.provenance}",
        f"scalp entry; {pose.provenance}",
    )
    doc = {
        "@schema": _SLICER_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": "RAS",
                "coordinateUnits": "mm",
                "name": pose.name,
                "description": pose.provenance if markup_description is None else markup_description,
                "locked": True,
                "labelFormat": "%N-%d",
                "controlPoints": [
                    cp(1, pose.target_name, pose.target_mm, tdesc),
                    cp(2, pose.entry_name, pose.entry_mm, edesc),
                ],
            }
        ],
    }
    return (json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def write_slicer_markups_json(pose: CoilPose, path: str | os.PathLike[str]) -> Path:
    """Write a 3D Slicer point list ``.mrk.json`` (RAS, mm).

    Two control points: the target (label = name) and the scalp entry (``"<name> entry"``),
    each with ``orientation`` = ``M[:3, :3]`` flattened row-major, so
    ``[o[0], o[3], o[6]]`` is the coil x axis (Slicer schema convention). The markup
    ``description`` names the space and the T1w file.
    """
    _check_pose(pose)
    return _atomic_write_bytes(path, _render_slicer_json(pose))


def _render_fcsv(pose: CoilPose, descriptions: tuple[str, str] | None = None) -> bytes:
    buf = io.StringIO()
    buf.write("# Markups fiducial file version = 4.11\n")
    buf.write("# CoordinateSystem = RAS\n")
    buf.write("# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n")
    w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    prov = _line_field(pose.provenance)
    name = _line_field(pose.name)
    tdesc, edesc = (
        (_line_field(descriptions[0]), _line_field(descriptions[1]))
        if descriptions
        else (f"cortical target; {prov}", f"scalp entry; {prov}")
    )
    for idx, label, pos, desc in (
        (1, _line_field(pose.target_name), pose.target_mm, tdesc),
        (2, _line_field(pose.entry_name), pose.entry_mm, edesc),
    ):
        w.writerow(
            [idx, _fmt(pos[0]), _fmt(pos[1]), _fmt(pos[2]), 0, 0, 0, 1, 1, 1, 1, label, desc, ""]
        )
    return buf.getvalue().encode("utf-8")


def write_fcsv(pose: CoilPose, path: str | os.PathLike[str]) -> Path:
    """Write a legacy 3D Slicer ``.fcsv`` (``# CoordinateSystem = RAS``), positions only.

    Rows: target and entry. The orientation columns hold Slicer's default and carry no meaning
    (readers disagree on them). Fields are CSV-quoted; line breaks in labels become spaces.
    The ``desc`` column names the space and the T1w file.
    """
    _check_pose(pose)
    return _atomic_write_bytes(path, _render_fcsv(pose))


# --------------------------------------------------------------------------------------------
# Vendor-neutral CSV / JSON
# --------------------------------------------------------------------------------------------


def _neutral_record(pose: CoilPose) -> dict[str, Any]:
    return {
        "name": pose.name,
        "space": pose.space,
        "coordinate_system": "RAS",
        "units": "mm",
        "image_name": pose.image_name,
        "image_sha256": pose.image_sha256,
        "image_shape": list(pose.image_shape),
        "qform_code": pose.qform_code,
        "sform_code": pose.sform_code,
        "qform": [[float(v) for v in r] for r in pose.qform],
        "sform": [[float(v) for v in r] for r in pose.sform],
        "target_mm": [float(v) for v in pose.target_mm],
        "entry_mm": [float(v) for v in pose.entry_mm],
        "coil_center_mm": [float(v) for v in pose.center_mm],
        "normal_out": [float(v) for v in pose.normal_out],
        "handle": [float(v) for v in pose.handle],
        "coil_matrix": [[float(v) for v in r] for r in pose.matrix],
        "coil_axes_convention": (
            "SimNIBS: columns x, y, z, centre; y points away from the handle; z points into "
            "the head (= -normal_out); x = y cross z"
        ),
        "tmstarget_version": __version__,
        "note": "research use only; not a medical device",
        "target_label": pose.target_name,
        "entry_label": pose.entry_name,
        "status": pose.note,
    }


_CSV_VECTORS = ("target", "entry", "coil_center", "normal_out", "handle")


def _render_csv(pose: CoilPose) -> bytes:
    rec = _neutral_record(pose)
    header = [
        "name",
        "space",
        "coordinate_system",
        "units",
        "image_name",
        "image_sha256",
        "qform_code",
        "sform_code",
    ]
    row: list[Any] = [rec[k] for k in header]
    for vec in _CSV_VECTORS:
        key = vec + "_mm" if vec in ("target", "entry", "coil_center") else vec
        for axis, v in zip("xyz", rec[key]):
            header.append(f"{vec}_{axis}")
            row.append(_fmt(v))
    for mat in ("coil_matrix", "qform", "sform"):
        for i in range(4):
            for j in range(4):
                header.append(f"{mat}_{i}{j}")
                row.append(_fmt(rec[mat][i][j]))
    for k in ("target_label", "entry_label", "status"):  # appended: earlier columns unchanged
        header.append(k)
        row.append(_line_field(rec[k]))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(header)
    w.writerow(row)
    return buf.getvalue().encode("utf-8")


def write_csv(pose: CoilPose, path: str | os.PathLike[str]) -> Path:
    """Write the vendor-neutral CSV (one header row, one data row, RFC-4180 quoting).

    Columns: name, space, coordinate_system, units, image_name, image_sha256, qform_code,
    sform_code, ``{target,entry,coil_center,normal_out,handle}_{x,y,z}`` (RAS mm / unit
    vectors), ``coil_matrix_IJ``, ``qform_IJ``, ``sform_IJ`` (row I, column J).
    """
    _check_pose(pose)
    return _atomic_write_bytes(path, _render_csv(pose))


def _render_json(pose: CoilPose) -> bytes:
    return (
        json.dumps(_neutral_record(pose), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    ).encode("utf-8")


def write_json(pose: CoilPose, path: str | os.PathLike[str]) -> Path:
    """Write the vendor-neutral JSON (same content as :func:`write_csv`, matrices as row lists)."""
    _check_pose(pose)
    return _atomic_write_bytes(path, _render_json(pose))


# --------------------------------------------------------------------------------------------
# NIfTI sphere
# --------------------------------------------------------------------------------------------


def _load_matching_t1w(
    pose: CoilPose, t1w_path: str | os.PathLike[str]
) -> tuple[nb.Nifti1Image, T1wInfo]:
    info = read_t1w_info(t1w_path)
    if info.sha256 != pose.image_sha256:
        raise InputError(
            t1w_path,
            f"this T1w (sha256 {info.sha256[:12]}...) is not the file the pose was planned on "
            f"('{pose.image_name}', sha256 {pose.image_sha256[:12]}...).",
            "Export with the same T1w file that pose_from_geometry was given.",
        )
    return nb.load(str(t1w_path)), info  # type: ignore[return-value]


def _render_sphere(pose: CoilPose, img: nb.Nifti1Image, radius_mm: float) -> bytes:
    if not (radius_mm > 0 and math.isfinite(radius_mm)):
        raise InputError(None, f"sphere radius must be positive, got {radius_mm}.", "")
    hdr = img.header
    aff = np.asarray(hdr.get_qform(), dtype=float)  # == sform to 1e-3 mm (checked)
    shape = np.array(img.shape[:3])
    inv = np.linalg.inv(aff)
    centre_vox = inv[:3, :3] @ pose.target_mm + inv[:3, 3]
    half = radius_mm * np.linalg.norm(inv[:3, :3], axis=1) + 1.0
    lo = np.maximum(np.floor(centre_vox - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre_vox + half).astype(int), shape - 1)
    data = np.zeros(tuple(int(s) for s in shape), dtype=np.uint8)
    if np.all(hi >= lo):
        ii, jj, kk = np.meshgrid(*(np.arange(a, b + 1) for a, b in zip(lo, hi)), indexing="ij")
        vox = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(float)
        world = vox @ aff[:3, :3].T + aff[:3, 3]
        inside = np.linalg.norm(world - pose.target_mm, axis=1) <= radius_mm
        data[ii.ravel()[inside], jj.ravel()[inside], kk.ravel()[inside]] = 1
    if not data.any():
        raise InputError(
            pose.image_name,
            f"the {radius_mm} mm sphere at target {np.round(pose.target_mm, 2).tolist()} contains "
            "no voxel of the T1w grid (target outside the image, or radius below the voxel size).",
            "Check the target and use a larger radius.",
        )
    new_hdr = hdr.copy()
    new_hdr.set_data_dtype(np.uint8)
    out = nb.Nifti1Image(data, None, header=new_hdr)
    out.header.set_qform(np.asarray(hdr.get_qform()), code=int(hdr["qform_code"]))
    out.header.set_sform(np.asarray(hdr.get_sform()), code=int(hdr["sform_code"]))
    out.header["scl_slope"] = 1.0
    out.header["scl_inter"] = 0.0
    out.header["cal_min"] = 0.0
    out.header["cal_max"] = 1.0
    out.header["descrip"] = _line_field(
        f"tmstarget sphere {radius_mm:g}mm {pose.space} {pose.image_name}"
    ).encode("ascii", "replace")[:79]
    out.header["intent_name"] = b"tmstarget"
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(out.to_bytes())
    return buf.getvalue()


def write_sphere(
    pose: CoilPose,
    t1w_path: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    radius_mm: float = 5.0,
) -> Path:
    """Write a ``.nii.gz`` sphere (uint8, 1 inside) around the target on the T1w grid.

    Distances are measured in world mm (voxel centres through the T1w affine), so the sphere
    is right for any storage orientation, voxel size or obliquity. The header is a copy of the
    T1w's (same qform/sform and codes); ``descrip`` names the space and the T1w file.

    Raises
    ------
    InputError
        If ``t1w_path`` is not the file the pose was planned on, or the sphere is empty.
    """
    _check_pose(pose)
    img, _ = _load_matching_t1w(pose, t1w_path)
    return _atomic_write_bytes(path, _render_sphere(pose, img, radius_mm))


# --------------------------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------------------------

#: Output file suffix per format written by :func:`write_all`.
ALL_FORMATS: dict[str, str] = {
    "brainsight": "_brainsight.txt",
    "brainsight_v12": "_brainsight-v12.txt",
    "localite_instrument_markers": "_localite-InstrumentMarker.xml",
    "localite_entry_target": "_localite-EntryTarget.xml",
    "ant_mrk": "_visor2.mrk",
    "slicer_mrk_json": "_slicer.mrk.json",
    "fcsv": "_slicer.fcsv",
    "csv": "_coilpose.csv",
    "json": "_coilpose.json",
    "nifti_sphere": "_target-sphere.nii.gz",
}


def write_all(
    pose: CoilPose,
    t1w_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    prefix: str,
    *,
    sphere_radius_mm: float = 5.0,
    localite_space: str = "RAS",
) -> dict[str, Path]:
    """Write every export format into ``out_dir``.

    Everything is checked and rendered in memory first; only then are the files written
    (each atomically). A refusal therefore leaves ``out_dir`` untouched.

    Parameters
    ----------
    pose : CoilPose
    t1w_path : path-like
        The T1w the pose was planned on (checked by SHA-256 and header rules).
    out_dir : path-like
    prefix : str
        File-name prefix, e.g. ``"sub-01_target-dlpfc"``; must not contain path separators.
    sphere_radius_mm : float
    localite_space : {"RAS", "LPS"}
        ``RAS`` for NIfTI sessions (default), ``LPS`` for DICOM sessions.

    Returns
    -------
    dict
        Format name (keys of :data:`ALL_FORMATS`) to written path.
    """
    _check_pose(pose)
    if not prefix or "/" in prefix or "\\" in prefix or prefix in (".", ".."):
        raise InputError(
            None, f"invalid file-name prefix {prefix!r}.", "Pass a plain file-name prefix."
        )
    img, _ = _load_matching_t1w(pose, t1w_path)
    rendered = {
        "brainsight": _render_brainsight(pose, 14),
        "brainsight_v12": _render_brainsight(pose, 12),
        "localite_instrument_markers": _render_localite_instrument(pose, localite_space),
        "localite_entry_target": _render_localite_entry_target(pose, localite_space),
        "ant_mrk": _render_ant(pose),
        "slicer_mrk_json": _render_slicer_json(pose),
        "fcsv": _render_fcsv(pose),
        "csv": _render_csv(pose),
        "json": _render_json(pose),
        "nifti_sphere": _render_sphere(pose, img, sphere_radius_mm),
    }
    out = Path(out_dir)
    return {
        fmt: _atomic_write_bytes(out / f"{prefix}{ALL_FORMATS[fmt]}", data)
        for fmt, data in rendered.items()
    }
