"""Independent readers for neuronavigation files (Brainsight, Localite, ANT visor2, 3D Slicer).

These readers are written separately from :mod:`tmstarget.navigation` (they share no code or
constants with the writers) and parse the files generically: ``csv`` for Brainsight text and
Slicer ``.fcsv``, :mod:`xml.etree.ElementTree` for Localite, :mod:`json` for ANT and Slicer
``.mrk.json``. They serve two purposes: round-trip tests of our own exports, and reading real
vendor files (for instance to check a session's recorded coil poses against the plan).

Every pose is returned as a 4x4 matrix in the *SimNIBS coil convention*: columns x, y, z and
the coil centre, with y pointing away from the handle and z into the head. Positions are
returned in RAS when the file's coordinate system allows it (RAS or LPS world); frames that
cannot be converted without the image (Brainsight's own voxel-corner LPS frame, Localite
"MNI") are returned as they are and labelled.

Vendor coil axes as read here:

* Brainsight: x = -SimNIBS x, y = SimNIBS y (away from the handle), z = out of the head.
  ``m{i}n{j}`` is component j of Brainsight axis i.
* Localite: x into the head (= SimNIBS z), y toward the handle (= -SimNIBS y),
  z = SimNIBS x. ``Matrix4D`` attribute ``dataIJ`` is row I, column J.
* ANT visor2 (``CoilAxesConvention "simnibs"``) and Slicer ``orientation``: SimNIBS axes
  directly (Slicer: 9 numbers row-major, columns are axes).
"""

from __future__ import annotations

import csv
import json
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AntFile",
    "AntMarker",
    "BrainsightFile",
    "BrainsightRow",
    "FcsvFile",
    "FcsvPoint",
    "LocaliteEntryTarget",
    "LocaliteFile",
    "LocaliteMarker",
    "SlicerPoint",
    "nifti_quaternion_to_affine",
    "read_ant_mrk",
    "read_brainsight",
    "read_fcsv",
    "read_localite_entry_target",
    "read_localite_instrument_markers",
    "read_localite_markers",
    "read_slicer_markups_json",
    "rotation_checks",
]


def rotation_checks(rot: np.ndarray) -> tuple[float, float]:
    """Return ``(det, max|RᵀR − I|)`` of a 3x3 matrix (NaN for a non-finite one)."""
    r = np.asarray(rot, dtype=float)
    if r.shape != (3, 3) or not np.all(np.isfinite(r)):
        return math.nan, math.nan
    return float(np.linalg.det(r)), float(np.abs(r.T @ r - np.eye(3)).max())


def _num(text: str | None) -> float:
    if text is None:
        return math.nan
    t = text.strip()
    if t == "" or t.lower() in ("(null)", "null", "nan", "none"):
        return math.nan
    try:
        return float(t)
    except ValueError:
        return math.nan


def _xy_negate(v: np.ndarray) -> np.ndarray:
    """LPS <-> RAS for a point or a stack of column vectors: negate the first two components."""
    out = np.array(v, dtype=float, copy=True)
    out[0] = -out[0]
    out[1] = -out[1]
    return out


# =============================================================================================
# Brainsight
# =============================================================================================


@dataclass
class BrainsightRow:
    """One row of a Brainsight export that carries a position (and usually an orientation).

    Attributes
    ----------
    section : str
        First column name of the section (``"Target Name"``, ``"Sample Name"``, ...).
    name : str
    fields : dict
        Every column of the row, by column name.
    position : ndarray, shape (3,)
        ``Loc. X/Y/Z`` in the file's coordinate system.
    brainsight_matrix : ndarray, shape (4, 4) or None
        Axes as stored (Brainsight convention), position in column 3.
    matrix : ndarray, shape (4, 4) or None
        The same pose in SimNIBS axes (x and z reversed).
    det, orthonormality_error : float
        Of the stored rotation.
    left_handed : bool
        ``det < 0``.
    z_points_inward : bool or None
        Brainsight's z axis should point *out of* the head. True when it points toward the head
        centre estimated from the file's planned landmarks; None when that cannot be judged.
    samples_flipped : bool or None
        Targets only: the samples recorded for this target (``Assoc. Target``) have their x and
        z axes reversed relative to the target while y agrees. None without usable samples.
    repaired_suspect : bool
        Targets only: the row looks like a left-handed matrix that Brainsight "repaired" (see
        :func:`read_brainsight`).
    evidence : str
        Human-readable reasons for the flags.
    """

    section: str
    name: str
    fields: dict[str, str]
    position: np.ndarray
    brainsight_matrix: np.ndarray | None
    matrix: np.ndarray | None
    det: float
    orthonormality_error: float
    left_handed: bool
    z_points_inward: bool | None = None
    samples_flipped: bool | None = None
    repaired_suspect: bool = False
    evidence: str = ""


