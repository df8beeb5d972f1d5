"""Scalp-rule targets on the participant's own head: landmarks, 10-20 F3, Beam F3, 5 cm rule.

Research use only; export only (no device control). Everything is computed on the head model of
:mod:`tmstarget.native` (the scalp segmented from the subject's own T1w), in the T1w's world
millimetres (RAS+), so the storage orientation of the T1w does not matter.

Landmarks
---------
Nasion, inion, left and right preauricular points (LPA, RPA: used as the tragus points of the
Beam method) and vertex come from **template fiducials** mapped into the T1w through the
participant's MNI -> T1w point transform (fMRIPrep's
``from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5``), then **snapped** to the scalp: the nearest
scalp point, refined along the local scalp normal to the smoothed head-mask boundary. The
template fiducials (:data:`TEMPLATE_FIDUCIALS_MNI`) are the ``Nz``, ``Iz``, ``LPA``, ``RPA`` and
``Cz`` positions of the standard 10-20 electrode file of FieldTrip
(``template/electrode/standard_1020.elc``; Oostenveld R, Praamstra P 2001, Clin Neurophysiol
112:713-719), which lie on the scalp of the MNI (Colin27-based) head of FieldTrip's standard BEM
(Oostenveld et al. 2003). They are in the MNI frame of Colin27, a few mm from
MNI152NLin2009cAsym: the snapping absorbs that. A mapped landmark with no scalp within
``max_snap_mm`` (a defaced face, a field of view that cuts the head) is kept where the template
puts it and marked ``estimated``; every measurement that uses it says so.

User landmarks (``scalp_rules.landmarks_file``: a TSV with ``participant_id``, optional
``session_id``, ``name``, ``x``, ``y``, ``z`` in the T1w's RAS+ mm, e.g. digitised with the
navigator's pointer) override the template ones; they are checked against the template-mapped
positions (a swapped LPA/RPA is refused).

Measurements along the scalp
----------------------------
Every distance is measured **along the scalp surface**, as a tape measure would: the curve where
the plane through the named points cuts the smoothed head-mask boundary (iso-level 0.5 of the
mask smoothed with a 1-voxel Gaussian, found to sub-voxel precision along rays from a point
inside the head in that plane), and its polyline length (0.5 degree steps).

* **10-20** (Jasper 1958; the 'unambiguously illustrated' 10-20 definition of Jurcak V, Tsuzuki D,
  Dan I 2007, NeuroImage 34:1600-1611): Cz is the point at 50 % of both the nasion-inion arc and
  the LPA-RPA arc through it (iterated from the vertex landmark); Fpz, Fz, Oz at 10, 30, 90 % of
  the nasion-inion arc; T3 (T7), C3 at 10, 30 % of the LPA-RPA arc; Fp1, F7 at 10, 30 % of the
  left half circumference Fpz-T3-Oz; F3 halfway between F7 and Fz on the curve F7-Fz-F8.
* **Beam F3** (Beam W, Borckardt JJ, Reeves ST, George MS 2009, Brain Stimul 2:50-54): from
  three measurements, the nasion-inion distance (NI, over the vertex), the tragus-tragus distance
  (TT, over the vertex) and the head circumference (HC, measured here on the 10-20
  circumference: the plane through Fpz and Oz perpendicular to the mid-sagittal plane), the
  authors' calculator gives X, the distance from the midline (Fpz) along the circumference to
  the left, and Y, the distance from the vertex toward that circumference point at which F3
  lies (:func:`beam_f3_distances`). The point is then walked on the scalp: X along the
  circumference, Y along the scalp from Cz toward it.
* **5 cm rule** (George MS et al. 1995, Neuroreport 6:1853; Pascual-Leone A et al. 1996, Lancet
  348:233): 50 mm (``five_cm_distance_mm``) anterior to the user's motor hotspot along the scalp,
  on the parasagittal curve through the hotspot (anterior = inion -> nasion direction in the
  tangent plane).

For each scalp point the cortical point beneath it is found along the inward scalp normal: where
the ray enters the brain mask, plus ``cortical_depth_mm`` (default 2 mm, about half the
thickness of the cortical ribbon) into it.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .errors import InputError

__all__ = [
    "LANDMARK_NAMES",
    "TEMPLATE_FIDUCIALS_MNI",
    "Arc",
    "Landmark",
    "ScalpSurface",
    "beam_f3_distances",
    "beam_f3_on_scalp",
    "find_landmarks",
    "five_cm_rule",
    "read_landmarks_tsv",
    "surface_arc",
    "surface_ring",
    "ten_twenty",
]

#: Template fiducials, MNI mm (RAS+): ``Nz``, ``Iz``, ``LPA``, ``RPA`` and ``Cz`` of FieldTrip's
#: ``template/electrode/standard_1020.elc`` (Oostenveld & Praamstra 2001), on the scalp of the
#: Colin27-based MNI head of FieldTrip's standard BEM. Measured on this project's Colin27 head
#: (src/tmstarget/data/colin27_ch2_head.nii.gz): each lies within a few mm of its skin surface
#: (see tests/test_scalp.py::test_template_fiducials_on_colin27_scalp).
TEMPLATE_FIDUCIALS_MNI: dict[str, tuple[float, float, float]] = {
    "nasion": (0.0083, 86.8110, -39.9830),
    "inion": (0.0045, -118.5650, -23.0780),
    "lpa": (-86.0761, -19.9897, -47.9860),
    "rpa": (85.7939, -20.0093, -48.0310),
    "vertex": (0.4009, -9.1670, 100.2440),
}
LANDMARK_NAMES: tuple[str, ...] = tuple(TEMPLATE_FIDUCIALS_MNI)
_ALIASES = {
    "nasion": "nasion", "nz": "nasion", "nas": "nasion",
    "inion": "inion", "iz": "inion", "ini": "inion",
    "lpa": "lpa", "left_preauricular": "lpa", "left_tragus": "lpa", "al": "lpa",
    "rpa": "rpa", "right_preauricular": "rpa", "right_tragus": "rpa", "ar": "rpa",
    "vertex": "vertex", "cz": "vertex",
    "hotspot": "hotspot", "motor_hotspot": "hotspot",
}
FIDUCIAL_SOURCE = ("FieldTrip template/electrode/standard_1020.elc (Oostenveld & Praamstra 2001, "
                   "Clin Neurophysiol 112:713): Nz, Iz, LPA, RPA, Cz on the scalp of the "
                   "Colin27-based MNI head")
BEAM_SOURCE = ("Beam W, Borckardt JJ, Reeves ST, George MS (2009) An efficient and accurate new "
               "method for locating the F3 position for prefrontal TMS applications. Brain "
               "Stimul 2:50-54; formula of the authors' online BeamF3 calculator")


# --------------------------------------------------------------------------------------------
# the scalp surface
# --------------------------------------------------------------------------------------------


class ScalpSurface:
    """Sub-voxel scalp boundary of a head model (iso-level 0.5 of the smoothed head mask).

    Parameters
    ----------
    model : tmstarget.native.HeadModel
        Head (and brain) mask of the T1w.
    sigma_vox : float
        Gaussian smoothing of the binary head mask, in voxels, before taking the 0.5 level
        (removes the voxel staircase, so lengths along the surface are not inflated).
    """

    def __init__(self, model: Any, sigma_vox: float = 1.0) -> None:
        self.model = model
        self.field = ndi.gaussian_filter(model.head.astype(np.float32), sigma_vox)
        self.affine = np.asarray(model.affine, dtype=float)
        self.inv = np.linalg.inv(self.affine)
        self.shape = np.asarray(model.head.shape)
        self.voxel_mm = float(model.voxel_mm)
        self.tree: cKDTree = model.tree

    def _ijk(self, pts: np.ndarray) -> np.ndarray:
        return pts @ self.inv[:3, :3].T + self.inv[:3, 3]

    def value(self, pts: np.ndarray) -> np.ndarray:
        """Smoothed head-mask value (0 outside, 1 deep inside) at world points."""
        ijk = self._ijk(np.atleast_2d(pts))
        return ndi.map_coordinates(self.field, ijk.T, order=1, mode="constant", cval=0.0)

    def near_fov_edge(self, pts: np.ndarray, margin_vox: float = 1.5) -> np.ndarray:
        """Whether world points lie within ``margin_vox`` voxels of the image border."""
        ijk = self._ijk(np.atleast_2d(pts))
        return np.any((ijk < margin_vox) | (ijk > self.shape - 1 - margin_vox), axis=1)

    def edge(self, origins: np.ndarray, dirs: np.ndarray, t_max: float = 220.0,
             step: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """First outward crossing of the scalp along rays from points inside the head.

        Parameters
        ----------
        origins : ndarray (n, 3) or (3,)
            Ray origins (inside the head), world mm.
        dirs : ndarray (n, 3)
            Ray directions (normalised here).
        t_max, step : float
            Longest ray and sampling step (mm); the crossing is interpolated linearly.

        Returns
        -------
        points : ndarray (n, 3)
            Where each ray crosses the 0.5 level.
        fov : ndarray of bool (n,)
            True where that crossing is at the image border (the field of view cuts the head
            there: not the scalp).
        """
        d = np.atleast_2d(np.asarray(dirs, dtype=float))
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
        o = np.broadcast_to(np.asarray(origins, dtype=float), d.shape)
        t = np.arange(0.0, t_max + step, step)
        pts = o[:, None, :] + t[None, :, None] * d[:, None, :]
        v = self.value(pts.reshape(-1, 3)).reshape(len(d), len(t))
        inside = v >= 0.5
        if not np.all(inside[:, 0]):
            raise InputError(self.model.source, "a scalp measurement ray starts outside the "
                             "head mask.", "Check the T1w and the landmarks (are they on this "
                             "participant's head?).")
        out = ~inside
        out[:, 0] = False
        has = out.any(axis=1)
        if not np.all(has):
            raise InputError(self.model.source, "a ray from inside the head never left the "
                             "head mask.", "Check the T1w field of view.")
        k = np.argmax(out, axis=1)
        rows = np.arange(len(d))
        v0, v1 = v[rows, k - 1], v[rows, k]
        frac = np.clip((v0 - 0.5) / np.maximum(v0 - v1, 1e-9), 0.0, 1.0)
        tt = t[k - 1] + frac * step
        p = o + tt[:, None] * d
        return p, self.near_fov_edge(p)

    def snap(self, p: np.ndarray, normal_radius_mm: float = 10.0) -> tuple[np.ndarray, float]:
        """Nearest scalp point to ``p`` (refined to the smoothed boundary) and its distance."""
        from .native import _scalp_normal

        p = np.asarray(p, dtype=float)
        _, i = self.tree.query(p)
        q0 = self.model.surface[int(i)]
        n = _scalp_normal(self.model, q0, normal_radius_mm)
        start = q0 - 6.0 * self.voxel_mm * n
        if self.value(start[None])[0] < 0.5:  # thin structure: fall back to the voxel centre
            return q0, float(np.linalg.norm(q0 - p))
        q, _ = self.edge(start, n[None], t_max=20.0 * self.voxel_mm, step=0.25 * self.voxel_mm)
        return q[0], float(np.linalg.norm(q[0] - p))


@dataclass
class Arc:
    """A tape-measure curve over the scalp: a polyline in one plane, with its cumulative length.

    The polyline is the convex hull (in its plane) of the scalp crossings: a tape under tension
    bridges concavities (the nasion notch, a defaced face) instead of dipping into them.
    Positions along it (:meth:`at`) are projected back onto the scalp along the ray from
    ``centre``.

    Attributes
    ----------
    points : ndarray (n, 3)
        Polyline vertices, world mm, in order.
    fov_edge : ndarray of bool (n,)
        Vertices where the curve runs along the image border instead of the scalp.
    centre : ndarray (3,)
        The point inside the head the rays start from.
    surf : ScalpSurface, optional
        For projecting positions back onto the scalp.
    bridged_mm : float
        Length of the straight stretches that bridge a gap deeper than 3 mm under the tape.
    """

    points: np.ndarray
    fov_edge: np.ndarray
    centre: np.ndarray
    surf: ScalpSurface | None = None
    bridged_mm: float = 0.0
    cum: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        seg = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        self.cum = np.concatenate([[0.0], np.cumsum(seg)])

    @property
    def length(self) -> float:
        """Length along the scalp (mm)."""
        return float(self.cum[-1])

    @property
    def fov_edge_mm(self) -> float:
        """Length of the curve that runs along the image border (mm)."""
        bad = self.fov_edge[1:] | self.fov_edge[:-1]
        return float(np.sum(np.diff(self.cum)[bad]))

    def on_tape(self, s: float) -> np.ndarray:
        """The point of the tape polyline at arc length ``s`` (mm) from the start."""
        s = float(np.clip(s, 0.0, self.length))
        return np.array([np.interp(s, self.cum, self.points[:, k]) for k in range(3)])

    def at(self, s: float) -> np.ndarray:
        """The scalp point under the tape at arc length ``s`` (the ends are returned as given)."""
        p = self.on_tape(s)
        if self.surf is None or s <= 0.0 or s >= self.length:
            return p
        q, _ = self.surf.edge(self.centre, (p - self.centre)[None])
        return q[0]

    def at_fraction(self, f: float) -> np.ndarray:
        """The scalp point at fraction ``f`` of the length."""
        return self.at(f * self.length)

    def locate(self, p: np.ndarray) -> float:
        """Arc length of the polyline point nearest to ``p`` (to the nearest 0.5 mm)."""
        s = np.arange(0.0, self.length + 0.5, 0.5)
        pts = np.array([self.on_tape(v) for v in s])
        return float(s[int(np.argmin(np.linalg.norm(pts - np.asarray(p, float), axis=1)))])


def _plane_basis(centre: np.ndarray, a: np.ndarray, through: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal (u, w) in the plane through ``centre``, ``a`` and ``through``.

    ``u`` points from the centre to ``a``; ``w`` is perpendicular to it, toward ``through``.
    """
    u = a - centre
    u = u / np.linalg.norm(u)
    w = (through - centre) - ((through - centre) @ u) * u
    nw = float(np.linalg.norm(w))
    if nw < 1e-6:
        raise InputError(None, "three scalp points are collinear; the scalp curve through them "
                         "is undefined.", "Check the landmarks.")
    return u, w / nw


