"""Native (T1w) space: move MNI targets into the subject's T1w, find the scalp entry, build the
coil pose and export it to neuronavigation systems (research use only; export only, no device
control).

Direction of fMRIPrep transforms
--------------------------------
fMRIPrep's ``mode-image`` transforms are ITK *pull maps* (fixed -> moving point maps, LPS inside
the file; nitransforms converts to RAS). ``sub-X_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5``
resamples a T1w image onto the MNI grid, so as a *point* map it takes **MNI points to T1w
points**: that is the file used here to move targets (checked on the sample data against the
simulator's known rigid transform to < 1e-4 mm). The opposite-named file maps T1w points to
MNI points; when given, it is used to check the round trip (both files must belong together).

Scalp and coil
--------------
The head (scalp) is segmented from the T1w itself: intensity threshold (10 % of the 99th
percentile), largest connected component, morphological closing and hole filling (3-D and
slice-wise along every axis), united with the brain mask; voxels on the image border are not
scalp (the field of view cuts the head there), and a coil entry at the border is refused. The
scalp-rule targets on this head model are in :mod:`tmstarget.scalp`. All geometry is computed in world
millimetres through the image affine, so the storage orientation (RAS, LAS, LPS, oblique) does
not matter. For a target ``t`` (inside the head):

* ``entry_nearest``: the scalp voxel centre nearest to ``t``;
* ``entry_normal``: the scalp point reached from ``t`` along the *local outward scalp normal*
  (normal of a plane fitted to the scalp points within ``normal_radius_mm``), iterated until
  the normal at the exit point passes through ``t``;
* the angle between the two directions ``entry - t``; the coil centre is ``entry_normal`` by
  default (config ``native.entry``);
* ``scalp_to_cortex_mm``: distance along the inward normal from the entry to the brain mask;
  ``scalp_to_target_mm``: entry-to-target distance (refused above ``max_depth_mm``).

The same is done at the left motor hotspot (hand knob, :data:`HOTSPOT_MNI_MM`) to give the
Stokes depth-adjustment *advice*: the resting motor threshold plus about 3 percentage points of
maximum stimulator output (%MSO) per mm the target is deeper than the hotspot (Stokes et al.
2005, 2007; an amount of stimulator output, not a percentage of the threshold). tmstarget never
prescribes a dose.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from . import MNI_SPACE, __version__
from . import navigation as nav
from .errors import InputError
from .io import sha256sum, write_json
from .mirror import check_t1w_not_mirrored
from .regions import REFERENCE_TARGETS_MM

__all__ = [
    "HOTSPOT_MNI_MM",
    "STOKES_PERCENT_PER_MM",
    "HeadModel",
    "PointTransform",
    "build_head_model",
    "load_point_transform",
    "native_step",
    "plan_native",
    "scalp_geometry",
]

#: Left primary-motor hand area ("hand knob"), MNI mm, used as the motor-hotspot reference for
#: the depth advice. Value from the project's issue 4 (the methods spec gives none); it is the
#: commonly cited M1 location of the Mayka et al. (2006, NeuroImage 31:1453) ALE meta-analysis
#: (attribution not re-checked against the paper's table). On the sample (Colin27) anatomy it
#: lies in the left precentral region, ~28 mm below the scalp (brain surface ~16.5 mm). It is a
#: population location: the subject's own hotspot is found by TMS, not by this coordinate.
HOTSPOT_MNI_MM: tuple[float, float, float] = (-37.0, -21.0, 58.0)

#: Points mapped through a displacement field must lie at least this many grid spacings inside
#: it: nitransforms interpolates the field's absolute positions with a cubic spline padded
#: with NaN, which is off by up to ~16 % of a spacing within ~3 spacings of the edge (measured;
#: tests/test_native.py) and silently applies no displacement outside.
FIELD_EDGE_MARGIN_VOXELS: int = 3

#: Resting motor threshold rise per mm of extra scalp-to-cortex distance, in percentage points of
#: maximum stimulator output (%MSO) (Stokes et al. 2005 J Neurophysiol 94:4520; Stokes et al.
#: 2007 Clin Neurophysiol 118:1617).
STOKES_PERCENT_PER_MM: float = 3.0

#: A T1w -> MNI -> T1w round trip through the two fMRIPrep files must agree to this (mm).
ROUNDTRIP_TOL_MM: float = 2.0
#: A mapped cortical target farther than this from the brain mask means a mismatched transform.
BRAIN_DISTANCE_TOL_MM: float = 10.0

_HOW_TO_LOAD: dict[str, tuple[str, str]] = {
    "brainsight": (
        "Brainsight v14 (2.5+) targets text",
        ("Brainsight: open the project with this T1w, then Targets > Import > 'Brainsight text' "
        "and pick this file (coordinate system NIfTI:Q:...)."),
    ),
    "brainsight_v12": (
        "Brainsight v12 (2.4) targets text",
        ("Brainsight 2.4: Targets > Import this file into the project that uses this T1w "
        "(coordinate system NIfTI:Scanner/Aligned)."),
    ),
    "localite_instrument_markers": (
        "Localite InstrumentMarkerList XML",
        ("Localite TMS Navigator: in the session with this T1w (NIfTI = RAS), import as "
        "instrument markers (coil pose)."),
    ),
    "localite_entry_target": (
        "Localite EntryTargetList XML",
        ("Localite TMS Navigator: import as entry/target pair (planning view) in the session "
        "that loaded this T1w."),
    ),
    "ant_mrk": (
        "ANT Neuro visor2 marker (.mrk JSON)",
        ("visor2: load this T1w, then import the .mrk as coil target markers (bound to the T1w "
        "qform, CoilAxesConvention simnibs)."),
    ),
    "slicer_mrk_json": (
        "3D Slicer markups JSON",
        ("3D Slicer: load the T1w, then drag this .mrk.json into Slicer (target and entry "
        "points, RAS, with coil orientation)."),
    ),
    "fcsv": (
        "3D Slicer legacy fiducials (.fcsv)",
        ("3D Slicer (any version): File > Add Data on this .fcsv next to the T1w (positions "
        "only)."),
    ),
    "csv": (
        "vendor-neutral CSV",
        ("Any tool: one row with target, entry, normal, handle and the coil matrix in T1w RAS "
        "mm, plus the T1w name, SHA-256 and qform/sform."),
    ),
    "json": ("vendor-neutral JSON", "Any tool: same content as the CSV, matrices as row lists."),
    "nifti_sphere": (
        "NIfTI sphere overlay",
        ("Any navigator or viewer: load as an overlay on this T1w (same grid and header); the "
        "sphere is centred on the target."),
    ),
}


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


@dataclass
class PointTransform:
    """A point map read from an ITK transform file (RAS mm in, RAS mm out).

    Attributes
    ----------
    path : Path
        The transform file.
    sha256 : str
        Its SHA-256.
    xfm : object
        The nitransforms object (``TransformChain`` for ``.h5``, ``Affine`` for ``.txt``/``.mat``).
    """

    path: Path
    sha256: str
    xfm: Any

    def map(self, points: np.ndarray | Sequence[Sequence[float]],
            edge_margin: bool = True) -> np.ndarray:
        """Map points (N, 3) RAS mm through the file's fixed -> moving point map.

        Every component of a composite transform is applied in turn (as nitransforms does),
        and each displacement-field component must contain the point *as it reaches that
        component* (nitransforms silently uses zero displacement outside a field), at least
        :data:`FIELD_EDGE_MARGIN_VOXELS` inside it unless ``edge_margin`` is false (for
        resampling images, where a point near the field's edge is outside the head and a
        fraction of a millimetre there does not matter; never for a target).
        """
        pts = np.atleast_2d(np.asarray(points, dtype=float))
        comps = getattr(self.xfm, "transforms", None)
        if comps:
            out = pts
            for i, comp in enumerate(comps):
                self._check_field_of_view(comp, out, i, len(comps), edge_margin)
                out = np.asarray(comp.map(out), dtype=float).reshape(-1, 3)
        else:
            out = np.asarray(self.xfm.map(pts), dtype=float).reshape(-1, 3)
        if not np.all(np.isfinite(out)):
            raise InputError(self.path, "the transform gave non-finite coordinates.",
                             "Check the transform file (re-run fMRIPrep's anatomical workflow).")
        return out

    def _check_field_of_view(self, comp: Any, pts: np.ndarray, i: int, n: int,
                             edge_margin: bool = True) -> None:
        """Refuse points outside a displacement field's grid (nitransforms would use 0 there)."""
        ref = getattr(comp, "reference", None)
        if ref is None or getattr(ref, "affine", None) is None or ref.shape is None:
            return
        ijk = nb.affines.apply_affine(np.linalg.inv(ref.affine), pts)
        shape = np.asarray(ref.shape[:3])
        which = f"component {i + 1} of {n}" if n > 1 else "its displacement field"
        if np.any(ijk < 0) or np.any(ijk > shape - 1):
            raise InputError(self.path, f"a point to map lies outside the field of view of the "
                             f"transform's displacement field ({which}), where no deformation "
                             "is defined.", "Check that the target is in the head and that this "
                             "is the subject's fMRIPrep transform.")
        m = FIELD_EDGE_MARGIN_VOXELS
        if edge_margin and (np.any(ijk < m) or np.any(ijk > shape - 1 - m)):
            raise InputError(self.path, f"a point to map lies within {m} grid spacings of the "
                             f"edge of the transform's displacement field ({which}), where the "
                             "interpolation of the field is not accurate (README, 'Known "
                             "upstream issues').", "Check that the target is in the head and "
                             "that this is the subject's fMRIPrep transform.")