@dataclass
class BrainsightFile:
    """A parsed Brainsight export."""

    path: Path
    version: int | None
    coordinate_system: str
    header: dict[str, str]
    sections: dict[str, list[dict[str, str]]]
    targets: list[BrainsightRow]
    samples: list[BrainsightRow]
    landmarks: dict[str, np.ndarray]
    head_centre: np.ndarray | None

    @property
    def is_nifti_world(self) -> bool:
        """True when positions are NIfTI world (RAS) mm (``NIfTI:...`` coordinate systems)."""
        return self.coordinate_system.lower().startswith("nifti")


def _brainsight_row(section: str, rec: dict[str, str]) -> BrainsightRow | None:
    if not all(k in rec for k in ("Loc. X", "Loc. Y", "Loc. Z")):
        return None
    pos = np.array([_num(rec["Loc. X"]), _num(rec["Loc. Y"]), _num(rec["Loc. Z"])])
    has_rot = all(f"m{a}n{c}" in rec for a in range(3) for c in range(3))
    bmat = mat = None
    det = orth = math.nan
    if has_rot:
        bmat = np.eye(4)
        for a in range(3):  # axis a
            for c in range(3):  # component c
                bmat[c, a] = _num(rec[f"m{a}n{c}"])
        bmat[:3, 3] = pos
        det, orth = rotation_checks(bmat[:3, :3])
        mat = bmat.copy()
        mat[:3, 0] = -bmat[:3, 0]
        mat[:3, 2] = -bmat[:3, 2]
    return BrainsightRow(
        section=section,
        name=rec.get(section, ""),
        fields=rec,
        position=pos,
        brainsight_matrix=bmat,
        matrix=mat,
        det=det,
        orthonormality_error=orth,
        left_handed=bool(det < 0) if math.isfinite(det) else False,
    )