def _tape(q2: np.ndarray, closed: bool) -> np.ndarray:
    """Indices (in order) of the convex-hull vertices of a swept curve around the origin.

    ``q2`` (n, 2) are the crossings in angular order around the origin (the ray centre).
    For an open curve the origin is added to the hull and the chain from the first to the last
    point is returned (both ends kept); for a closed curve the whole hull, starting at the
    vertex nearest angle 0.
    """
    from scipy.spatial import ConvexHull

    n = len(q2)
    pts = q2 if closed else np.vstack([q2, [[0.0, 0.0]]])
    try:
        hv = list(ConvexHull(pts).vertices)  # counter-clockwise in 2-D
    except Exception:  # noqa: BLE001 - degenerate: keep the raw curve
        return np.arange(n)
    if closed:
        hv = [v for v in hv if v < n]
        k = int(np.argmin(hv))
        return np.array(hv[k:] + hv[:k])
    if 0 not in hv or (n - 1) not in hv:
        return np.arange(n)
    k = hv.index(0)
    hv = hv[k:] + hv[:k]
    chain = hv[: hv.index(n - 1) + 1]
    if any(v == n for v in chain):  # went the wrong way round
        return np.arange(n)
    return np.array(chain)


def _sweep(surf: ScalpSurface, centre: np.ndarray, u: np.ndarray, w: np.ndarray,
           theta_end: float, step_deg: float = 0.5, closed: bool = False,
           ends: tuple[np.ndarray, np.ndarray] | None = None) -> Arc:
    n = max(math.ceil(abs(math.degrees(theta_end)) / step_deg), 2)
    th = np.linspace(0.0, theta_end, n + (0 if closed else 1), endpoint=not closed)
    dirs = np.cos(th)[:, None] * u + np.sin(th)[:, None] * w
    pts, fov = surf.edge(centre, dirs)
    if ends is not None:
        pts[0], pts[-1] = ends
    q2 = np.column_stack([(pts - centre) @ u, (pts - centre) @ w])
    idx = _tape(q2, closed)
    if closed:
        idx = np.append(idx, idx[0])
    tape_pts, tape_fov = pts[idx], fov[idx]
    # how much of the tape bridges a gap: raw crossings more than 3 mm inside the tape
    bridged = 0.0
    for a, b in itertools.pairwise(idx):
        if b - a > 1 or (closed and b < a):
            seg = np.arange(a, b + 1) if b > a else np.r_[np.arange(a, len(pts)), np.arange(b + 1)]
            p0, p1 = pts[a], pts[b]
            d = p1 - p0
            ln = float(np.linalg.norm(d))
            if ln == 0:
                continue
            r = np.linalg.norm(np.cross(pts[seg] - p0, d), axis=1) / ln
            if float(np.max(r)) > 3.0:
                bridged += ln
    return Arc(tape_pts, tape_fov, np.asarray(centre, float), surf, bridged)