def load_point_transform(path: str | os.PathLike[str]) -> PointTransform:
    """Read an ITK transform (fMRIPrep ``.h5`` composite, or affine-only ``.txt``/``.mat``/``.tfm``).

    Parameters
    ----------
    path : path-like
        For MNI -> T1w point mapping pass ``…_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5``.

    Returns
    -------
    PointTransform

    Raises
    ------
    InputError
        If the file is missing or cannot be read as an ITK transform.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "the transform file does not exist.",
                         "Point tmstarget at fMRIPrep's anat/ folder.")
    try:
        if p.suffix == ".h5":
            from nitransforms.manip import load as load_chain

            xfm = load_chain(str(p), fmt="itk")
        else:
            from nitransforms.linear import load as load_linear

            xfm = load_linear(str(p), fmt="itk")
    except Exception as exc:
        raise InputError(p, f"cannot read it as an ITK transform ({exc}).",
                         "Use fMRIPrep's …_mode-image_xfm.h5 or an ITK/ANTs affine .txt/.mat.") from exc
    return PointTransform(p, sha256sum(p), xfm)


def _local_axes(xfm: PointTransform, p_mni: np.ndarray, step: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Subject 'anterior' and 'right' directions at a point, in T1w world (MNI axes mapped)."""
    pts = np.array([p_mni, p_mni + [0.0, step, 0.0], p_mni + [step, 0.0, 0.0]])
    m = xfm.map(pts)
    ant, rgt = m[1] - m[0], m[2] - m[0]
    return ant / np.linalg.norm(ant), rgt / np.linalg.norm(rgt)