def read_brainsight(path: str | os.PathLike[str]) -> BrainsightFile:
    """Read a Brainsight ``.txt`` export (any version; targets, samples, landmarks).

    Header lines ``# Key: value`` come first; each section starts with a line
    ``# <Column 1>\\t<Column 2>...``; data rows are tab-separated. Matrices are returned both as
    stored and in SimNIBS axes (Brainsight x and z reversed). Positions stay in the file's
    coordinate system (``coordinate_system``); only ``NIfTI:*`` systems are NIfTI world RAS —
    ``Brainsight`` is the program's own LPS frame with its origin at a voxel corner.

    Detecting a silently "repaired" target
    --------------------------------------
    Brainsight cannot hold a left-handed coil matrix; when a target is imported with one, it
    negates the x column and keeps the row (no warning). Such a matrix has det +1 again, so
    det alone cannot reveal it. What remains wrong is the *z axis*: the typical cause is a
    SimNIBS-convention matrix (z into the head) with only z reversed, which is left-handed;
    after Brainsight negates x, the target is the intended pose rotated 180 degrees about y —
    x and z reversed, y (handle) unchanged, the coil upside down. Two independent clues are
    used for every target row:

    1. ``samples_flipped``: the samples recorded against the target (``Assoc. Target`` column,
       within 30 mm of it; tracking glitches far away are ignored) were held with the coil the
       right way up; when, in the median, their x and z axes are reversed relative to the
       target (cosine < -0.5) while y agrees (cosine > 0.5), the target carries exactly the
       repair signature. The file's own ``Angular Error`` for those samples is then ~180°.
    2. ``z_points_inward``: Brainsight's z axis must point out of the head; the head centre is
       estimated as the centroid of the planned landmarks (nasion, tragi, ...). A target whose
       z axis points toward that centre (cosine < -0.25 with the outward direction) is upside
       down.

    ``repaired_suspect`` is set when either clue fires (and the row is not itself left-handed,
    which is reported as ``left_handed``). In the vendor file shipped with the tests, target
    ``PMC0.5`` shows both clues (samples at ~178° angular error, z pointing into the head).
    """
    p = Path(path)
    header: dict[str, str] = {}
    sections: dict[str, list[dict[str, str]]] = {}
    columns: list[str] | None = None
    current: str | None = None
    with open(p, encoding="utf-8-sig", newline="") as fh:
        for raw in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if not raw or (len(raw) == 1 and not raw[0].strip()):
                continue
            first = raw[0]
            if first.startswith("#"):
                body = first[1:].strip()
                if len(raw) > 1:  # a column line
                    columns = [body] + [c.strip() for c in raw[1:]]
                    current = body
                    sections.setdefault(current, [])
                elif ":" in body and current is None:
                    key, _, value = body.partition(":")
                    header[key.strip()] = value.strip()
                continue
            if columns is None or current is None:
                continue
            rec = {col: raw[i] if i < len(raw) else "" for i, col in enumerate(columns)}
            sections[current].append(rec)

    version: int | None
    try:
        version = int(header.get("Version", "").strip())
    except ValueError:
        version = None
    coord = header.get("Coordinate system", "")

    landmarks: dict[str, np.ndarray] = {}
    for sec_name, recs in sections.items():
        if sec_name.lower().startswith("planned landmark"):
            for rec in recs:
                v = np.array(
                    [_num(rec.get("Loc. X")), _num(rec.get("Loc. Y")), _num(rec.get("Loc. Z"))]
                )
                if np.all(np.isfinite(v)):
                    landmarks[rec.get(sec_name, "")] = v
    centre = np.mean(list(landmarks.values()), axis=0) if len(landmarks) >= 3 else None

    targets: list[BrainsightRow] = []
    samples: list[BrainsightRow] = []
    for sec_name, recs in sections.items():
        low = sec_name.lower()
        if low.startswith("target"):
            dest = targets
        elif low.startswith("sample"):
            dest = samples
        else:
            continue
        for rec in recs:
            row = _brainsight_row(sec_name, rec)
            if row is not None:
                dest.append(row)

    for row in targets + samples:
        if row.brainsight_matrix is None or centre is None or not np.all(np.isfinite(row.position)):
            continue
        out = row.position - centre
        dist = float(np.linalg.norm(out))
        zb = row.brainsight_matrix[:3, 2]
        if dist > 20.0 and np.all(np.isfinite(zb)):
            cosv = float(zb @ out / (dist * max(np.linalg.norm(zb), 1e-12)))
            row.z_points_inward = cosv < -0.25
            if row.z_points_inward:
                row.evidence += f"z axis points toward the landmark centroid (cos {cosv:+.2f}); "

    for tgt in targets:
        tb = tgt.brainsight_matrix
        if tb is None or not np.all(np.isfinite(tb)) or not (tgt.orthonormality_error < 1e-2):
            continue
        mine = [
            s
            for s in samples
            if s.fields.get("Assoc. Target", "") == tgt.name
            and s.brainsight_matrix is not None
            and s.orthonormality_error < 1e-2
            and float(np.linalg.norm(s.position - tgt.position)) <= 30.0
        ]
        if mine:
            cos_axes = np.array(
                [[float(s.brainsight_matrix[:3, a] @ tb[:3, a]) for a in range(3)] for s in mine]
            )
            cx, cy, cz = np.median(cos_axes, axis=0)
            tgt.samples_flipped = bool(cx < -0.5 and cy > 0.5 and cz < -0.5)
            if tgt.samples_flipped:
                ang = [_num(s.fields.get("Angular Error")) for s in mine]
                ang = [a for a in ang if math.isfinite(a)]
                med = f", file's median Angular Error {np.median(ang):.1f} deg" if ang else ""
                tgt.evidence += (
                    f"{len(mine)} associated samples have x and z reversed relative to the target "
                    f"(median cos x {cx:+.2f}, y {cy:+.2f}, z {cz:+.2f}{med}); "
                )
        if not tgt.left_handed:
            tgt.repaired_suspect = bool(tgt.samples_flipped) or bool(tgt.z_points_inward)
        else:
            tgt.evidence += f"left-handed matrix (det {tgt.det:+.4f}); "

    return BrainsightFile(
        path=p,
        version=version,
        coordinate_system=coord,
        header=header,
        sections=sections,
        targets=targets,
        samples=samples,
        landmarks=landmarks,
        head_centre=centre,
    )


# =============================================================================================
# Localite
# =============================================================================================