def surface_arc(surf: ScalpSurface, a: np.ndarray, b: np.ndarray, *,
                via: np.ndarray | None = None, centre: np.ndarray | None = None,
                step_deg: float = 0.5) -> Arc:
    """Tape-measure curve over the scalp from ``a`` to ``b`` in the plane through them and
    ``via`` (or ``centre``).

    Parameters
    ----------
    surf : ScalpSurface
    a, b : ndarray (3,)
        End points (on the scalp), world mm.
    via : ndarray (3,), optional
        A point the curve passes (it fixes the plane and which way round); the rays start at
        the midpoint of ``a`` and ``b`` unless ``centre`` is given.
    centre : ndarray (3,), optional
        Ray origin inside the head; without ``via`` the plane is the one through ``a``, ``b``
        and ``centre`` and the curve takes the short way.
    step_deg : float
        Angular step of the rays.

    Returns
    -------
    Arc
        From ``a`` to ``b``; the first and last points are ``a`` and ``b`` themselves.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if via is not None:
        via = np.asarray(via, float)
        n = np.cross(a - via, b - via)
        n /= np.linalg.norm(n)
        c = 0.5 * (a + b) if centre is None else np.asarray(centre, float)
        c = c - ((c - via) @ n) * n  # into the plane
        u, w = _plane_basis(c, a, via)
        tb = math.atan2((b - c) @ w, (b - c) @ u)
        if tb < 0:
            tb += 2 * math.pi
        tv = math.atan2((via - c) @ w, (via - c) @ u)
        if not (0 < tv < tb):
            raise InputError(None, "the scalp curve cannot pass through the middle point in "
                             "order.", "Check the landmarks.")
    else:
        if centre is None:
            raise ValueError("surface_arc needs via or centre")
        c = np.asarray(centre, float)
        u, w = _plane_basis(c, a, b)
        tb = math.atan2((b - c) @ w, (b - c) @ u)
    return _sweep(surf, c, u, w, tb, step_deg, ends=(a, b))


def surface_ring(surf: ScalpSurface, centre: np.ndarray, start: np.ndarray,
                 toward: np.ndarray, step_deg: float = 0.5) -> Arc:
    """Closed tape-measure curve (a full turn) in the plane through ``centre``, ``start`` and
    ``toward``; it starts at the tape point above ``start`` and goes first toward ``toward``."""
    c = np.asarray(centre, float)
    u, w = _plane_basis(c, np.asarray(start, float), np.asarray(toward, float))
    arc = _sweep(surf, c, u, w, 2 * math.pi, step_deg, closed=True)
    # start exactly at angle 0 (the ray through ``start``): intersect that ray with the tape
    q2 = np.column_stack([(arc.points - c) @ u, (arc.points - c) @ w])
    ang = np.mod(np.arctan2(q2[:, 1], q2[:, 0]), 2 * math.pi)
    p0, p1 = arc.points[-2], arc.points[0]
    if ang[0] > 1e-9:  # the ray through ``start`` crosses the closing segment
        q0, q1 = q2[-2], q2[0]
        t = q0[1] / (q0[1] - q1[1]) if q0[1] != q1[1] else 0.0
        s0 = p0 + t * (p1 - p0)
        pts = np.vstack([s0, arc.points[:-1], s0])
        fov = np.r_[arc.fov_edge[0], arc.fov_edge[:-1], arc.fov_edge[0]]
        return Arc(pts, fov, c, surf, arc.bridged_mm)
    return arc


# --------------------------------------------------------------------------------------------
# landmarks
# --------------------------------------------------------------------------------------------


@dataclass
class Landmark:
    """A head landmark in the T1w (RAS+ mm).

    Attributes
    ----------
    name : str
    t1w_mm : ndarray (3,)
        The position used (snapped to the scalp, or as estimated / given).
    status : str
        ``snapped`` (template, on the scalp), ``estimated`` (template, no scalp near: defaced or
        cropped), or ``user`` (from the landmarks file).
    mapped_mm : ndarray (3,), optional
        The template fiducial mapped into the T1w, before snapping.
    snap_distance_mm : float, optional
        Distance from the mapped (or given) position to the scalp.
    """

    name: str
    t1w_mm: np.ndarray
    status: str
    mapped_mm: np.ndarray | None = None
    snap_distance_mm: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        r = lambda v: None if v is None else [round(float(x), 3) for x in v]
        return {"t1w_mm": r(self.t1w_mm), "status": self.status,
                "template_mapped_t1w_mm": r(self.mapped_mm),
                "snap_distance_mm": (None if self.snap_distance_mm is None
                                     else round(float(self.snap_distance_mm), 2)),
                "note": self.note}


def read_landmarks_tsv(path: str | os.PathLike[str], participant_id: str,
                       session_id: str | None = None) -> dict[str, np.ndarray]:
    """User landmarks of one participant (and session) from a TSV, T1w RAS+ mm.

    Columns: ``participant_id`` (``sub-01`` or ``01``), optional ``session_id``, ``name``
    (nasion, inion, lpa, rpa, vertex, hotspot; aliases nz, iz, cz, left_preauricular, ...),
    ``x``, ``y``, ``z``. Rows with an empty ``session_id`` apply to every session.

    Raises
    ------
    InputError
        Missing file or columns, an unknown name, a non-numeric coordinate, a name given twice.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "the landmarks file does not exist.",
                         "Fix scalp_rules.landmarks_file in the config.")
    with open(p, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    need = {"participant_id", "name", "x", "y", "z"}
    if not rows or not need <= set(rows[0]):
        raise InputError(p, f"the landmarks file needs the tab-separated columns "
                         f"{', '.join(sorted(need))} (optional session_id).",
                         "See README 'Scalp-rule targets'.")
    want = participant_id if participant_id.startswith("sub-") else f"sub-{participant_id}"
    ses = None if session_id is None else (
        session_id if session_id.startswith("ses-") else f"ses-{session_id}")
    out: dict[str, np.ndarray] = {}
    specific: set[str] = set()
    for i, row in enumerate(rows, start=2):
        pid = row["participant_id"].strip()
        pid = pid if pid.startswith("sub-") else f"sub-{pid}"
        if pid != want:
            continue
        rses = (row.get("session_id") or "").strip()
        rses = rses if (not rses or rses.startswith("ses-")) else f"ses-{rses}"
        if rses and rses != ses:
            continue
        key = _ALIASES.get(row["name"].strip().lower())
        if key is None:
            raise InputError(p, f"line {i}: unknown landmark name '{row['name']}'.",
                             f"Use one of {', '.join(sorted(set(_ALIASES.values())))}.")
        try:
            xyz = np.array([float(row[c]) for c in "xyz"])
        except ValueError as exc:
            raise InputError(p, f"line {i}: non-numeric coordinate ({exc}).",
                             "Give x, y, z in mm (T1w RAS+).") from exc
        if not np.all(np.isfinite(xyz)):
            raise InputError(p, f"line {i}: non-finite coordinate.", "Give x, y, z in mm.")
        if key in out and (key in specific or not rses):
            raise InputError(p, f"line {i}: landmark '{key}' given twice for {want}"
                             + (f" {ses}" if ses else "") + ".", "Keep one row per landmark.")
        if rses:
            specific.add(key)
        out[key] = xyz
    return out


def find_landmarks(surf: ScalpSurface, fwd: Any, *, user: Mapping[str, np.ndarray] | None = None,
                   max_snap_mm: float = 12.0, max_user_deviation_mm: float = 30.0,
                   source: str | None = None) -> tuple[dict[str, Landmark], list[str]]:
    """Nasion, inion, LPA, RPA and vertex on this head (template mapped + snapped, or user).

    Parameters
    ----------
    surf : ScalpSurface
    fwd : tmstarget.native.PointTransform
        MNI -> T1w point map.
    user : mapping, optional
        User landmarks (T1w mm), which override the template ones.
    max_snap_mm : float
        A mapped template landmark farther than this from any scalp is ``estimated`` (kept
        where the template puts it).
    max_user_deviation_mm : float
        A user landmark farther than this from the template-mapped one gives a warning.
    source : str, optional
        The landmarks file (named in errors).

    Returns
    -------
    landmarks : dict
    warnings : list of str

    Raises
    ------
    InputError
        User LPA and RPA swapped (each nearer the other side's template position).
    """
    mapped = fwd.map(np.array([TEMPLATE_FIDUCIALS_MNI[n] for n in LANDMARK_NAMES]))
    mapped_d = dict(zip(LANDMARK_NAMES, mapped))
    user = dict(user or {})
    warnings: list[str] = []
    if "lpa" in user and "rpa" in user:
        a, b = user["lpa"], user["rpa"]
        if (np.linalg.norm(a - mapped_d["rpa"]) + np.linalg.norm(b - mapped_d["lpa"])
                < np.linalg.norm(a - mapped_d["lpa"]) + np.linalg.norm(b - mapped_d["rpa"])):
            raise InputError(source, "the user LPA lies on the subject's right and the RPA on "
                             "the left (each is nearer the other side's template position): "
                             "left and right are swapped.", "Check the landmark names and the "
                             "T1w orientation with a left-side fiducial; LPA is the LEFT "
                             "preauricular point.")
    out: dict[str, Landmark] = {}
    for name in LANDMARK_NAMES:
        m = mapped_d[name]
        if name in user:
            q, d = surf.snap(user[name])
            dev = float(np.linalg.norm(user[name] - m))
            note = f"user landmark, {d:.1f} mm from the MRI scalp"
            if dev > max_user_deviation_mm:
                warnings.append(f"user landmark {name} is {dev:.0f} mm from where the template "
                                "puts it: check it is the right point on the right head.")
            if d > max_snap_mm:
                warnings.append(f"user landmark {name} is {d:.0f} mm from the MRI scalp.")
            out[name] = Landmark(name, q, "user", m, d, note)
            continue
        q, d = surf.snap(m)
        if d > max_snap_mm or surf.near_fov_edge(q[None])[0]:
            why = ("the field of view cuts the head there" if surf.near_fov_edge(q[None])[0]
                   else f"the nearest scalp is {d:.0f} mm away (a defaced face or a cropped "
                        "head)")
            out[name] = Landmark(name, m, "estimated", m, d,
                                 f"no scalp at the template position ({why}); the template "
                                 "position is used and every measurement through it is an "
                                 "estimate")
            warnings.append(f"landmark {name}: {out[name].note}. Measure it on the participant "
                            "or give it in scalp_rules.landmarks_file.")
        else:
            out[name] = Landmark(name, q, "snapped", m, d, "template fiducial mapped and "
                                 "snapped to the scalp")
    return out, warnings


# --------------------------------------------------------------------------------------------
# 10-20 and Beam F3
# --------------------------------------------------------------------------------------------


def _snap_or_keep(surf: ScalpSurface, p: np.ndarray) -> np.ndarray:
    q, d = surf.snap(p)
    return q if d < 15.0 else p


def _ray_start(surf: ScalpSurface, p: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """A ray origin inside the head: ``centre`` (checked)."""
    if surf.value(np.asarray(centre, float)[None])[0] < 0.5:
        raise InputError(surf.model.source, "the head centre estimated from the landmarks is "
                         "outside the head mask.", "Check the landmarks.")
    return centre


def ten_twenty(surf: ScalpSurface, lm: Mapping[str, Landmark], *, max_iter: int = 20,
               tol_mm: float = 0.25) -> dict[str, Any]:
    """10-20 positions and the three head measurements on this scalp.

    Returns
    -------
    dict
        ``positions`` (name -> ndarray: Nz, Iz, LPA, RPA, Cz, Fpz, Fz, Pz, Oz, T3, C3, C4, T4,
        Fp1, F7, Fp2, F8, F3, F4, F3_alt), ``arcs`` (name -> Arc: ni, tt, ring, left_half,
        f_line), ``ni_mm``, ``tt_mm``, ``hc_mm``, ``cz_iterations``, ``f3_definitions_mm``
        (distance between F3 as the F7-Fz midpoint and as the Fp1-C3 midpoint).
    """
    nz, iz = lm["nasion"].t1w_mm, lm["inion"].t1w_mm
    lpa, rpa = lm["lpa"].t1w_mm, lm["rpa"].t1w_mm
    cz = lm["vertex"].t1w_mm
    it = 0
    for it in range(1, max_iter + 1):
        ni = surface_arc(surf, nz, iz, via=cz)
        c1 = ni.at_fraction(0.5)
        tt = surface_arc(surf, lpa, rpa, via=c1)
        c2 = tt.at_fraction(0.5)
        moved = float(np.linalg.norm(c2 - cz))
        cz = c2
        if moved < tol_mm:
            break
    ni = surface_arc(surf, nz, iz, via=cz)
    tt = surface_arc(surf, lpa, rpa, via=cz)
    pos: dict[str, np.ndarray] = {"Nz": nz, "Iz": iz, "LPA": lpa, "RPA": rpa, "Cz": cz}
    for name, f in (("Fpz", 0.1), ("Fz", 0.3), ("Pz", 0.7), ("Oz", 0.9)):
        pos[name] = ni.at_fraction(f)
    for name, f in (("T3", 0.1), ("C3", 0.3), ("C4", 0.7), ("T4", 0.9)):
        pos[name] = tt.at_fraction(f)
    fpz, oz = pos["Fpz"], pos["Oz"]
    mid = 0.5 * (fpz + oz)
    left = surface_arc(surf, fpz, oz, via=pos["T3"], centre=mid)
    right = surface_arc(surf, fpz, oz, via=pos["T4"], centre=mid)
    pos["Fp1"], pos["F7"] = left.at_fraction(0.1), left.at_fraction(0.3)
    pos["Fp2"], pos["F8"] = right.at_fraction(0.1), right.at_fraction(0.3)
    fline = surface_arc(surf, pos["F7"], pos["F8"], via=pos["Fz"])
    s_fz = fline.locate(pos["Fz"])
    pos["F3"] = fline.at(0.5 * s_fz)
    pos["F4"] = fline.at(s_fz + 0.5 * (fline.length - s_fz))
    # the textbook alternative: F3 halfway between Fp1 and C3 (short way over the scalp)
    centre = _head_centre(lm, cz)
    alt = surface_arc(surf, pos["Fp1"], pos["C3"], centre=_ray_start(surf, pos["Fp1"], centre))
    pos["F3_alt"] = alt.at_fraction(0.5)
    # head circumference = the 10-20 circumference: the two halves Fpz-T3-Oz and Fpz-T4-Oz
    return {"positions": pos, "arcs": {"ni": ni, "tt": tt, "left_half": left,
                                       "right_half": right, "f_line": fline, "fp1_c3": alt},
            "ni_mm": ni.length, "tt_mm": tt.length, "hc_mm": left.length + right.length,
            "cz_iterations": it,
            "f3_definitions_mm": float(np.linalg.norm(pos["F3"] - pos["F3_alt"]))}


def _head_centre(lm: Mapping[str, Landmark], cz: np.ndarray) -> np.ndarray:
    """A point near the middle of the cranium: 40 % of the way from the ear midpoint to Cz."""
    ear = 0.5 * (lm["lpa"].t1w_mm + lm["rpa"].t1w_mm)
    return ear + 0.4 * (np.asarray(cz, float) - ear)


def beam_f3_distances(hc: float, ni: float, tt: float) -> tuple[float, float]:
    """X and Y of the Beam F3 method from the three head measurements (any one length unit).

    The method (Beam et al. 2009, Brain Stimul 2:50) flattens the top of the head onto a
    plane centred on the vertex (Cz). With ``R1 = 0.4 NI`` (Cz to Fpz) and ``R2 = 0.4 TT`` (Cz to
    T3): Fz lies at ``(0, -R1/2)`` and C3 at ``(R2/2, 0)`` (x toward the stimulated side, y
    posterior). F3 is where the line from Fz toward the F7 direction crosses the line from C3
    toward the Fp1 direction; its distance from Cz, shortened by an empirical 0.91, is ``Y``, and
    its angle ``theta`` from the coronal line sets ``X = HC/4 (90 + theta) / 90``, the distance
    along the circumference from the midline. The slopes are those of the authors' online
    BeamF3 calculator as transcribed in public re-implementations (the printed paper's
    formulas differ slightly, and the calculator is what clinics use):
    ``A = (R2 sin 324 + R1/2) / R2`` (through Fz), ``B = R1 sin 298 / (R1 cos 298 - R2/2)``
    (through C3), angles in degrees.

    Parameters
    ----------
    hc, ni, tt : float
        Head circumference, nasion-inion and tragus-tragus distances (same unit).

    Returns
    -------
    X, Y : float
        Distance along the circumference from the midline (Fpz) toward the stimulated side, and
        distance from the vertex toward that circumference point (same unit as the input).
    """
    for label, v in (("head circumference", hc), ("nasion-inion", ni), ("tragus-tragus", tt)):
        if not (v > 0 and math.isfinite(v)):
            raise InputError(None, f"Beam F3: the {label} distance must be positive, got {v}.",
                             "Check the landmarks.")
    r1, r2 = 0.4 * ni, 0.4 * tt
    s = lambda deg: math.sin(math.radians(deg))
    c = lambda deg: math.cos(math.radians(deg))
    a = (r2 * s(324) + r1 / 2) / r2
    b = r1 * s(298) / (r1 * c(298) - r2 / 2)
    x = (r1 - r2 * b) / (2 * (a - b))
    y = a * x - r1 / 2
    r = math.hypot(x, y)
    theta = math.degrees(math.atan(y / x))
    return hc / 4 * (90 + theta) / 90, 0.91 * r


def beam_f3_on_scalp(surf: ScalpSurface, tt_res: Mapping[str, Any],
                     lm: Mapping[str, Landmark], normal_radius_mm: float = 20.0
                     ) -> dict[str, Any]:
    """Beam F3 walked on this scalp: X along the circumference from Fpz to the left, then Y
    along the scalp from Cz toward that point.

    Parameters
    ----------
    surf : ScalpSurface
    tt_res : mapping
        Output of :func:`ten_twenty` (measurements, Fpz, Cz and the circumference ring, which
        goes from Fpz to the left first).
    lm : mapping
        Landmarks.

    Returns
    -------
    dict
        ``scalp_mm``, ``x_mm``, ``y_mm``, ``circumference_point_mm`` and the two curves.
    """
    x, y = beam_f3_distances(tt_res["hc_mm"], tt_res["ni_mm"], tt_res["tt_mm"])
    left: Arc = tt_res["arcs"]["left_half"]
    a_pt = left.at(x)
    cz = tt_res["positions"]["Cz"]
    centre = _ray_start(surf, cz, _head_centre(lm, cz))
    arc = surface_arc(surf, cz, a_pt, centre=centre)
    if y > arc.length:
        raise InputError(surf.model.source, f"Beam F3: Y = {y:.0f} mm is longer than the scalp "
                         f"from the vertex to the circumference point ({arc.length:.0f} mm).",
                         "Check the landmarks.")
    return {"scalp_mm": arc.at(y), "x_mm": x, "y_mm": y, "circumference_point_mm": a_pt,
            "arc_cz_to_circumference": arc}


def five_cm_rule(surf: ScalpSurface, hotspot_scalp: np.ndarray, anterior: np.ndarray,
                 distance_mm: float = 50.0, normal_radius_mm: float = 20.0) -> dict[str, Any]:
    """The point ``distance_mm`` anterior to the hotspot along the scalp (parasagittal curve).

    Parameters
    ----------
    surf : ScalpSurface
    hotspot_scalp : ndarray (3,)
        Motor hotspot on the scalp (T1w mm).
    anterior : ndarray (3,)
        The subject's anterior direction (e.g. inion -> nasion), projected here onto the plane
        tangent to the scalp at the hotspot.
    distance_mm : float
    normal_radius_mm : float
        Patch radius for the scalp normal.

    Returns
    -------
    dict
        ``scalp_mm`` and the curve ``arc``.
    """
    from .native import _scalp_normal

    h = np.asarray(hotspot_scalp, float)
    n = _scalp_normal(surf.model, h, normal_radius_mm)
    ant = np.asarray(anterior, float)
    ant_t = ant - (ant @ n) * n
    if np.linalg.norm(ant_t) < 1e-6:
        raise InputError(None, "5 cm rule: the anterior direction is normal to the scalp at the "
                         "hotspot.", "Check the hotspot coordinate.")
    ant_t /= np.linalg.norm(ant_t)
    centre = h - 60.0 * n
    if surf.value(centre[None])[0] < 0.5:
        centre = h - 30.0 * n
    arc = _sweep(surf, centre, n, ant_t, math.radians(90.0))
    if arc.length < distance_mm:
        raise InputError(surf.model.source, f"5 cm rule: the scalp ahead of the hotspot is "
                         f"shorter than {distance_mm:g} mm.", "Check the hotspot coordinate.")
    s0 = arc.locate(h)
    keep = (arc.cum >= s0) & (arc.cum <= s0 + distance_mm)
    pts = np.vstack([arc.on_tape(s0), arc.points[keep], arc.on_tape(s0 + distance_mm)])
    shown = Arc(pts, np.zeros(len(pts), bool), arc.centre, surf)
    return {"scalp_mm": arc.at(s0 + distance_mm), "arc": shown}


# --------------------------------------------------------------------------------------------
# the scalp rules on one participant
# --------------------------------------------------------------------------------------------

#: Scalp-rule methods, their file ``desc-`` label and their label in the navigator.
METHODS: dict[str, tuple[str, str]] = {
    "beam_f3": ("scalpBeamF3", "Beam F3 (scalp rule, not the connectivity target)"),
    "eeg_f3": ("scalpEEGF3", "EEG 10-20 F3 (scalp rule, not the connectivity target)"),
    "5cm": ("scalp5cm", "5 cm rule (scalp rule, not the connectivity target)"),
}
#: Defaults of the ``native.scalp_rules`` config section.
DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "methods": ["beam_f3", "eeg_f3", "5cm"],
    "landmarks_file": None,
    "hotspot_t1w_mm": {},
    "five_cm_distance_mm": 50.0,
    "cortical_depth_mm": 2.0,
    "max_snap_mm": 12.0,
}
#: Left-DLPFC check: within this distance of one of the four reference sites, x < 0 (MNI).
DLPFC_RADIUS_MM = 20.0


def settings(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``native.scalp_rules`` section with defaults filled in and checked."""
    out = dict(DEFAULTS)
    out.update({k: v for k, v in dict(cfg or {}).items() if v is not None
                or k == "landmarks_file"})
    bad = [m for m in out["methods"] if m not in METHODS]
    if bad:
        raise InputError(None, f"native.scalp_rules.methods: unknown method(s) {bad}.",
                         f"Use some of {', '.join(METHODS)}.")
    for k in ("five_cm_distance_mm", "cortical_depth_mm", "max_snap_mm"):
        if not float(out[k]) >= 0:
            raise InputError(None, f"native.scalp_rules.{k} must be >= 0.", "")
    return out


def unit_key(participant_id: str, session_id: str | None) -> tuple[str, str | None]:
    """``('sub-01', 'ses-1')`` from labels with or without their prefixes."""
    p = participant_id if participant_id.startswith("sub-") else f"sub-{participant_id}"
    s = None if not session_id else (session_id if session_id.startswith("ses-")
                                     else f"ses-{session_id}")
    return p, s


def user_hotspot(cfg: Mapping[str, Any], participant_id: str, session_id: str | None,
                 landmarks: Mapping[str, np.ndarray] | None = None) -> np.ndarray | None:
    """The user's motor hotspot (T1w mm) for this participant/session, if any.

    ``hotspot_t1w_mm`` maps ``sub-01`` or ``sub-01_ses-1`` to ``[x, y, z]``; a ``hotspot`` row in
    the landmarks file also counts (the config entry wins).
    """
    p, s = unit_key(participant_id, session_id)
    hs = dict(cfg.get("hotspot_t1w_mm") or {})
    for key in ([f"{p}_{s}"] if s else []) + [p, p[4:]]:
        if key in hs:
            v = np.asarray(hs[key], dtype=float).reshape(-1)
            if v.shape != (3,) or not np.all(np.isfinite(v)):
                raise InputError(None, f"native.scalp_rules.hotspot_t1w_mm['{key}'] must be "
                                 "three numbers (T1w RAS+ mm).", "")
            return v
    if landmarks and "hotspot" in landmarks:
        return np.asarray(landmarks["hotspot"], dtype=float)
    return None


def has_hotspot(cfg: Mapping[str, Any] | None, participant_id: str,
                session_id: str | None) -> bool:
    """Whether the 5 cm rule can run for this unit (used by the workflow to declare files)."""
    c = settings(cfg)
    if "5cm" not in c["methods"] or not c["enabled"]:
        return False
    user = (read_landmarks_tsv(c["landmarks_file"], participant_id, session_id)
            if c["landmarks_file"] else {})
    return user_hotspot(c, participant_id, session_id, user) is not None


def to_mni(fwd: Any, inv: Any | None, p: np.ndarray) -> np.ndarray:
    """Map T1w points to MNI: through the inverse file, else by inverting ``fwd`` (Newton)."""
    p = np.atleast_2d(np.asarray(p, float))
    if inv is not None:
        return inv.map(p)
    out = []
    for q in p:
        m = np.array([0.0, 0.0, 0.0])
        for _ in range(50):
            f0 = fwd.map(m[None])[0]
            r = f0 - q
            if np.linalg.norm(r) < 1e-4:
                break
            jac = np.column_stack([(fwd.map((m + e)[None])[0] - f0) for e in np.eye(3)])
            m = m - np.linalg.solve(jac, r)
        out.append(m)
    return np.array(out)


def _r_at(rmap: nb.Nifti1Image | None, p_mni: np.ndarray, radius_mm: float = 5.0
          ) -> tuple[float | None, float | None]:
    """Seed correlation at the nearest voxel and mean within ``radius_mm`` (finite, non-zero)."""
    if rmap is None:
        return None, None
    data = np.asarray(rmap.dataobj, dtype=float)
    aff = np.asarray(rmap.affine, float)
    ijk = np.rint(nb.affines.apply_affine(np.linalg.inv(aff), p_mni)).astype(int)
    if np.any(ijk < 0) or np.any(ijk >= np.asarray(data.shape[:3])):
        return None, None
    v = float(data[tuple(ijk)])
    r0 = v if np.isfinite(v) and v != 0 else None
    half = math.ceil(radius_mm / float(np.min(np.linalg.norm(aff[:3, :3], axis=0)))) + 1
    lo, hi = np.maximum(ijk - half, 0), np.minimum(ijk + half + 1, data.shape[:3])
    ii = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), -1)
    ii = ii.reshape(-1, 3)
    w = nb.affines.apply_affine(aff, ii)
    vals = data[ii[:, 0], ii[:, 1], ii[:, 2]][np.linalg.norm(w - p_mni, axis=1) <= radius_mm]
    vals = vals[np.isfinite(vals) & (vals != 0)]
    return r0, (float(np.mean(vals)) if vals.size else None)


def in_left_dlpfc(p_mni: np.ndarray) -> bool:
    """Inside the default left-DLPFC search region (union of 20 mm spheres, x < 0; MNI)."""
    from .regions import REFERENCE_TARGETS_MM

    p = np.asarray(p_mni, float)
    return bool(p[0] < 0 and min(np.linalg.norm(p - np.asarray(c)) for c in
                                 REFERENCE_TARGETS_MM.values()) <= DLPFC_RADIUS_MM)


@dataclass
class ScalpPlan:
    """Everything :func:`plan_scalp_rules` computed (nothing written)."""

    record: dict[str, Any]
    poses: dict[str, Any]
    surface: ScalpSurface
    landmarks: dict[str, Landmark]
    ten_twenty: dict[str, Any] | None
    points: dict[str, dict[str, np.ndarray]]


def _v(a: Any, nd: int = 3) -> list[float] | None:
    return None if a is None else [round(float(x), nd) for x in np.asarray(a).reshape(-1)]


def plan_scalp_rules(model: Any, fwd: Any, inv: Any | None, t1w_info: Any,
                     cfg: Mapping[str, Any], native_cfg: Mapping[str, Any], *,
                     participant_id: str, session_id: str | None,
                     connectivity: Mapping[str, Any] | None = None,
                     rmap: nb.Nifti1Image | None = None,
                     t1w_path: str | os.PathLike[str] | None = None,
                     space_mni: str = "MNI152NLin2009cAsym") -> ScalpPlan:
    """Landmarks, head measurements and every configured scalp-rule target with its coil pose.

    ``space_mni`` is the template of ``fwd``/``inv`` and of the targets (config ``space``).

    Parameters
    ----------
    model : tmstarget.native.HeadModel
        With a brain mask (the cortical point beneath each scalp point needs it).
    fwd, inv : tmstarget.native.PointTransform
        MNI -> T1w points; T1w -> MNI points (optional: ``fwd`` is inverted numerically then).
    t1w_info : tmstarget.navigation.T1wInfo
    cfg : mapping
        ``native.scalp_rules`` (see :data:`DEFAULTS`).
    native_cfg : mapping
        ``native`` (normal radius, handle angle).
    participant_id, session_id : str
    connectivity : mapping, optional
        The primary connectivity target's native record (``t1w_mm``, ``mni_mm``,
        ``entry_along_normal_mm``), for distances.
    rmap : nibabel image, optional
        The MNI seed-correlation map (``r`` at each cortical point).
    t1w_path : path-like, optional
        Named in errors.

    Returns
    -------
    ScalpPlan

    Raises
    ------
    InputError
        No brain mask; user LPA/RPA swapped; an F3 that lands in the right hemisphere; a
        coil pose that fails its checks.
    """
    from . import navigation as nav
    from .native import _check_laterality, _local_axes, _march_to, _scalp_normal

    c = settings(cfg)
    if model.brain is None:
        raise InputError(t1w_path, "scalp rules need the brain mask (the cortical point under "
                         "each scalp point is where the scalp normal meets the brain).",
                         "Give fMRIPrep's desc-brain_mask, or set native.scalp_rules.enabled: "
                         "false.")
    normal_radius = float(native_cfg.get("normal_radius_mm", 20.0))
    angle = float(native_cfg.get("handle_angle_deg", 45.0))
    depth = float(c["cortical_depth_mm"])
    surf = ScalpSurface(model)
    user = (read_landmarks_tsv(c["landmarks_file"], participant_id, session_id)
            if c["landmarks_file"] else {})
    lm, warnings = find_landmarks(surf, fwd, user={k: v for k, v in user.items()
                                                   if k != "hotspot"},
                                  max_snap_mm=float(c["max_snap_mm"]),
                                  source=c["landmarks_file"])
    tt = ten_twenty(surf, lm)
    pos = tt["positions"]
    for name in ("ni", "tt", "left_half", "right_half"):
        a = tt["arcs"][name]
        if a.fov_edge_mm > 5:
            warnings.append(f"the {name} measurement runs {a.fov_edge_mm:.0f} mm along the edge "
                            "of the image (the field of view cuts the head): it is too short.")
    est = [n for n, v in lm.items() if v.status == "estimated"]
    meas = {
        "head_circumference_mm": round(tt["hc_mm"], 1),
        "nasion_inion_mm": round(tt["ni_mm"], 1),
        "tragus_tragus_mm": round(tt["tt_mm"], 1),
        "definitions": {
            "nasion_inion_mm": "along the scalp from nasion over Cz to inion (plane through "
                               "the three), tape-measure curve (convex hull in that plane)",
            "tragus_tragus_mm": "along the scalp from LPA over Cz to RPA (the preauricular "
                                "points stand for the tragi)",
            "head_circumference_mm": "10-20 circumference: Fpz over T3 to Oz plus Fpz over "
                                     "T4 to Oz (Fpz, Oz at 10 % of nasion-inion above the "
                                     "nasion and inion; T3, T4 at 10 % of tragus-tragus)",
        },
        "bridged_mm": {k: round(tt["arcs"][k].bridged_mm, 1)
                       for k in ("ni", "tt", "left_half", "right_half")},
        "estimated_from_template": est,
        "note": ("MRI scalp without hair: a tape on the head reads a little more. "
                 + (f"Landmark(s) {', '.join(est)} not on the scalp in the image "
                    "(estimated from the template): the measurements through them are "
                    "estimates." if est else "")),
    }
    ant_dir = lm["nasion"].t1w_mm - lm["inion"].t1w_mm
    scalp_pts: dict[str, np.ndarray] = {}
    extra: dict[str, dict[str, Any]] = {}
    if "eeg_f3" in c["methods"]:
        scalp_pts["eeg_f3"] = pos["F3"]
        extra["eeg_f3"] = {"definition": "halfway between F7 and Fz along the scalp curve "
                           "F7-Fz-F8 (10-20, Jurcak et al. 2007 UI 10/20)",
                           "alternative_fp1_c3_midpoint_t1w_mm": _v(pos["F3_alt"]),
                           "alternative_distance_mm": round(tt["f3_definitions_mm"], 2)}
    if "beam_f3" in c["methods"]:
        b = beam_f3_on_scalp(surf, tt, lm, normal_radius)
        scalp_pts["beam_f3"] = b["scalp_mm"]
        extra["beam_f3"] = {"x_mm": round(b["x_mm"], 1), "y_mm": round(b["y_mm"], 1),
                            "x_definition": "along the head circumference from the midline "
                                            "(Fpz) to the left",
                            "y_definition": "along the scalp from the vertex (Cz) toward the "
                                            "circumference point X",
                            "circumference_point_t1w_mm": _v(b["circumference_point_mm"]),
                            "source": BEAM_SOURCE}
        tt["arcs"]["beam"] = b["arc_cz_to_circumference"]
    rules: dict[str, Any] = {}
    if "5cm" in c["methods"]:
        hs = user_hotspot(c, participant_id, session_id, user)
        if hs is None:
            rules["5cm"] = {"status": "not computed: no motor hotspot given (native.scalp_rules."
                            "hotspot_t1w_mm or a 'hotspot' row in the landmarks file)"}
        else:
            if not model.in_fov(hs):
                raise InputError(c["landmarks_file"] or t1w_path, f"the motor hotspot "
                                 f"{np.round(hs, 1).tolist()} (T1w mm) is outside the T1w.",
                                 "Give the hotspot in the RAS+ mm of the desc-preproc_T1w.")
            q, d = surf.snap(hs)
            inside = model.lookup(model.head, hs[None])[0]
            if inside and d > 5.0:  # a cortical hotspot: go out along the normal
                from .native import scalp_geometry

                q = scalp_geometry(model, hs, normal_radius_mm=normal_radius,
                                   where="motor hotspot")["entry_normal"]
                how = "cortical hotspot projected out along the scalp normal"
            else:
                how = f"scalp hotspot, {d:.1f} mm from the MRI scalp"
            f = five_cm_rule(surf, q, ant_dir, float(c["five_cm_distance_mm"]), normal_radius)
            scalp_pts["5cm"] = f["scalp_mm"]
            extra["5cm"] = {"hotspot_given_t1w_mm": _v(hs), "hotspot_scalp_t1w_mm": _v(q),
                            "hotspot_how": how,
                            "distance_mm": float(c["five_cm_distance_mm"]),
                            "definition": "anterior along the scalp on the parasagittal "
                                          "curve through the hotspot (anterior = inion to "
                                          "nasion)"}
            tt["arcs"]["5cm"] = f["arc"]
    conn_t1 = conn_mni = conn_entry = None
    if connectivity is not None and connectivity.get("t1w_mm") is not None:
        conn_t1 = np.asarray(connectivity["t1w_mm"], float)
        conn_mni = np.asarray(connectivity["mni_mm"], float)
        if connectivity.get("entry_along_normal_mm") is not None:
            conn_entry = np.asarray(connectivity["entry_along_normal_mm"], float)
    poses: dict[str, Any] = {}
    pts_out: dict[str, dict[str, np.ndarray]] = {}
    sub, ses = unit_key(participant_id, session_id)
    for m in [m for m in c["methods"] if m in scalp_pts]:
        s = np.asarray(scalp_pts[m], float)
        n = _scalp_normal(model, s, normal_radius)
        d_brain = _march_to(model, model.brain, s, -n)
        if d_brain is None:
            raise InputError(t1w_path, f"{m}: the scalp normal at {np.round(s, 1).tolist()} "
                             "never meets the brain mask within 80 mm.",
                             "Check the brain mask and the landmarks.")
        cort = s - (d_brain + depth) * n
        cort_mni = to_mni(fwd, inv, cort)[0]
        scalp_mni = to_mni(fwd, inv, s)[0]
        hemi = "left" if cort_mni[0] < 0 else "right"
        if m in ("beam_f3", "eeg_f3") and hemi != "left":
            raise InputError(t1w_path, f"{m}: F3 landed in the RIGHT hemisphere (cortical point "
                             f"MNI x = {cort_mni[0]:.1f} mm): the landmarks (LPA/RPA) or the "
                             "T1w orientation are wrong.", "Do not use it. Check the T1w with a "
                             "left-side fiducial and the landmarks file.")
        lat = _check_laterality(fwd, model, cort_mni, cort, t1w_path or "", m)
        anterior, right = _local_axes(fwd, cort_mni)
        handle = nav.handle_direction(n, angle, hemi, anterior=anterior, right=right)
        label = f"{sub}{'_' + ses if ses else ''} {METHODS[m][1]}"
        pose = nav.pose_from_geometry(s, n, handle, cort, t1w=t1w_info, name=label, entry=s)
        poses[m] = pose
        r0, r5 = _r_at(rmap, cort_mni)
        rec: dict[str, Any] = {
            "label": METHODS[m][1],
            "scalp_t1w_mm": _v(s), "scalp_mni_mm": _v(scalp_mni),
            "cortical_t1w_mm": _v(cort), "cortical_mni_mm": _v(cort_mni),
            "space_t1w": "T1w", "space_mni": space_mni,
            "convention": "RAS+ mm (NIfTI world of the named image)",
            "normal_out": _v(n, 5), "scalp_to_cortex_mm": round(float(d_brain), 2),
            "cortical_depth_mm": depth,
            "hemisphere": hemi, "in_left_dlpfc_search_region": in_left_dlpfc(cort_mni),
            "laterality_check": {**lat, "passed": True},
            "r": None if r0 is None else round(r0, 4),
            "r_mean_5mm": None if r5 is None else round(r5, 4),
            "coil": {"center_mm": _v(pose.center_mm, 4), "normal_out": _v(pose.normal_out, 6),
                     "handle": _v(pose.handle, 6),
                     "matrix": [[float(v) for v in row] for row in pose.matrix],
                     "matrix_convention": "SimNIBS: columns x, y (away from handle), z (into "
                                          "head), centre; det +1 checked",
                     "handle_convention": f"{angle:g} deg from the midline, backwards and "
                                          f"lateral ({hemi} hemisphere)"},
            **extra[m],
        }
        if conn_t1 is not None:
            rec["distance_to_connectivity_target_mm"] = round(float(np.linalg.norm(cort - conn_t1)), 2)
            rec["distance_to_connectivity_target_mni_mm"] = round(
                float(np.linalg.norm(cort_mni - conn_mni)), 2)
            if conn_entry is not None:
                rec["coil_centre_distance_to_connectivity_mm"] = round(
                    float(np.linalg.norm(s - conn_entry)), 2)
        if m in ("beam_f3", "eeg_f3") and not rec["in_left_dlpfc_search_region"]:
            warnings.append(f"{m}: the cortical point (MNI {np.round(cort_mni, 0).tolist()}) is "
                            "outside the left-DLPFC search region.")
        rules[m] = rec
        pts_out[m] = {"scalp": s, "cortical": cort, "normal": n}
        if m == "5cm":
            pts_out[m]["hotspot"] = np.asarray(extra["5cm"]["hotspot_scalp_t1w_mm"], float)
    record = {
        "methods": list(c["methods"]),
        "landmarks": {k: v.to_dict() for k, v in lm.items()},
        "landmarks_source": ("user file " + str(c["landmarks_file"]) if user else
                             "template fiducials mapped through the MNI -> T1w transform and "
                             "snapped to the scalp"),
        "template_fiducials_mni_mm": {k: list(v) for k, v in TEMPLATE_FIDUCIALS_MNI.items()},
        "template_fiducials_source": FIDUCIAL_SOURCE,
        "measurements": meas,
        "ten_twenty_t1w_mm": {k: _v(v) for k, v in pos.items()},
        "ten_twenty_mni_mm": {k: _v(v) for k, v in
                              zip(pos, to_mni(fwd, inv, np.array(list(pos.values()))))},
        "cz_iterations": tt["cz_iterations"],
        "rules": rules,
        "settings": {k: c[k] for k in ("five_cm_distance_mm", "cortical_depth_mm",
                                       "max_snap_mm")},
        "warnings": warnings,
        "caveats": ("Scalp rules on an MRI-derived scalp: the scalp is the T1w's skin without "
                    "hair; landmarks come from a template unless you digitise them; a defaced "
                    "or cropped head has no nasion/face to measure from. See SAFETY.md."),
    }
    return ScalpPlan(record, poses, surf, lm, tt, pts_out)


# --------------------------------------------------------------------------------------------
# QC figures
# --------------------------------------------------------------------------------------------

#: Scalp-rule colours: none is a target method's colour (``tmstarget.report.METHOD_STYLES``);
#: the connectivity target is drawn in its exported method's colour (``"colour"`` in its marker).
_COLOURS = {"connectivity": "#ff00ff", "beam_f3": "#40e0d0", "eeg_f3": "#c080ff",
            "5cm": "#33ccff"}


def _marker_colour(name: str, d: Mapping[str, Any] | None = None) -> str:
    return str((d or {}).get("colour") or _COLOURS.get(name, "#ffff00"))


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _world_offsets(half_mm: float, step_mm: float = 1.0) -> np.ndarray:
    """Offsets (mm) from the centre of the world-aligned grid of :func:`_world_slice`, per axis."""
    n = int(np.floor(2 * half_mm / step_mm + 1e-9)) + 1
    return -half_mm + step_mm * np.arange(n)


def _world_slice(vol: np.ndarray, affine: np.ndarray, centre: np.ndarray, axes: tuple[int, int],
                 half_mm: float = 110.0, step_mm: float = 1.0, order: int = 1) -> np.ndarray:
    """A slice of ``vol`` on a world-aligned (RAS) grid through ``centre``: rows = 2nd axis.

    The grid's coordinates along both axes are ``centre + _world_offsets(half_mm, step_mm)``.
    """
    h = _world_offsets(half_mm, step_mm)
    a, b = np.meshgrid(h, h, indexing="xy")
    pts = np.tile(np.asarray(centre, float), (a.size, 1))
    pts[:, axes[0]] += a.ravel()
    pts[:, axes[1]] += b.ravel()
    inv = np.linalg.inv(affine)
    ijk = pts @ inv[:3, :3].T + inv[:3, 3]
    return ndi.map_coordinates(vol, ijk.T, order=order, mode="constant",
                               cval=0.0).reshape(a.shape)


def head_model_figure(t1w_path: str | os.PathLike[str], model: Any,
                      markers: Mapping[str, Mapping[str, Any]], centre: np.ndarray,
                      title: str = "") -> Any:
    """Head mask (red) and brain mask (blue) on the T1w, with coil entries and normals.

    Three world-aligned planes (sagittal, coronal, axial) through ``centre``, neurological
    convention (the subject's left on the left of the coronal and axial views), every axis
    labelled. ``markers`` maps a name to ``{"entry": xyz, "normal": xyz, "target": xyz}``.
    """
    plt = _plt()
    img = nb.load(str(t1w_path))
    t1 = np.asarray(img.dataobj, dtype=np.float32)
    if t1.ndim > 3:
        t1 = t1[..., 0]
    aff = np.asarray(img.affine, float)
    vmax = float(np.percentile(t1[t1 > 0], 99)) if np.any(t1 > 0) else 1.0
    head = model.head.astype(np.uint8)
    brain = None if model.brain is None else model.brain.astype(np.uint8)
    fig, axs = plt.subplots(1, 3, figsize=(13.5, 4.9), facecolor="black")
    views = (("sagittal", (1, 2), "P", "A", 0), ("coronal", (0, 2), "L", "R", 1),
             ("axial", (0, 1), "L", "R", 2))
    # slices through ``centre``; each view centred on the head (bounding box of the head mask)
    ijk = np.argwhere(model.head[::4, ::4, ::4]) * 4
    box = nb.affines.apply_affine(model.affine, ijk)
    mid = 0.5 * (box.min(axis=0) + box.max(axis=0))
    h = float(np.max(box.max(axis=0) - box.min(axis=0))) / 2 + 10.0
    for ax, (label, axes, lo, hi, normal_axis) in zip(axs, views):
        view_c = np.asarray(centre, float).copy()
        view_c[list(axes)] = mid[list(axes)]
        off = _world_offsets(h)  # the slices' own grid: contours and image share it
        xs = view_c[axes[0]] + off
        ys = view_c[axes[1]] + off
        ext = [xs[0] - 0.5, xs[-1] + 0.5, ys[0] - 0.5, ys[-1] + 0.5]  # pixel edges
        ax.imshow(_world_slice(t1, aff, view_c, axes, half_mm=h), origin="lower", cmap="gray",
                  vmin=0, vmax=vmax, extent=ext)
        ax.contour(xs, ys, _world_slice(head, aff, view_c, axes, half_mm=h, order=0), [0.5],
                   colors="#ff3030", linewidths=1.0)
        if brain is not None:
            ax.contour(xs, ys, _world_slice(brain, aff, view_c, axes, half_mm=h, order=0),
                       [0.5], colors="#3090ff", linewidths=0.8)
        for name, mk in markers.items():
            col = _marker_colour(name, mk)
            e = np.asarray(mk["entry"], float)
            if abs(e[normal_axis] - centre[normal_axis]) > 35:
                continue  # far from this plane
            ax.plot(e[axes[0]], e[axes[1]], "o", color=col, ms=6, mec="black")
            if mk.get("normal") is not None:
                nv = np.asarray(mk["normal"], float)
                tip = e - 25.0 * nv  # into the head
                ax.annotate("", xy=(tip[axes[0]], tip[axes[1]]), xytext=(e[axes[0]], e[axes[1]]),
                            arrowprops={"arrowstyle": "->", "color": col, "lw": 1.5})
            if mk.get("target") is not None:
                t = np.asarray(mk["target"], float)
                ax.plot(t[axes[0]], t[axes[1]], "x", color=col, ms=7)
        ax.set_title(f"{label}, world {'xyz'[normal_axis]} = {centre[normal_axis]:.0f} mm "
                     "(points within 35 mm projected)", color="white", fontsize=8)
        ax.text(0.02, 0.5, lo, color="white", transform=ax.transAxes, fontsize=11)
        ax.text(0.95, 0.5, hi, color="white", transform=ax.transAxes, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], color="#ff3030", lw=1.5, label="head (scalp) mask"),
               plt.Line2D([], [], color="#3090ff", lw=1.5, label="brain mask")]
    handles += [plt.Line2D([], [], color=_marker_colour(n, mk), marker="o", lw=0,
                           label=(f"{n} ({mk['method']})" if mk.get("method") else n)
                           + ": coil entry (o), into-head normal (->), target (x)")
                for n, mk in markers.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, facecolor="black",
               labelcolor="white", frameon=False)
    fig.suptitle(title or "Scalp model on the T1w (neurological: subject's left on the left)",
                 color="white", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.14, wspace=0.03)
    return fig


def head_frame(lm: Mapping[str, Landmark]) -> tuple[np.ndarray, np.ndarray]:
    """Anatomical frame from the landmarks: origin between the ears, x to RPA, y to nasion.

    Returns ``(origin, R)`` with the rows of ``R`` the x (right), y (anterior), z (up) axes.
    """
    lpa, rpa, nz = lm["lpa"].t1w_mm, lm["rpa"].t1w_mm, lm["nasion"].t1w_mm
    o = 0.5 * (lpa + rpa)
    x = rpa - lpa
    x /= np.linalg.norm(x)
    y = (nz - o) - ((nz - o) @ x) * x
    y /= np.linalg.norm(y)
    return o, np.vstack([x, y, np.cross(x, y)])


def landmarks_figure(plan: ScalpPlan, title: str = "") -> Any:
    """The scalp seen from the left, the top and behind, with landmarks, the measurement curves,
    the 10-20 positions and the scalp-rule points (in the head frame of the landmarks; in the
    top and back views the subject's left is on the left)."""
    plt = _plt()
    o, r = head_frame(plan.landmarks)
    surf = plan.surface.model.surface
    q = (surf - o) @ r.T
    # drop the neck: below the ear level by more than 40 mm
    q = q[q[:, 2] > -40]
    # (title, horizontal axis, its sign, vertical axis, depth axis, depth sign toward viewer,
    #  labels at the left/right ends)
    views = (("from the left", 1, -1, 2, 0, -1, ("A", "P")),
             ("from above", 0, 1, 1, 2, 1, ("L", "R")),
             ("from behind", 0, 1, 2, 1, -1, ("L", "R")))
    fig, axs = plt.subplots(1, 3, figsize=(14, 5.2))
    tf = lambda p: (np.asarray(p, float) - o) @ r.T
    arcs = plan.ten_twenty["arcs"] if plan.ten_twenty else {}
    for ax, (label, hx, hs, vy, dz, sign, ends) in zip(axs, views):
        # z-buffer: per 1 mm pixel the scalp point nearest the viewer, shaded by depth
        u, v, dep = hs * q[:, hx], q[:, vy], sign * q[:, dz]
        px = 1.5
        u0, v0 = float(u.min()) - 5, float(v.min()) - 5
        iu, iv = ((u - u0) / px).astype(int), ((v - v0) / px).astype(int)
        zbuf = np.full((int(iv.max()) + 4, int(iu.max()) + 4), -np.inf)
        np.maximum.at(zbuf, (iv, iu), dep)
        filled = ndi.maximum_filter(zbuf, size=3)
        zbuf = np.where(np.isfinite(zbuf), zbuf, filled)
        zbuf[~np.isfinite(zbuf)] = np.nan
        gy, gx = np.gradient(ndi.gaussian_filter(np.nan_to_num(zbuf, nan=np.nanmin(zbuf)), 1.0))
        shade = (1.0 + 0.6 * gx / px - 0.6 * gy / px) / np.sqrt(1.0 + (gx / px) ** 2
                                                                + (gy / px) ** 2)
        zbuf = np.where(np.isfinite(zbuf), shade, np.nan)
        ax.imshow(zbuf, origin="lower", cmap="Greys_r", vmin=-0.3, vmax=1.4, extent=[
            u0, u0 + px * zbuf.shape[1], v0, v0 + px * zbuf.shape[0]], interpolation="nearest")

        def visible(p: np.ndarray, sign: int = sign, dz: int = dz) -> bool:
            return bool(sign * p[dz] > -15)

        for name, arc in arcs.items():
            pts = np.array([tf(p) for p in arc.points])
            vis = sign * pts[:, dz] > -15
            pp = pts.copy()
            pp[~vis] = np.nan
            ax.plot(hs * pp[:, hx], pp[:, vy], "-", lw=1, color="#2060c0" if name not in
                    ("beam", "5cm") else _COLOURS["beam_f3" if name == "beam" else "5cm"])
        for name, l in plan.landmarks.items():
            p = tf(l.t1w_mm)
            if visible(p):
                ax.plot(hs * p[hx], p[vy], "s", color="red" if l.status == "estimated"
                        else "yellow", mec="black", ms=6)
                ax.annotate(name + (" (est.)" if l.status == "estimated" else ""),
                            (hs * p[hx], p[vy]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        if plan.ten_twenty:
            for name in ("Cz", "Fpz", "Fz", "Oz", "T3", "T4", "C3", "Fp1", "F7", "F8"):
                p = tf(plan.ten_twenty["positions"][name])
                if visible(p):
                    ax.plot(hs * p[hx], p[vy], ".", color="#2060c0", ms=6)
                    ax.annotate(name, (hs * p[hx], p[vy]), fontsize=6, color="#2060c0",
                                xytext=(2, -7), textcoords="offset points")
        for name, d in plan.points.items():
            p = tf(d["scalp"])
            if visible(p):
                ax.plot(hs * p[hx], p[vy], "o", color=_COLOURS.get(name, "k"), mec="black",
                        ms=8)
                ax.annotate(name, (hs * p[hx], p[vy]), fontsize=8, fontweight="bold",
                            xytext=(4, 4), textcoords="offset points")
            if d.get("hotspot") is not None and visible(tf(d["hotspot"])):
                h = tf(d["hotspot"])
                ax.plot(hs * h[hx], h[vy], "^", color=_COLOURS.get(name, "k"), mec="black",
                        ms=8)
                ax.annotate("hotspot", (hs * h[hx], h[vy]), fontsize=7, xytext=(4, -9),
                            textcoords="offset points")
        ax.set_aspect("equal")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.01, 0.02, ends[0], transform=ax.transAxes, fontsize=11)
        ax.text(0.96, 0.02, ends[1], transform=ax.transAxes, fontsize=11)
    m = plan.record["measurements"]
    fig.suptitle((title + "  " if title else "") + f"head circumference "
                 f"{m['head_circumference_mm'] / 10:.1f} cm, nasion-inion "
                 f"{m['nasion_inion_mm'] / 10:.1f} cm, tragus-tragus "
                 f"{m['tragus_tragus_mm'] / 10:.1f} cm (along the MRI scalp)", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.02, wspace=0.05)
    return fig


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write a figure as PNG (no metadata) atomically and close it."""
    import io as _io

    from .io import atomic_write

    plt = _plt()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None},
                facecolor=fig.get_facecolor())
    plt.close(fig)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())
    return Path(path)


# --------------------------------------------------------------------------------------------
# the workflow step (called from tmstarget.native.native_step)
# --------------------------------------------------------------------------------------------

#: Files the scalp rules add next to the native JSON (``<stem>`` = ``…_space-T1w_desc-target``
#: without ``_desc-target``): suffix after ``<base>_``.
SCALP_FILES: dict[str, str] = {
    "points_tsv": "desc-scalp_coords.tsv",
    "head_mask": "desc-head_mask.nii.gz",
    "scalp_model_figure": "desc-scalpmodel_qc.png",
    "landmarks_figure": "desc-landmarks_qc.png",
}


def output_names(base: str, methods: Sequence[str], with_5cm: bool) -> list[str]:
    """Every file name the scalp rules write for one unit (``base`` = ``…_space-T1w``)."""
    from .navigation import ALL_FORMATS

    names = [f"{base}_{v}" for v in SCALP_FILES.values()]
    for m in methods:
        if m == "5cm" and not with_5cm:
            continue
        names += [f"{base}_desc-{METHODS[m][0]}{suf}" for suf in ALL_FORMATS.values()]
    return names


@dataclass
class ScalpJob:
    """A planned scalp-rules result, ready to be written (see :meth:`write`)."""

    plan: ScalpPlan
    t1w: Path
    connectivity_entry: dict[str, Any]

    def write(self, out_dir: str | os.PathLike[str], stem: str, native_cfg: Mapping[str, Any],
              root: Path | None) -> dict[str, Any]:
        """Write the exports, the points TSV, the head mask and the two QC figures.

        Returns the ``scalp_rules`` record for the native JSON, with relative file paths.
        """
        from . import native as nat
        from . import navigation as nav
        from .io import write_nifti

        out = Path(out_dir)
        base = stem.removesuffix("_desc-target")
        rel = (lambda p: str(Path(p).resolve().relative_to(root))) if root else (
            lambda p: Path(p).name)
        rec = json_ready(self.plan.record)
        bs_primary = ("brainsight" if int(native_cfg.get("brainsight_version", 14)) == 14
                      else "brainsight_v12")
        for m, pose in self.plan.poses.items():
            written = nav.write_all(pose, self.t1w, out, f"{base}_desc-{METHODS[m][0]}",
                                    sphere_radius_mm=float(native_cfg.get("sphere_radius_mm", 5)),
                                    localite_space=str(native_cfg.get("localite_space", "RAS")))
            exports = []
            for fmt, path in written.items():
                fmt_name, how = nat._HOW_TO_LOAD[fmt]
                e = {"file": rel(path), "format": fmt_name, "key": fmt, "space": "T1w",
                     "how_to_load": how + " This is a SCALP-RULE target (" + METHODS[m][1]
                     + "), not the connectivity target."}
                if fmt.startswith("localite"):
                    e["coordinate_space"] = str(native_cfg.get("localite_space", "RAS"))
                if fmt.startswith("brainsight"):
                    e["primary"] = fmt == bs_primary
                exports.append(e)
            rec["rules"][m]["exports"] = exports
        files: dict[str, Any] = {}
        p_tsv = out / f"{base}_{SCALP_FILES['points_tsv']}"
        _write_points_tsv(p_tsv, self.plan, rec)
        files["points_tsv"] = rel(p_tsv)
        model = self.plan.surface.model
        img = nb.load(str(self.t1w))
        mask = nb.Nifti1Image(model.head.astype(np.uint8), img.affine)
        mask.set_qform(img.header.get_qform(), int(img.header["qform_code"]))
        mask.set_sform(img.header.get_sform(), int(img.header["sform_code"]))
        p_mask = out / f"{base}_{SCALP_FILES['head_mask']}"
        write_nifti(mask, p_mask)
        files["head_mask"] = rel(p_mask)
        figs: dict[str, Any] = {}
        markers = {"connectivity": self.connectivity_entry} if self.connectivity_entry else {}
        for m, d in self.plan.points.items():
            markers[m] = {"entry": d["scalp"], "normal": d["normal"], "target": d["cortical"]}
        # the three planes cut through the connectivity target (else the first scalp rule's)
        first = next(iter(markers.values()), None)
        centre = (np.asarray(first["target"], float) if first is not None
                  else model.surface.mean(axis=0))
        for key, make in (
            ("scalp_model_figure", lambda: head_model_figure(self.t1w, model, markers, centre)),
            ("landmarks_figure", lambda: landmarks_figure(self.plan)),
        ):
            path = out / f"{base}_{SCALP_FILES[key]}"
            try:
                save_figure(make(), path)
            except Exception as exc:  # noqa: BLE001 - a figure must not block the exports
                figs[key] = {"file": None, "error": f"figure not drawn: {exc}"}
                _empty_png(path)
                continue
            figs[key] = {"file": rel(path)}
        figs["scalp_model_figure"]["shows"] = (
            "head (scalp) mask in red and brain mask in blue on the T1w, with the coil entry "
            "(o), the into-head normal (->) and the cortical target (x) of the connectivity "
            "target (in its exported method's colour, as in the report's other figures) and "
            "each scalp rule")
        figs["landmarks_figure"]["shows"] = (
            "the MRI scalp from the left, above and behind with the landmarks (yellow; red = "
            "estimated), the measurement curves and 10-20 positions (blue) and the scalp-rule "
            "points")
        files["figures"] = figs
        rec["files"] = files
        return rec


def _empty_png(path: Path) -> None:
    """A 1x1 PNG so that a declared output exists when its figure failed (the JSON says why)."""
    import base64

    from .io import atomic_write

    data = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
                            "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def json_ready(obj: Any) -> Any:
    """Deep copy with numpy scalars/arrays turned into Python numbers/lists."""
    if isinstance(obj, Mapping):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _write_points_tsv(path: Path, plan: ScalpPlan, rec: Mapping[str, Any]) -> None:
    """One row per point: landmarks, 10-20 positions and scalp-rule points (T1w and MNI mm)."""
    import io as _io

    from .io import atomic_write

    buf = _io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["name", "kind", "x", "y", "z", "x_mni", "y_mni", "z_mni", "status", "note"])
    f = lambda v: "" if v is None else f"{float(v):.3f}"
    mni10 = rec["ten_twenty_mni_mm"]
    for name, l in rec["landmarks"].items():
        w.writerow([name, "landmark", *map(f, l["t1w_mm"]), "", "", "", l["status"], l["note"]])
    for name, p in rec["ten_twenty_t1w_mm"].items():
        if name in ("Nz", "Iz", "LPA", "RPA"):
            continue
        w.writerow([name, "10-20", *map(f, p), *map(f, mni10[name]), "computed", ""])
    for m, r in rec["rules"].items():
        if "scalp_t1w_mm" not in r:
            continue
        w.writerow([f"{m}_scalp", "scalp rule", *map(f, r["scalp_t1w_mm"]),
                    *map(f, r["scalp_mni_mm"]), "computed", r["label"]])
        w.writerow([f"{m}_cortex", "scalp rule", *map(f, r["cortical_t1w_mm"]),
                    *map(f, r["cortical_mni_mm"]), "computed",
                    f"cortical point beneath {m}_scalp along the scalp normal"])
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue().encode("utf-8"))


def prepare_scalp_rules(model: Any, target_json: Mapping[str, Any], native_record: Mapping,
                        t1w: str | os.PathLike[str], xfm_mni_to_t1w_points: Any,
                        xfm_t1w_to_mni_points: Any, native_cfg: Mapping[str, Any], *,
                        rmap: str | os.PathLike[str] | None = None,
                        output_root: str | os.PathLike[str] | None = None,
                        target_json_path: str | os.PathLike[str] | None = None) -> ScalpJob:
    """Plan the scalp rules of one unit (everything computed and checked; nothing written).

    The seed-correlation map is ``rmap`` or the target JSON's ``reference_image`` (relative to
    ``output_root``); its SHA-256 must match the one in the target JSON.
    """
    from . import navigation as nav
    from .io import sha256sum
    from .native import load_point_transform

    fwd = load_point_transform(xfm_mni_to_t1w_points)
    inv = None if xfm_t1w_to_mni_points is None else load_point_transform(xfm_t1w_to_mni_points)
    ref = target_json.get("reference_image") or {}
    rpath: Path | None = Path(rmap) if rmap else None
    if rpath is None and ref.get("path"):
        for base in ([Path(output_root)] if output_root else []) + (
                [Path(target_json_path).parent] if target_json_path else []):
            if (base / ref["path"]).is_file():
                rpath = base / ref["path"]
                break
    rimg = None
    if rpath is not None:
        if ref.get("sha256") and sha256sum(rpath) != ref["sha256"]:
            raise InputError(rpath, "the seed-correlation map is not the one the target JSON "
                             "was computed on (SHA-256 differs).", "Re-run the target step.")
        rimg = nb.load(str(rpath))
    prim = native_record["targets"][native_record["primary_method"]]
    plan = plan_scalp_rules(model, fwd, inv, nav.read_t1w_info(t1w),
                            dict(native_cfg.get("scalp_rules") or {}), native_cfg,
                            participant_id=str(target_json.get("participant_id") or "sub-"),
                            session_id=target_json.get("session_id"), connectivity=prim,
                            rmap=rimg, t1w_path=t1w,
                            space_mni=str(target_json.get("space") or "MNI152NLin2009cAsym"))
    plan.record["seed_map"] = (None if rpath is None else
                               {"path": str(ref.get("path") or rpath),
                                "sha256": ref.get("sha256")})
    coil = native_record.get("coil") or {}
    method = str(native_record["primary_method"])
    try:  # the exported method's colour, as in every figure of the report
        from .report import METHOD_COLOURS
        colour = METHOD_COLOURS.get(method)
    except ImportError:  # pragma: no cover - report's dependencies are installed
        colour = None
    conn = {"entry": coil.get("entry_mm"), "normal": coil.get("normal_out"),
            "target": prim.get("t1w_mm"), "method": method,
            "colour": colour} if coil.get("entry_mm") else {}
    return ScalpJob(plan, Path(t1w), conn)