def _check_laterality(fwd: PointTransform, model: "HeadModel", p_mni: np.ndarray,
                      p_t1: np.ndarray, t1w: str | os.PathLike[str], name: str,
                      step: float = 5.0) -> dict[str, Any]:
    """Refuse a target whose left/right side is not preserved from MNI to the T1w.

    Two independent checks: (1) the transform must not mirror (its local Jacobian at the target
    has a positive determinant); (2) anatomy: in the T1w's own world frame (RAS+, +x = the
    subject's right) the target must lie on the same side of the brain mask's centre as in MNI
    (checked when the MNI target is more than 10 mm from the midline).
    """
    pts = np.vstack([p_mni] + [p_mni + d for d in np.eye(3) * step]
                    + [p_mni - d for d in np.eye(3) * step])
    m = fwd.map(pts)
    jac = np.column_stack([(m[1 + i] - m[4 + i]) / (2 * step) for i in range(3)])
    det = float(np.linalg.det(jac))
    if det <= 0:
        raise InputError(fwd.path, f"the MNI -> T1w transform mirrors the image (local Jacobian "
                         f"determinant {det:.2f} at the {name} target): left and right would be "
                         "swapped.", "Use the transform fMRIPrep wrote for this T1w and check the "
                         "T1w header's orientation with a left-side fiducial.")
    out: dict[str, Any] = {"jacobian_determinant": round(det, 4)}
    if model.brain is not None and model.brain.any():
        c_ijk = np.argwhere(model.brain).mean(axis=0)
        centre = nb.affines.apply_affine(model.affine, c_ijk)
        side = float(p_t1[0] - centre[0])
        out.update({"brain_centre_t1w_mm": _vec(centre),
                    "target_x_minus_brain_centre_x_mm": round(side, 2)})
        if abs(p_mni[0]) > 10 and abs(side) > 5 and np.sign(side) != np.sign(p_mni[0]):
            want = "left" if p_mni[0] < 0 else "right"
            got = "right" if side > 0 else "left"
            raise InputError(t1w, f"the {name} target is in the {want} hemisphere in MNI space but "
                             f"lands {abs(side):.0f} mm to the {got} of the brain's centre in this "
                             "T1w (RAS+ world): the T1w, its header or the transform is mirrored "
                             "or mismatched.", "Do not use this target. Check the T1w orientation "
                             "with a left-side fiducial and use fMRIPrep's transform for it.")
    return out


# --------------------------------------------------------------------------------------------
# Head model
# --------------------------------------------------------------------------------------------


@dataclass
class HeadModel:
    """Head and brain masks of a T1w and the scalp surface in world mm.

    Attributes
    ----------
    head, brain : ndarray of bool
        Head (scalp-enclosed) mask; brain mask (``None`` when not given).
    affine : ndarray (4, 4)
        Voxel-to-world (RAS mm) of the T1w.
    surface : ndarray (N, 3)
        World coordinates of the scalp voxel centres.
    tree : cKDTree
        KD-tree over ``surface``.
    voxel_mm : float
        Smallest voxel edge (mm), the marching step scale.
    source : str, optional
        The T1w path (named in error messages).
    """

    head: np.ndarray
    brain: np.ndarray | None
    affine: np.ndarray
    surface: np.ndarray
    tree: cKDTree
    voxel_mm: float
    source: str | None = None

    def lookup(self, mask: np.ndarray, pts: np.ndarray) -> np.ndarray:
        """Nearest-voxel values of ``mask`` at world points (False outside the grid)."""
        ijk = np.rint(nb.affines.apply_affine(np.linalg.inv(self.affine), np.atleast_2d(pts)))
        ijk = ijk.astype(int)
        ok = np.all((ijk >= 0) & (ijk < np.asarray(mask.shape)), axis=1)
        out = np.zeros(len(ijk), dtype=bool)
        out[ok] = mask[ijk[ok, 0], ijk[ok, 1], ijk[ok, 2]]
        return out

    def in_fov(self, p: np.ndarray) -> bool:
        """Whether a world point lies inside the image grid."""
        ijk = nb.affines.apply_affine(np.linalg.inv(self.affine), np.asarray(p, dtype=float))
        return bool(np.all(ijk >= -0.5) and np.all(ijk <= np.asarray(self.head.shape) - 0.5))