@dataclass
class LocaliteMarker:
    """One ``Matrix4D`` marker from a Localite XML file.

    ``matrix`` is in SimNIBS axes; in RAS if the file is RAS or LPS, otherwise (``"MNI"``) in
    the file's frame. ``untracked`` marks Localite's placeholder for an untracked coil (the
    SimNIBS identity: rotation identity and position at the origin).
    """

    kind: str
    name: str
    localite_matrix: np.ndarray
    matrix: np.ndarray
    coordinate_space: str
    det: float
    orthonormality_error: float
    untracked: bool
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class LocaliteFile:
    """A parsed Localite marker list."""

    path: Path
    root_tag: str
    coordinate_space: str
    markers: list[LocaliteMarker]
    comments: list[str]

    @property
    def is_ras(self) -> bool:
        """True when ``matrix`` positions are RAS world mm (file was RAS or LPS)."""
        return self.coordinate_space.upper() in ("RAS", "LPS")


def _parse_xml_with_comments(path: Path) -> tuple[ET.Element, list[str]]:
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    tree = ET.parse(path, parser=parser)
    root = tree.getroot()
    comments = [str(el.text) for el in root.iter() if el.tag is ET.Comment]
    return root, comments


def read_localite_markers(path: str | os.PathLike[str]) -> LocaliteFile:
    """Read every ``Matrix4D`` of a Localite InstrumentMarker or TriggerMarker XML file.

    Attributes are read by name (``data00`` ... ``data33``, any order). The marker name is the
    ``description`` of the element that holds the matrix. Localite axes (x into the head, y to
    the handle, z lateral) become SimNIBS axes: ``x = L_z``, ``y = -L_y``, ``z = L_x``. An
    ``"LPS"`` file is converted to RAS (x and y of every axis and of the position negated).
    """
    p = Path(path)
    root, comments = _parse_xml_with_comments(p)
    space = (root.get("coordinateSpace") or "").strip()
    parent = {child: par for par in root.iter() for child in par}
    markers: list[LocaliteMarker] = []
    for m4 in root.iter("Matrix4D"):
        lm = np.full((4, 4), math.nan)
        for r in range(4):
            for c in range(4):
                lm[r, c] = _num(m4.get(f"data{r}{c}"))
        holder = parent.get(m4, root)
        top = holder
        while parent.get(top) is not None and parent[top] is not root:
            top = parent[top]
        mat = np.eye(4)
        mat[:3, 0] = lm[:3, 2]
        mat[:3, 1] = -lm[:3, 1]
        mat[:3, 2] = lm[:3, 0]
        mat[:3, 3] = lm[:3, 3]
        mat[3] = lm[3]
        if space.upper() == "LPS":
            mat[:3, :] = _xy_negate(mat[:3, :])
        det, orth = rotation_checks(lm[:3, :3])
        untracked = bool(np.allclose(mat, np.eye(4), atol=1e-9))
        markers.append(
            LocaliteMarker(
                kind=str(top.tag),
                name=holder.get("description", "") or "",
                localite_matrix=lm,
                matrix=mat,
                coordinate_space=space,
                det=det,
                orthonormality_error=orth,
                untracked=untracked,
                attributes=dict(holder.attrib),
            )
        )
    return LocaliteFile(
        path=p, root_tag=str(root.tag), coordinate_space=space, markers=markers, comments=comments
    )


def read_localite_instrument_markers(path: str | os.PathLike[str]) -> LocaliteFile:
    """Read a Localite ``InstrumentMarkerList`` (see :func:`read_localite_markers`)."""
    return read_localite_markers(path)


@dataclass
class LocaliteEntryTarget:
    """An entry/target pair (positions in RAS when the file is RAS or LPS)."""

    name: str
    entry: np.ndarray
    target: np.ndarray
    coordinate_space: str