def build_head_model(t1w_path: str | os.PathLike[str],
                     brain_mask_path: str | os.PathLike[str] | None = None) -> HeadModel:
    """Segment the head from a T1w (threshold, largest component, closing, hole filling).

    Parameters
    ----------
    t1w_path : path-like
        The T1w.
    brain_mask_path : path-like, optional
        fMRIPrep's ``desc-brain_mask`` on the same grid (checked).

    Returns
    -------
    HeadModel

    Raises
    ------
    InputError
        Unreadable image, brain mask on another grid, or no head found.
    """
    img = nb.load(str(t1w_path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim > 3:
        data = data[..., 0]
    aff = np.asarray(img.affine, dtype=float)
    pos = data[data > 0]
    if pos.size == 0:
        raise InputError(t1w_path, "the T1w is empty (no positive voxel).", "Pass the T1w image.")
    thr = 0.1 * float(np.percentile(pos, 99))
    head = data > thr
    lab, n = ndi.label(head)
    if n == 0:
        raise InputError(t1w_path, "no head found in the T1w.", "Pass a T1w with the head in it.")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    head = lab == int(np.argmax(sizes))
    ball = ndi.generate_binary_structure(3, 1)
    head = ndi.binary_closing(head, structure=ball, iterations=3, border_value=0)
    brain = None
    if brain_mask_path is not None:
        bimg = nb.load(str(brain_mask_path))
        if bimg.shape[:3] != img.shape[:3] or not np.allclose(bimg.affine, aff, atol=1e-3):
            raise InputError(brain_mask_path, "the brain mask is not on the T1w grid (shape or "
                             "affine differ).", "Use the brain mask fMRIPrep wrote next to "
                             "this desc-preproc_T1w.")
        brain = np.asarray(bimg.dataobj) > 0.5
        if brain.ndim > 3:
            brain = brain[..., 0]
        head |= brain
    head = ndi.binary_fill_holes(head)
    for ax in range(3):  # slice-wise filling closes canals open to one side in 3-D
        sl = [slice(None)] * 3
        for k in range(head.shape[ax]):
            sl[ax] = slice(k, k + 1)
            head[tuple(sl)] = ndi.binary_fill_holes(head[tuple(sl)].squeeze(ax)).reshape(
                head[tuple(sl)].shape)
    if head.sum() < 1000:
        raise InputError(t1w_path, "the head mask is implausibly small.",
                         "Check the T1w intensities.")
    surf = head & ~ndi.binary_erosion(head, structure=ball, border_value=0)
    # where the field of view cuts the head (the image border) is not scalp
    for ax in range(3):
        sl = [slice(None)] * 3
        for k in (0, -1):
            sl[ax] = k
            surf[tuple(sl)] = False
    if not surf.any():
        raise InputError(t1w_path, "the head fills the whole image: no scalp surface inside "
                         "the field of view.", "Check the T1w intensities and field of view.")
    pts = nb.affines.apply_affine(aff, np.argwhere(surf).astype(float))
    vox = float(np.min(np.linalg.norm(aff[:3, :3], axis=0)))
    return HeadModel(head, brain, aff, pts, cKDTree(pts), vox, str(t1w_path))


def _scalp_normal(model: HeadModel, p: np.ndarray, radius_mm: float) -> np.ndarray:
    """Outward unit normal of a plane fitted to scalp points within ``radius_mm`` of ``p``."""
    idx = model.tree.query_ball_point(p, radius_mm)
    if len(idx) < 10:
        raise InputError(None, "too few scalp points to estimate the scalp normal.",
                         "Increase native.normal_radius_mm.")
    q = model.surface[idx]
    c = q.mean(axis=0)
    _, _, vt = np.linalg.svd(q - c, full_matrices=False)
    n = vt[2]
    step = 3.0 * model.voxel_mm
    out_in = model.lookup(model.head, np.array([p + step * n, p - step * n]))
    if out_in[0] and not out_in[1]:
        n = -n
    elif out_in[0] == out_in[1]:  # ambiguous: use the head's centre of mass
        centre = model.surface.mean(axis=0)
        if n @ (p - centre) < 0:
            n = -n
    return n / np.linalg.norm(n)


def _ray_exit(model: HeadModel, origin: np.ndarray, direction: np.ndarray,
              max_mm: float = 250.0) -> np.ndarray:
    """First point where a ray from inside the head leaves the head mask."""
    step = 0.25 * model.voxel_mm
    t = np.arange(0.0, max_mm, step)
    inside = model.lookup(model.head, origin + t[:, None] * direction)
    out = np.flatnonzero(~inside)
    if out.size == 0:
        raise InputError(None, "the ray from the target never leaves the head mask.",
                         "Check the T1w (is the head cut off by the field of view?).")
    k = int(out[0])
    return origin + max(t[k] - step / 2, 0.0) * direction


def _march_to(model: HeadModel, mask: np.ndarray, origin: np.ndarray, direction: np.ndarray,
              max_mm: float = 80.0) -> float | None:
    """Distance (mm) along a ray to the first voxel of ``mask`` (None if not reached)."""
    step = 0.25 * model.voxel_mm
    t = np.arange(0.0, max_mm, step)
    hit = np.flatnonzero(model.lookup(mask, origin + t[:, None] * direction))
    return None if hit.size == 0 else float(t[hit[0]])


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    c = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def _check_inside(model: HeadModel, t: np.ndarray, where: str) -> None:
    """Refuse a point outside the T1w field of view or outside the head."""
    if not model.in_fov(t):
        raise InputError(model.source, f"the {where} at T1w {np.round(t, 1).tolist()} mm lies "
                         "outside the T1w field of view, so the transform does not match this T1w.",
                         "Check that the transform and the T1w come from the same fMRIPrep run "
                         "and participant.")
    if not model.lookup(model.head, t[None])[0]:
        raise InputError(model.source, f"the {where} at T1w {np.round(t, 1).tolist()} mm lies "
                         "outside the head in the T1w.", "Check the target and that the transform belongs "
                         "to this T1w.")


def scalp_geometry(model: HeadModel, target: Sequence[float] | np.ndarray, *,
                   normal_radius_mm: float = 20.0, where: str = "target") -> dict[str, Any]:
    """Scalp entry points, normal and depths for a point inside the head (T1w world mm).

    Parameters
    ----------
    model : HeadModel
    target : array-like (3,)
        T1w RAS mm.
    normal_radius_mm : float
        Radius of the scalp patch the normal is fitted to.
    where : str
        Name used in error messages.

    Returns
    -------
    dict
        ``entry_nearest``, ``entry_normal`` (RAS mm), ``normal_out`` (at ``entry_normal``),
        ``normal_out_nearest``, ``angle_between_entries_deg``, ``scalp_to_target_nearest_mm``,
        ``scalp_to_target_normal_mm``, ``scalp_to_cortex_mm`` (along the inward normal from
        ``entry_normal`` to the brain mask; ``None`` without a brain mask).

    Raises
    ------
    InputError
        The point is outside the T1w field of view or outside the head.
    """
    t = np.asarray(target, dtype=float).reshape(3)
    _check_inside(model, t, where)
    d_near, i = model.tree.query(t)
    p_near = model.surface[int(i)]
    n_near = _scalp_normal(model, p_near, normal_radius_mm)
    n = n_near
    p = p_near
    for _ in range(20):
        p = _ray_exit(model, t, n)
        n_new = _scalp_normal(model, p, normal_radius_mm)
        if _angle_deg(n_new, n) < 0.05:
            n = n_new
            break
        n = n_new
    p = _ray_exit(model, t, n)
    ijk = nb.affines.apply_affine(np.linalg.inv(model.affine), p)
    if np.any(ijk < 1.5) or np.any(ijk > np.asarray(model.head.shape) - 2.5):
        raise InputError(model.source, f"the scalp entry for the {where} is at the edge of the "
                         "T1w field of view: the image cuts the head there, so the scalp (and "
                         "the coil position) is not in the image.", "Use a T1w that covers the "
                         "whole head above the ears.")
    cortex = None
    if model.brain is not None:
        cortex = _march_to(model, model.brain, p, -n)
    return {
        "entry_nearest": p_near,
        "entry_normal": p,
        "normal_out": n,
        "normal_out_nearest": n_near,
        "angle_between_entries_deg": _angle_deg(p_near - t, p - t),
        "scalp_to_target_nearest_mm": float(d_near),
        "scalp_to_target_normal_mm": float(np.linalg.norm(p - t)),
        "scalp_to_cortex_mm": cortex,
    }


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------


def _vec(v: np.ndarray | Sequence[float] | None, nd: int = 3) -> list[float] | None:
    return None if v is None else [round(float(x), nd) for x in np.asarray(v).reshape(-1)]


def depth_adjustment(d_target: float | None, d_hotspot: float | None) -> dict[str, Any] | None:
    """The Stokes distance adjustment of the resting motor threshold, as the advice states it.

    The distances are rounded to 0.1 mm as printed, their difference is taken from the rounded
    values and the adjustment is :data:`STOKES_PERCENT_PER_MM` times that difference, to
    0.1 percentage point, so the printed numbers multiply out exactly (1.5 mm x 3 = 4.5, never
    "4").

    Returns
    -------
    dict or None
        ``target_mm``, ``hotspot_mm``, ``deeper_mm`` (target minus hotspot, mm; negative =
        shallower), ``mso_points_per_mm`` and ``mso_points`` (percentage points of maximum
        stimulator output to add to the resting motor threshold measured at the hotspot, in
        %MSO; negative = subtract), and ``unit``. None when a distance is missing.
    """
    if d_target is None or d_hotspot is None:
        return None
    t, h = round(float(d_target), 1), round(float(d_hotspot), 1)
    delta = round(t - h, 1)
    return {"target_mm": t, "hotspot_mm": h, "deeper_mm": delta,
            "mso_points_per_mm": STOKES_PERCENT_PER_MM,
            "mso_points": round(STOKES_PERCENT_PER_MM * delta, 1),
            "unit": "percentage points of maximum stimulator output (%MSO), added to the "
                    "resting motor threshold measured at the motor hotspot (in %MSO); not a "
                    "percentage of the motor threshold"}


def _depth_advice(d_target: float | None, d_hotspot: float | None) -> str:
    adj = depth_adjustment(d_target, d_hotspot)
    if adj is None:
        return ("Scalp-to-cortex distances could not be measured at both the target and the "
                "motor hotspot, so no depth advice is given.")
    delta, pts = adj["deeper_mm"], adj["mso_points"]
    rel = (f"{delta:.1f} mm deeper than" if delta > 0 else
           f"{-delta:.1f} mm shallower than" if delta < 0 else "as deep as")
    sign = "plus" if pts >= 0 else "minus"
    example = 50.0 + pts
    return (f"ADVICE, not a prescription: the scalp-to-cortex distance is {adj['target_mm']:.1f} "
            f"mm at the target and {adj['hotspot_mm']:.1f} mm at the left motor hotspot (hand "
            f"knob): the target is {rel} the hotspot. The resting motor threshold (RMT) rises "
            f"about {STOKES_PERCENT_PER_MM:g} percentage points of maximum stimulator output "
            "(%MSO) per mm of extra scalp-to-cortex distance (Stokes et al. 2005, 2007), so the "
            f"distance-adjusted RMT is the RMT measured at the hotspot {sign} "
            f"{STOKES_PERCENT_PER_MM:g} x {abs(delta):.1f} mm = {abs(pts):.1f} %MSO (e.g. "
            f"50.0 %MSO -> {example:.1f} %MSO). This is an amount of stimulator output added to "
            "the RMT, not a percentage of the RMT; a protocol dose in % of RMT (e.g. 120 % RMT) "
            "is then taken of the adjusted RMT. The stimulation intensity is the clinician's "
            "and the protocol's decision; measure the hotspot on the subject.")


def _check_transform_space(path: str | os.PathLike[str], needed: str, space: str) -> None:
    """Refuse a fMRIPrep transform whose name is for another template than the targets.

    The targets are in the template of the target JSON (``space``); a T1w <-> MNI transform of
    the other MNI template would move them by several mm with no visible sign.
    """
    name = Path(path).name
    if "_from-" in name and f"_{needed}_" not in f"_{name}":
        raise InputError(path, f"this transform is not {needed} but the targets are in {space}.",
                         f"Give fMRIPrep's sub-…_{needed}_mode-image_xfm.h5 (fMRIPrep "
                         f"--output-spaces {space}, the same template as config space).")


def plan_native(target_json: Mapping[str, Any], t1w: str | os.PathLike[str],
                brain_mask: str | os.PathLike[str] | None,
                xfm_mni_to_t1w_points: str | os.PathLike[str],
                xfm_t1w_to_mni_points: str | os.PathLike[str] | None,
                cfg: Mapping[str, Any], *, model: HeadModel | None = None
                ) -> tuple[dict[str, Any], nav.CoilPose]:
    """Everything the native step computes, in memory (nothing written).

    Parameters
    ----------
    target_json : mapping
        Content of the MNI target JSON (rule ``target``).
    t1w, brain_mask : path-like
        fMRIPrep ``desc-preproc_T1w`` and ``desc-brain_mask``.
    xfm_mni_to_t1w_points : path-like
        ``…_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5`` (moves MNI points into T1w).
    xfm_t1w_to_mni_points : path-like, optional
        ``…_from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.h5`` (round-trip check).
    cfg : mapping
        The ``native`` config section.
    model : HeadModel, optional
        The head model of ``t1w`` and ``brain_mask`` if already built (else built here).

    Returns
    -------
    record : dict
        The JSON record (without ``exports``).
    pose : CoilPose
        The primary method's pose.

    Raises
    ------
    InputError
        Any refusal (header, transform mismatch, outside head, too deep, bad pose).
    """
    info = nav.read_t1w_info(t1w)
    space_mni = str(target_json.get("space") or MNI_SPACE)
    _check_transform_space(xfm_mni_to_t1w_points, f"from-T1w_to-{space_mni}", space_mni)
    if xfm_t1w_to_mni_points is not None:
        _check_transform_space(xfm_t1w_to_mni_points, f"from-{space_mni}_to-T1w", space_mni)
    fwd = load_point_transform(xfm_mni_to_t1w_points)
    inv = None if xfm_t1w_to_mni_points is None else load_point_transform(xfm_t1w_to_mni_points)
    targets = dict(target_json["targets"])
    method = cfg.get("method") or ("cluster" if "cluster" in targets else next(iter(targets)))
    if method not in targets:
        raise InputError(None, f"native.method '{method}' was not computed (methods: "
                         f"{', '.join(targets)}).", "Set native.method to one of target.methods.")
    names = list(targets)
    mni = np.array([[targets[m]["x"], targets[m]["y"], targets[m]["z"]] for m in names], float)
    t1 = fwd.map(mni)
    roundtrip = None
    if inv is not None:
        back = inv.map(t1)
        roundtrip = float(np.max(np.linalg.norm(back - mni, axis=1)))
        if roundtrip > ROUNDTRIP_TOL_MM:
            raise InputError(inv.path, f"MNI -> T1w -> MNI through the two transform files misses "
                             f"by {roundtrip:.1f} mm (allowed {ROUNDTRIP_TOL_MM} mm): the files do "
                             "not belong together or one is swapped.", "Use the pair fMRIPrep "
                             "wrote for this participant (from-T1w_to-MNI… and from-MNI…_to-T1w).")
    if model is None:
        model = build_head_model(t1w, brain_mask)
    normal_radius = float(cfg.get("normal_radius_mm", 20.0))
    max_depth = float(cfg.get("max_depth_mm", 40.0))
    entry_kind = cfg.get("entry", "normal")
    per: dict[str, Any] = {}
    prim_geo = None
    for name, p_mni, p_t1 in zip(names, mni, t1):
        rec: dict[str, Any] = {"mni_mm": _vec(p_mni), "t1w_mm": _vec(p_t1),
                               "space_mni": space_mni, "space_t1w": "T1w",
                               "convention": "RAS+ mm (NIfTI world of the named image)"}
        try:
            _check_inside(model, p_t1, f"{name} target")
            if model.brain is not None and not model.lookup(model.brain, p_t1[None])[0]:
                dist = ndi.distance_transform_edt(
                    ~model.brain, sampling=np.linalg.norm(model.affine[:3, :3], axis=0))
                ijk = np.rint(nb.affines.apply_affine(np.linalg.inv(model.affine), p_t1)).astype(int)
                dmm = float(dist[tuple(ijk)])
                if dmm > BRAIN_DISTANCE_TOL_MM:
                    raise InputError(fwd.path, f"the {name} target lands {dmm:.1f} mm outside the "
                                     "brain mask of the T1w: the transform does not match this "
                                     "T1w.", "Use the transform fMRIPrep wrote with this T1w.")
            geo = scalp_geometry(model, p_t1, normal_radius_mm=normal_radius,
                                 where=f"{name} target")
            entry = geo["entry_normal"] if entry_kind == "normal" else geo["entry_nearest"]
            depth = float(np.linalg.norm(entry - p_t1))
            if depth > max_depth:
                raise InputError(t1w, f"the {name} target is {depth:.1f} mm below the scalp "
                                 f"(allowed native.max_depth_mm = {max_depth:g} mm); a TMS coil "
                                 "cannot reach it.", "Check the target; raise max_depth_mm only "
                                 "if you know why.")
        except InputError as exc:
            if name == method:
                raise
            rec["error"] = str(exc)
            per[name] = rec
            continue
        rec.update({
            "entry_nearest_mm": _vec(geo["entry_nearest"]),
            "entry_along_normal_mm": _vec(geo["entry_normal"]),
            "angle_between_entries_deg": round(geo["angle_between_entries_deg"], 2),
            "normal_out": _vec(geo["normal_out"], 5),
            "scalp_to_target_mm": round(depth, 2),
            "scalp_to_target_nearest_mm": round(geo["scalp_to_target_nearest_mm"], 2),
            "scalp_to_target_along_normal_mm": round(geo["scalp_to_target_normal_mm"], 2),
            "scalp_to_cortex_mm": (None if geo["scalp_to_cortex_mm"] is None
                                   else round(geo["scalp_to_cortex_mm"], 2)),
        })
        per[name] = rec
        if name == method:
            prim_geo = (geo, entry, p_mni, p_t1)
    assert prim_geo is not None
    geo, entry, p_mni, p_t1 = prim_geo
    hemisphere = "left" if p_mni[0] < 0 else "right"
    anterior, right = _local_axes(fwd, p_mni)
    laterality = _check_laterality(fwd, model, p_mni, p_t1, t1w, method)
    n_out = geo["normal_out"] if entry_kind == "normal" else geo["normal_out_nearest"]
    angle = float(cfg.get("handle_angle_deg", 45.0))
    handle = nav.handle_direction(n_out, angle, hemisphere, anterior=anterior, right=right)
    sub = target_json.get("participant_id") or "sub"
    ses = target_json.get("session_id")
    label = f"{sub}{'_' + ses if ses else ''} {method} target"
    pose = nav.pose_from_geometry(entry, n_out, handle, p_t1, t1w=info, name=label, entry=entry)
    # hotspot
    hs_mni = np.asarray(cfg.get("hotspot_mm") or HOTSPOT_MNI_MM, dtype=float)
    hotspot: dict[str, Any] = {"mni_mm": _vec(hs_mni), "source": (
        "left M1 hand area ('hand knob'), default MNI (-37, -21, 58): the M1 location commonly "
        "cited from Mayka et al. 2006 NeuroImage 31:1453 (population coordinate, not the "
        "subject's TMS-measured hotspot)")}
    try:
        hs_t1 = fwd.map(hs_mni[None])[0]
        hotspot["t1w_mm"] = _vec(hs_t1)
        hgeo = scalp_geometry(model, hs_t1, normal_radius_mm=normal_radius, where="motor hotspot")
        hotspot.update({"entry_along_normal_mm": _vec(hgeo["entry_normal"]),
                        "normal_out": _vec(hgeo["normal_out"], 5),
                        "scalp_to_cortex_mm": (None if hgeo["scalp_to_cortex_mm"] is None
                                               else round(hgeo["scalp_to_cortex_mm"], 2))})
    except InputError as exc:
        hotspot["error"] = str(exc)
        hotspot["scalp_to_cortex_mm"] = None
    d_t = per[method]["scalp_to_cortex_mm"]
    d_h = hotspot.get("scalp_to_cortex_mm")
    refs = {}
    ref_sites: Mapping[str, Any] = REFERENCE_TARGETS_MM
    if space_mni != MNI_SPACE:  # the published sites (FSL MNI152) moved into the targets' space
        from .regions import PUBLISHED_SITES
        from .spaces import convert_points

        ref_sites = {k: tuple(round(float(v), 2) for v in convert_points([c.xyz], c.space,
                                                                          space_mni)[0])
                     for k, c in PUBLISHED_SITES.items()}
    for rname, rmni in ref_sites.items():
        try:
            refs[rname] = {"mni_mm": _vec(rmni), "t1w_mm": _vec(fwd.map(np.array([rmni]))[0])}
        except InputError as exc:
            refs[rname] = {"mni_mm": _vec(rmni), "error": str(exc)}
    record = {
        "participant_id": target_json.get("participant_id"),
        "session_id": ses,
        "space": "T1w",
        "convention": "RAS+ mm (NIfTI world of the T1w named below; qform = sform checked)",
        "primary_method": method,
        "t1w": {"path": str(Path(t1w).resolve()), "name": info.name, "sha256": info.sha256,
                "qform_code": info.qform_code, "sform_code": info.sform_code,
                "qform": info.qform.tolist(), "sform": info.sform.tolist(),
                "note": "Load exactly this file (fMRIPrep desc-preproc_T1w) in the navigator."},
        "brain_mask": (None if brain_mask is None else
                       {"path": str(Path(brain_mask).resolve()), "sha256": sha256sum(brain_mask)}),
        "transforms": {
            "mni_to_t1w_points": {"path": str(fwd.path.resolve()), "sha256": fwd.sha256,
                                  "role": "moves MNI points into T1w (ITK pull map of the "
                                          "T1w->MNI image transform)"},
            "t1w_to_mni_points": (None if inv is None else
                                  {"path": str(inv.path.resolve()), "sha256": inv.sha256,
                                   "role": "round-trip check"}),
            "roundtrip_error_mm": None if roundtrip is None else round(roundtrip, 4),
        },
        "targets": per,
        "coil": {
            "method": method,
            "center_mm": _vec(pose.center_mm, 4),
            "entry_mm": _vec(pose.entry_mm, 4),
            "entry_choice": entry_kind,
            "normal_out": _vec(pose.normal_out, 6),
            "handle": _vec(pose.handle, 6),
            "handle_convention": (f"handle along the scalp, {angle:g} deg from the midline, pointing "
                                  f"backwards and lateral ({hemisphere} hemisphere), midline and "
                                  "anterior taken from the MNI axes mapped into this T1w"),
            "matrix": [[float(v) for v in r] for r in pose.matrix],
            "matrix_convention": ("SimNIBS: columns x, y (away from handle), z (into head), "
                                  "centre; det +1 checked"),
        },
        "laterality_check": {**laterality, "hemisphere_mni": hemisphere, "passed": True},
        "scalp_to_cortex_mm": {"target": d_t, "hotspot": d_h},
        "hotspot": hotspot,
        "depth_advice": _depth_advice(d_t, d_h),
        "depth_adjustment": depth_adjustment(d_t, d_h),
        "reference_targets": refs,
        "scalp_model": {"method": "T1w threshold (10 % of 99th percentile), largest component, "
                                  "closing, hole filling, united with the brain mask",
                        "normal_radius_mm": normal_radius, "max_depth_mm": max_depth},
        "software": {"tmstarget": __version__},
        "research_use_only": "Research use only; not a medical device. Export only: no device "
                             "control. See SAFETY.md.",
    }
    return record, pose


def native_step(target_json: str | os.PathLike[str], t1w: str | os.PathLike[str],
                brain_mask: str | os.PathLike[str] | None,
                xfm_mni_to_t1w_points: str | os.PathLike[str],
                xfm_t1w_to_mni_points: str | os.PathLike[str] | None,
                cfg: Mapping[str, Any], out_json: str | os.PathLike[str],
                output_root: str | os.PathLike[str] | None = None,
                rmap: str | os.PathLike[str] | None = None,
                check_mirror: bool = True,
                repro_json: str | os.PathLike[str] | None = None,
                qc_path: str | os.PathLike[str] | None = None,
                warn_cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Workflow step: native-space targets, coil pose and every navigator export.

    Writes ``out_json`` (``…_space-T1w_desc-target_coords.json``) and the export files
    ``<stem>_<format>.<ext>`` next to it, where ``<stem>`` is ``out_json``'s name without
    ``_coords.json``. Everything is computed and checked before anything is written.

    Parameters
    ----------
    target_json : path-like
        MNI target JSON from rule ``target``.
    t1w, brain_mask, xfm_mni_to_t1w_points, xfm_t1w_to_mni_points
        See :func:`plan_native`.
    cfg : mapping
        Whole config (uses its ``native`` section) or the section itself.
    out_json : path-like
    output_root : path-like, optional
        Export paths in the JSON are relative to ``out_json``'s folder (and the root, if given).
    rmap : path-like, optional
        The MNI seed-correlation map (default: the target JSON's ``reference_image``, relative
        to ``output_root``); the scalp rules report ``r`` at their cortical points.

    Scalp rules (``native.scalp_rules``, on by default) add ``scalp_rules`` to the JSON and
    their own files next to it (see :func:`tmstarget.scalp.scalp_rules_step`).
    check_mirror : bool
        Refuse a T1w that matches the template no better than its left-right mirror
        (:func:`tmstarget.mirror.check_t1w_not_mirrored`; recorded as ``mirror_check``). Only
        synthetic test heads, which have no anatomy to tell, turn it off.
    repro_json : path-like, optional
        The unit's reproducibility statistics with its own verdict
        (:mod:`tmstarget.verdict`); without it every method is ``not assessed``.
    qc_path : path-like, optional
        The seed-map QC record (data-quality warnings when ``repro_json`` is absent).
    warn_cfg : mapping, optional
        Configuration with the ``denoise.warn_*`` thresholds.

    The verdict of the primary (exported) method and every warning go into the JSON
    (``verdict``, ``warnings``), into every navigator file's label and comment, and, for an
    unreliable or warned target, into a marker file ``<stem>_UNRELIABLE.txt`` or
    ``<stem>_WARNINGS.txt`` beside the exports.

    Returns
    -------
    dict
        The JSON record.
    """
    ncfg = dict(cfg.get("native", cfg))
    tj = json.loads(Path(target_json).read_text())
    nav.read_t1w_info(t1w)  # header refusals come first, before any segmentation
    model = build_head_model(t1w, brain_mask)
    mirror = (check_t1w_not_mirrored(t1w, brain_mask, xfm_mni_to_t1w_points) if check_mirror
              else None)
    record, pose = plan_native(tj, t1w, brain_mask, xfm_mni_to_t1w_points,
                               xfm_t1w_to_mni_points, ncfg, model=model)
    out_json = Path(out_json)
    if not out_json.name.endswith("_coords.json"):
        raise InputError(out_json, "the output name must end in _coords.json.", "")
    stem = out_json.name[: -len("_coords.json")]
    scalp_cfg = dict(ncfg.get("scalp_rules") or {})
    scalp_job = None
    if scalp_cfg.get("enabled", True):
        from . import scalp

        scalp_job = scalp.prepare_scalp_rules(
            model, tj, record, t1w, xfm_mni_to_t1w_points, xfm_t1w_to_mni_points, ncfg,
            rmap=rmap, output_root=output_root, target_json_path=target_json)
    verdict, status, marker_text = _verdict_for_exports(tj, record, repro_json, qc_path,
                                                        warn_cfg or {})
    pose = _labelled_pose(pose, tj, record["primary_method"], status, verdict)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    for word in ("UNRELIABLE", "WARNINGS"):  # a marker from an earlier verdict must not stay
        (out_json.parent / f"{stem}_{word}.txt").unlink(missing_ok=True)
    written = nav.write_all(pose, t1w, out_json.parent, stem,
                            sphere_radius_mm=float(ncfg.get("sphere_radius_mm", 5.0)),
                            localite_space=str(ncfg.get("localite_space", "RAS")))
    bs_primary = "brainsight" if int(ncfg.get("brainsight_version", 14)) == 14 else "brainsight_v12"
    root = Path(output_root).resolve() if output_root else None
    exports = []
    for fmt, path in written.items():
        fmt_name, how = _HOW_TO_LOAD[fmt]
        rel = (str(path.resolve().relative_to(root)) if root else path.name)
        entry = {"file": rel, "format": fmt_name, "key": fmt, "space": "T1w",
                 "how_to_load": how}
        if fmt.startswith("localite"):
            entry["coordinate_space"] = str(ncfg.get("localite_space", "RAS"))
        if fmt.startswith("brainsight"):
            entry["primary"] = fmt == bs_primary
        exports.append(entry)
    record["exports"] = exports
    if scalp_job is not None:
        record["scalp_rules"] = scalp_job.write(out_json.parent, stem, ncfg, root)
    tj_path = Path(target_json).resolve()
    record["target_json"] = (str(tj_path.relative_to(root))
                             if root is not None and root in tj_path.parents else str(tj_path))
    record["mirror_check"] = mirror
    record["verdict"] = verdict
    record["warnings"] = verdict["warnings_all"]
    if status:
        marker = out_json.parent / f"{stem}_{status}.txt"
        marker.write_text(marker_text, encoding="utf-8")
        record["marker_file"] = (str(marker.resolve().relative_to(root)) if root
                                 else marker.name)
    write_json(out_json, record)
    t = record["targets"][record["primary_method"]]
    print(f"[tmstarget] {record['participant_id']}"
          + (f" {record['session_id']}" if record["session_id"] else "")
          + f": {record['primary_method']} target in T1w {t['t1w_mm']} mm, "
          f"{t['scalp_to_target_mm']} mm below the scalp; {len(exports)} navigator files; "
          f"verdict {verdict['primary_verdict']}"
          + (f"; {len(verdict['warnings_all'])} warning(s)" if verdict["warnings_all"] else "")
          + (f"; MARKED {status}" if status else ""),
          flush=True)
    return record


def _verdict_for_exports(tj: Mapping[str, Any], record: Mapping[str, Any],
                         repro_json: str | os.PathLike[str] | None,
                         qc_path: str | os.PathLike[str] | None,
                         warn_cfg: Mapping[str, Any]) -> tuple[dict[str, Any], str, str]:
    """The unit's verdict for the native JSON, the status word and the marker file's text."""
    from .verdict import NOT_ASSESSED, UNRELIABLE, participant_warnings, unit_verdict

    repro = json.loads(Path(repro_json).read_text()) if repro_json else None
    qc = json.loads(Path(qc_path).read_text()) if qc_path else {}
    v = (repro or {}).get("verdict") or unit_verdict(repro, qc, warn_cfg)
    pm = record["primary_method"]
    pv = (v.get("methods") or {}).get(pm)
    word = pv["verdict"] if pv else NOT_ASSESSED
    warnings = participant_warnings(v, tj.get("warnings", []))
    out = {**v, "primary_method": pm, "primary_verdict": word,
           "status": word, "method": pm,  # read by the terminal's closing summary
           "primary_reasons": list(pv["reasons"]) if pv else [], "warnings_all": warnings}
    status = "UNRELIABLE" if word == UNRELIABLE else ("WARNINGS" if warnings else "")
    text = ""
    if status:
        text = "\n".join([
            f"{status}: the exported {pm} target of {tj.get('participant_id')}"
            + (f" {tj.get('session_id')}" if tj.get("session_id") else "")
            + f" is {word}" + (" and has warnings" if warnings else "") + ".",
            *(f"- reason: {r}" for r in out["primary_reasons"]),
            *(f"- warning: {w}" for w in warnings),
            "Read the participant's report before loading these files into a navigator.",
        ]) + "\n"
    return out, status, text


def _labelled_pose(pose: Any, tj: Mapping[str, Any], method: str, status: str,
                   verdict: Mapping[str, Any]) -> Any:
    """The pose with entries named for what they are (cortical target, coil on scalp), the
    method, and the status (``UNRELIABLE`` / ``WARNINGS``) in the names and the comment."""
    import dataclasses

    sub = tj.get("participant_id") or "sub"
    ses = tj.get("session_id")
    who = f"{sub}{'_' + ses if ses else ''}"
    mark = f" {status}" if status else ""
    note = f"verdict {verdict['primary_verdict']} ({method})"
    if verdict["primary_reasons"]:
        note += ": " + "; ".join(verdict["primary_reasons"])
    if verdict["warnings_all"]:
        note += f"; {len(verdict['warnings_all'])} warning(s), see the report"
    if status:
        note = f"{status}: {note}"
    return dataclasses.replace(
        pose, name=f"{who} {method} coil on scalp{mark}",
        target_label=f"{who} {method} cortical target{mark}",
        entry_label=f"{who} {method} coil on scalp{mark}", note=note)