def read_localite_entry_target(
    path: str | os.PathLike[str],
) -> tuple[list[LocaliteEntryTarget], list[str]]:
    """Read a Localite ``EntryTargetList``: every element with ``Entry`` and ``Target`` children.

    The first ``ColVec3D`` (``data0..2``) under each gives the point. Returns the pairs and the
    file's XML comments.
    """
    p = Path(path)
    root, comments = _parse_xml_with_comments(p)
    space = (root.get("coordinateSpace") or "").strip()
    pairs: list[LocaliteEntryTarget] = []

    def vec(node: ET.Element) -> np.ndarray:
        cv = next(node.iter("ColVec3D"), None)
        if cv is None:
            return np.full(3, math.nan)
        v = np.array([_num(cv.get(f"data{k}")) for k in range(3)])
        return _xy_negate(v) if space.upper() == "LPS" else v

    for node in root.iter():
        kids = {c.tag: c for c in node if isinstance(c.tag, str)}
        if "Entry" in kids and "Target" in kids:
            name = node.get("description")
            if name is None:
                mk = next(kids["Target"].iter("Marker"), None)
                name = mk.get("description", "") if mk is not None else ""
            pairs.append(
                LocaliteEntryTarget(
                    name=name,
                    entry=vec(kids["Entry"]),
                    target=vec(kids["Target"]),
                    coordinate_space=space,
                )
            )
    return pairs, comments


# =============================================================================================
# ANT Neuro visor2
# =============================================================================================


def nifti_quaternion_to_affine(
    quatern: list[float] | tuple[float, ...],
    qoffset: list[float] | tuple[float, ...],
    pixdim: list[float] | tuple[float, ...],
) -> np.ndarray:
    """qform matrix from NIfTI quaternion fields (NIfTI-1 method 2)."""
    b, c, d = (float(v) for v in quatern)
    a = math.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rot = np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ]
    )
    qfac = -1.0 if float(pixdim[0]) < 0 else 1.0
    out = np.eye(4)
    out[:3, :3] = rot * np.array([float(pixdim[1]), float(pixdim[2]), qfac * float(pixdim[3])])
    out[:3, 3] = [float(v) for v in qoffset]
    return out


@dataclass
class AntMarker:
    """One ``CoilTarget`` of an ANT visor2 ``.mrk`` file (SimNIBS axes, mm)."""

    name: str
    matrix: np.ndarray
    det: float
    orthonormality_error: float
    raw: dict[str, Any]


@dataclass
class AntFile:
    """A parsed ANT visor2 ``.mrk`` file."""

    path: Path
    markers: list[AntMarker]
    image_info: dict[str, Any] | None
    qform: np.ndarray | None
    source_info: dict[str, Any]


def read_ant_mrk(path: str | os.PathLike[str]) -> AntFile:
    """Read an ANT Neuro visor2 ``.mrk`` (JSON) file.

    Only ``CoilTarget`` entries with ``PositionalUnit "mm"`` and ``CoilAxesConvention
    "simnibs"`` are accepted (older metre/quaternion files raise ``ValueError`` rather than
    being mixed in). ``qform`` is rebuilt from ``AssociatedImageInfo`` so it can be compared with
    the T1w header.
    """
    p = Path(path)
    doc = json.loads(p.read_text(encoding="utf-8"))
    conf = doc.get("Configuration") or {}
    info = conf.get("AssociatedImageInfo")
    qform = None
    if info and all(k in info for k in ("NIfTI_quatern", "NIfTI_qoffset", "NIfTI_pixdim")):
        qform = nifti_quaternion_to_affine(
            info["NIfTI_quatern"], info["NIfTI_qoffset"], info["NIfTI_pixdim"]
        )
    markers: list[AntMarker] = []
    for item in doc.get("TargetMarkers") or []:
        ct = item.get("CoilTarget") if isinstance(item, dict) else None
        if ct is None:
            continue
        unit = ct.get("PositionalUnit")
        conv = ct.get("CoilAxesConvention")
        if unit != "mm" or conv != "simnibs":
            raise ValueError(
                f"{p}: CoilTarget with PositionalUnit={unit!r}, CoilAxesConvention={conv!r}; "
                "only 'mm'/'simnibs' is read"
            )
        mat = np.asarray(ct["CoilPose"]["RigidTransformMatrix4x4"], dtype=float).reshape(4, 4)
        det, orth = rotation_checks(mat[:3, :3])
        markers.append(
            AntMarker(
                name=str(ct.get("Name", "")), matrix=mat, det=det, orthonormality_error=orth, raw=ct
            )
        )
    return AntFile(
        path=p,
        markers=markers,
        image_info=info,
        qform=qform,
        source_info=dict(conf.get("SourceInfo") or {}),
    )


# =============================================================================================
# 3D Slicer
# =============================================================================================


@dataclass
class SlicerPoint:
    """A control point from a Slicer ``.mrk.json`` (RAS mm; orientation columns are axes)."""

    markup_name: str
    label: str
    description: str
    position: np.ndarray
    orientation: np.ndarray | None
    coordinate_system: str
    raw: dict[str, Any]


def read_slicer_markups_json(path: str | os.PathLike[str]) -> list[SlicerPoint]:
    """Read every control point of a Slicer markups ``.mrk.json`` file, in RAS mm.

    ``coordinateSystem`` defaults to ``"LPS"`` when absent (schema default); LPS positions and
    orientations are converted to RAS. ``coordinateUnits`` ``"um"`` is converted to mm.
    ``orientation`` (9 numbers, row-major) becomes a 3x3 matrix whose columns are the axes.
    """
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    points: list[SlicerPoint] = []
    for mk in doc.get("markups") or []:
        cs = str(mk.get("coordinateSystem", "LPS")).upper()
        units = mk.get("coordinateUnits", "mm")
        if isinstance(units, list):
            units = units[0] if units else "mm"
        scale = 1e-3 if units == "um" else 1.0
        for cp in mk.get("controlPoints") or []:
            pos = np.asarray(cp.get("position", [math.nan] * 3), dtype=float) * scale
            orient = cp.get("orientation")
            rot = np.asarray(orient, dtype=float).reshape(3, 3) if orient is not None else None
            if cs == "LPS":
                pos = _xy_negate(pos)
                if rot is not None:
                    rot = _xy_negate(rot)
            points.append(
                SlicerPoint(
                    markup_name=str(mk.get("name", "")),
                    label=str(cp.get("label", "")),
                    description=str(cp.get("description", "")),
                    position=pos,
                    orientation=rot,
                    coordinate_system=cs,
                    raw=cp,
                )
            )
    return points


@dataclass
class FcsvPoint:
    """A row of a Slicer ``.fcsv`` file."""

    id: str
    label: str
    description: str
    position: np.ndarray
    position_in_file: np.ndarray
    fields: dict[str, str]
    extra: list[str]


@dataclass
class FcsvFile:
    """A parsed Slicer ``.fcsv`` file (positions converted to RAS)."""

    path: Path
    version: str
    coordinate_system: str
    columns: list[str]
    points: list[FcsvPoint]


def read_fcsv(path: str | os.PathLike[str]) -> FcsvFile:
    """Read a legacy Slicer fiducial ``.fcsv`` (positions only), returning RAS positions.

    ``# CoordinateSystem`` may be ``RAS``/``LPS`` or the old ``0``/``1``; a missing line means
    RAS (very old files). Rows are parsed with :mod:`csv` (quoted labels may contain commas).
    Rows with more fields than the declared ``# columns`` (Slicer 5 appends two) keep the
    surplus in ``extra``. Orientation columns are ignored (readers disagree on them).
    """
    p = Path(path)
    version = ""
    cs = "RAS"
    columns: list[str] = []
    data_lines: list[str] = []
    with open(p, encoding="utf-8-sig", newline="") as fh:
        for line in fh:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                body = stripped[1:].strip()
                key, sep, value = body.partition("=")
                key, value = key.strip().lower(), value.strip()
                if not sep:
                    continue
                if key == "coordinatesystem":
                    cs = {"0": "RAS", "1": "LPS"}.get(value, value.upper())
                elif key == "columns":
                    columns = [c.strip() for c in value.split(",")]
                elif "version" in key:
                    version = value
                continue
            data_lines.append(line)
    if not columns:
        columns = [
            "id",
            "x",
            "y",
            "z",
            "ow",
            "ox",
            "oy",
            "oz",
            "vis",
            "sel",
            "lock",
            "label",
            "desc",
            "associatedNodeID",
        ]
    points: list[FcsvPoint] = []
    for row in csv.reader(data_lines):
        if not row:
            continue
        rec = {c: (row[i] if i < len(row) else "") for i, c in enumerate(columns)}
        in_file = np.array([_num(rec.get("x")), _num(rec.get("y")), _num(rec.get("z"))])
        ras = _xy_negate(in_file) if cs == "LPS" else in_file.copy()
        points.append(
            FcsvPoint(
                id=rec.get("id", ""),
                label=rec.get("label", ""),
                description=rec.get("desc", ""),
                position=ras,
                position_in_file=in_file,
                fields=rec,
                extra=list(row[len(columns) :]),
            )
        )
    return FcsvFile(path=p, version=version, coordinate_system=cs, columns=columns, points=points)
