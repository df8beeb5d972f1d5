"""Read and write ITK transform files the way fMRIPrep (ANTs) stores them.

Conventions
-----------
* ITK works in **LPS+** physical coordinates; NIfTI/nibabel/nitransforms use **RAS+**.
  A RAS point map ``M_ras`` (4x4) becomes ``M_lps = F @ M_ras @ F`` with
  ``F = diag(-1, -1, 1, 1)`` (``F`` is its own inverse).
* An ITK transform is a **pull map**: it maps points of the *fixed* (reference, output)
  space to points of the *moving* (input) space.  fMRIPrep's
  ``sub-X_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5`` resamples a T1w image into
  MNI space, so as a point map it takes **MNI points to T1w points**; the file
  ``from-MNI152NLin2009cAsym_to-T1w`` takes T1w points to MNI points.
* ITK's affine is ``y = A (x - c) + c + t`` with ``TransformParameters`` =
  ``A`` (row-major, 9 values) followed by ``t`` (3 values) and
  ``TransformFixedParameters`` = the centre ``c`` (3 values), all in LPS.
* An HDF5 composite (what ``antsRegistration --write-composite-transform`` and
  fMRIPrep write) has ``TransformGroup/0`` = ``CompositeTransform_double_3_3`` and the
  component transforms in ``TransformGroup/1..n``.  ITK applies the components
  last-first, so for ``[affine, displacement field]`` a fixed point is displaced by
  the field first, then mapped by the affine.

These files can be read with ``nitransforms.manip.load(path, fmt="itk")`` (``.h5``) and
``nitransforms.linear.load(path, fmt="itk")`` (``.txt``), or with :func:`load_itk_affine`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import numpy.typing as npt

#: RAS <-> LPS flip (its own inverse).
LPS_FLIP: np.ndarray = np.diag([-1.0, -1.0, 1.0, 1.0])

_AFFINE_TYPE = "AffineTransform_double_3_3"
_FIELD_TYPE = "DisplacementFieldTransform_float_3_3"
_COMPOSITE_TYPE = "CompositeTransform_double_3_3"

PathLike = str | os.PathLike


def ras_to_lps(matrix: npt.ArrayLike) -> np.ndarray:
    """Convert a 4x4 point map between RAS+ and LPS+ conventions.

    Parameters
    ----------
    matrix : array-like, shape (4, 4)
        Homogeneous point map in one convention.

    Returns
    -------
    numpy.ndarray, shape (4, 4)
        The same map in the other convention (the operation is an involution).
    """
    m = np.asarray(matrix, dtype=float)
    if m.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {m.shape}")
    return LPS_FLIP @ m @ LPS_FLIP


def itk_affine_parameters(
    matrix_ras: npt.ArrayLike, center_ras: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """ITK ``(TransformParameters, TransformFixedParameters)`` of a RAS point map.

    Parameters
    ----------
    matrix_ras : array-like, shape (4, 4)
        Affine point map (fixed -> moving), RAS+ mm.
    center_ras : sequence of 3 floats, optional
        Centre of rotation (RAS+ mm) to store as fixed parameters.  The mapping is the
        same whatever centre is chosen; the translation is adjusted. Default origin.

    Returns
    -------
    params : numpy.ndarray, shape (12,)
        Row-major 3x3 matrix then translation, LPS.
    fixed : numpy.ndarray, shape (3,)
        Centre of rotation, LPS.
    """
    m = ras_to_lps(matrix_ras)
    c_ras = np.zeros(3) if center_ras is None else np.asarray(center_ras, dtype=float)
    c = c_ras * np.array([-1.0, -1.0, 1.0])
    a, b = m[:3, :3], m[:3, 3]
    # y = A x + b = A (x - c) + c + t  =>  t = b + A c - c
    t = b + a @ c - c
    return np.concatenate([a.ravel(), t]), c


def ras_from_itk_parameters(params: npt.ArrayLike, fixed: npt.ArrayLike) -> np.ndarray:
    """RAS 4x4 point map from ITK affine parameters (inverse of :func:`itk_affine_parameters`).

    Parameters
    ----------
    params : array-like, shape (12,)
        Row-major 3x3 matrix then translation (LPS).
    fixed : array-like, shape (3,)
        Centre of rotation (LPS).

    Returns
    -------
    numpy.ndarray, shape (4, 4)
        Fixed -> moving point map in RAS+ mm.
    """
    p = np.asarray(params, dtype=float).ravel()
    c = np.asarray(fixed, dtype=float).ravel()[:3]
    a, t = p[:9].reshape(3, 3), p[9:12]
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = t + c - a @ c
    return ras_to_lps(m)


#: Approximate head bounding box in MNI152 space (RAS+ mm), used as default field extent.
MNI_HEAD_BBOX_RAS: tuple[tuple[float, float, float], tuple[float, float, float]] = (
    (-90.0, -126.0, -72.0), (91.0, 91.0, 109.0))

#: Default extra margin (mm) of the zero displacement field around the head.  nitransforms
#: interpolates the field (as absolute positions) with a cubic spline and a constant
#: boundary, which is only exact ~8 grid points away from the grid's edge.
FIELD_MARGIN_MM: float = 80.0


def field_grid(
    bbox_min_ras: Sequence[float],
    bbox_max_ras: Sequence[float],
    spacing: float = 10.0,
    margin: float = 0.0,
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and LPS origin of an axis-aligned (LPS) grid covering a RAS bounding box.

    Parameters
    ----------
    bbox_min_ras, bbox_max_ras : sequence of 3 floats
        Opposite corners of the box to cover, RAS+ mm.
    spacing : float
        Grid spacing in mm.
    margin : float
        Extra margin added on every side, mm.

    Returns
    -------
    shape : tuple of 3 int
    origin_lps : numpy.ndarray, shape (3,)
        LPS coordinates of voxel (0, 0, 0); the grid direction is the identity (LPS).
    """
    lo = np.minimum(bbox_min_ras, bbox_max_ras) * np.array([-1.0, -1.0, 1.0])
    hi = np.maximum(bbox_min_ras, bbox_max_ras) * np.array([-1.0, -1.0, 1.0])
    lo, hi = np.minimum(lo, hi) - margin, np.maximum(lo, hi) + margin
    n = np.ceil((hi - lo) / spacing).astype(int) + 1
    return (int(n[0]), int(n[1]), int(n[2])), lo


def _write_string(group: h5py.Group, name: str, value: str) -> None:
    """Write a one-element variable-length ASCII string dataset (as ITK does)."""
    group.create_dataset(
        name, data=np.array([value.encode("ascii")], dtype=object),
        dtype=h5py.string_dtype("ascii"), track_times=False,
    )


def _write_array(group: h5py.Group, name: str, data: np.ndarray) -> None:
    group.create_dataset(name, data=data, track_times=False)


def write_itk_h5_composite(
    path: PathLike,
    matrix_ras: npt.ArrayLike,
    warp_shape: Sequence[int] | None = None,
    warp_origin_lps: Sequence[float] | None = None,
    warp_spacing: float = 10.0,
    warp_bbox_ras: Sequence[Sequence[float]] | None = None,
    center_ras: Sequence[float] | None = None,
    include_warp: bool = True,
) -> Path:
    """Write an fMRIPrep-style ITK HDF5 composite transform (affine + displacement field).

    The file holds ``TransformGroup/0`` (``CompositeTransform_double_3_3``),
    ``TransformGroup/1`` (``AffineTransform_double_3_3``) and, unless
    ``include_warp`` is false, ``TransformGroup/2``
    (``DisplacementFieldTransform_float_3_3``) with an all-zero displacement field, so
    the whole composite maps points exactly like ``matrix_ras``.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.h5`` file.
    matrix_ras : array-like, shape (4, 4)
        Point map from the FIXED space to the MOVING space, RAS+ mm.  For a file named
        ``from-A_to-B`` (which resamples an A image into B) this maps B points to A points.
    warp_shape : sequence of 3 int, optional
        Grid size of the zero displacement field.  Default: the grid of
        :func:`field_grid` covering ``warp_bbox_ras`` plus :data:`FIELD_MARGIN_MM`.
    warp_origin_lps : sequence of 3 float, optional
        LPS coordinate of the field's first voxel (with ``warp_shape``; default centres
        the grid on the origin).
    warp_spacing : float
        Field grid spacing, mm.
    warp_bbox_ras : pair of 3-sequences, optional
        RAS box (in the FIXED space) the field must cover when ``warp_shape`` is not
        given (default :data:`MNI_HEAD_BBOX_RAS`).
    center_ras : sequence of 3 float, optional
        Centre of rotation stored in the affine's fixed parameters (RAS+ mm).
    include_warp : bool
        Write the zero displacement field (as fMRIPrep's files have one).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    params, fixed = itk_affine_parameters(matrix_ras, center_ras)
    with h5py.File(path, "w", libver="earliest", track_order=False) as f:
        _write_string(f, "HDFVersion", "tmstarget")
        _write_string(f, "ITKVersion", "n/a (written by tmstarget.itk)")
        _write_string(f, "OSName", "n/a")
        _write_string(f, "OSVersion", "n/a")
        tg = f.create_group("TransformGroup")
        g0 = tg.create_group("0")
        _write_string(g0, "TransformType", _COMPOSITE_TYPE)
        g1 = tg.create_group("1")
        _write_string(g1, "TransformType", _AFFINE_TYPE)
        _write_array(g1, "TransformFixedParameters", fixed.astype("<f8"))
        _write_array(g1, "TransformParameters", params.astype("<f8"))
        if include_warp:
            if warp_shape is None:
                lo, hi = MNI_HEAD_BBOX_RAS if warp_bbox_ras is None else warp_bbox_ras
                shape_t, origin = field_grid(lo, hi, warp_spacing, FIELD_MARGIN_MM)
                shape = np.array(shape_t, dtype=int)
            else:
                shape = np.array(warp_shape, dtype=int)
                origin = (-(shape - 1) * warp_spacing / 2.0 if warp_origin_lps is None
                          else np.asarray(warp_origin_lps, dtype=float))
            fixed_field = np.concatenate(
                [shape.astype(float), origin, np.full(3, float(warp_spacing)), np.eye(3).ravel()]
            )
            g2 = tg.create_group("2")
            _write_string(g2, "TransformType", _FIELD_TYPE)
            _write_array(g2, "TransformFixedParameters", fixed_field.astype("<f8"))
            g2.create_dataset("TransformParameters", data=np.zeros(3 * int(np.prod(shape)), "<f4"),
                              compression="gzip", compression_opts=9, track_times=False)
    return path


def write_itk_txt_affine(
    path: PathLike, matrix_ras: npt.ArrayLike, center_ras: Sequence[float] | None = None
) -> Path:
    """Write an affine-only ITK text transform (``#Insight Transform File V1.0``).

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.txt``/``.tfm`` file.
    matrix_ras : array-like, shape (4, 4)
        Fixed -> moving point map, RAS+ mm (see :func:`write_itk_h5_composite`).
    center_ras : sequence of 3 float, optional
        Centre of rotation (RAS+ mm).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    params, fixed = itk_affine_parameters(matrix_ras, center_ras)
    fmt = lambda v: " ".join(f"{x:.17g}" for x in v)
    text = (
        "#Insight Transform File V1.0\n#Transform 0\n"
        f"Transform: {_AFFINE_TYPE}\nParameters: {fmt(params)}\nFixedParameters: {fmt(fixed)}\n"
    )
    path = Path(path)
    path.write_text(text)
    return path


def load_itk_affine(path: PathLike) -> np.ndarray:
    """Read the affine part of an ITK transform file as a RAS point map.

    Works for fMRIPrep/ANTs ``.h5`` composites (displacement fields are ignored; fMRIPrep's
    non-linear part is small but *not* zero in real data) and ITK ``.txt``/``.tfm`` files
    with a single affine.

    Parameters
    ----------
    path : str or os.PathLike
        Transform file.

    Returns
    -------
    numpy.ndarray, shape (4, 4)
        Fixed -> moving point map, RAS+ mm (for ``from-A_to-B`` files: B points -> A points).
    """
    path = Path(path)
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            for key in sorted(f["TransformGroup"], key=int):
                g = f["TransformGroup"][key]
                kind = g["TransformType"][0]
                kind = kind.decode() if isinstance(kind, bytes) else str(kind)
                if kind.startswith(("AffineTransform", "MatrixOffsetTransformBase")):
                    pname = "TransformParameters" if "TransformParameters" in g else "TranformParameters"
                    fname = pname.replace("Parameters", "FixedParameters")
                    return ras_from_itk_parameters(g[pname][()], g[fname][()])
        raise ValueError(f"no affine transform in {path}")
    params = fixed = None
    for line in path.read_text().splitlines():
        if line.startswith("Parameters:"):
            params = [float(v) for v in line.split(":", 1)[1].split()]
        elif line.startswith("FixedParameters:"):
            fixed = [float(v) for v in line.split(":", 1)[1].split()]
    if params is None or fixed is None:
        raise ValueError(f"no affine parameters in {path}")
    return ras_from_itk_parameters(params, fixed)


def write_itk_h5_displacement(path: PathLike, displacement_ras: npt.ArrayLike,
                              grid_affine_ras: npt.ArrayLike) -> Path:
    """Write a displacement-field-only ITK HDF5 composite (as ANTs/fMRIPrep store fields).

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.h5`` file.
    displacement_ras : array-like, shape (X, Y, Z, 3)
        Displacement (RAS+ mm) at each grid point: the point map is ``p -> p + d(p)``
        (fixed -> moving, see the module docstring).
    grid_affine_ras : array-like, shape (4, 4)
        Voxel -> RAS+ mm affine of the field's grid (no shear).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    d = np.asarray(displacement_ras, dtype=np.float64)
    if d.ndim != 4 or d.shape[3] != 3:
        raise ValueError("displacement_ras must have shape (X, Y, Z, 3)")
    lps = LPS_FLIP @ np.asarray(grid_affine_ras, dtype=float)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    direction = lps[:3, :3] / spacing
    fixed = np.concatenate([np.array(d.shape[:3], float), lps[:3, 3], spacing,
                            direction.ravel()])
    d_lps = d.copy()
    d_lps[..., :2] *= -1.0
    params = np.moveaxis(d_lps, -1, 0).ravel(order="F").astype("<f4")
    path = Path(path)
    with h5py.File(path, "w", libver="earliest", track_order=False) as f:
        _write_string(f, "HDFVersion", "tmstarget")
        _write_string(f, "ITKVersion", "n/a (written by tmstarget.itk)")
        _write_string(f, "OSName", "n/a")
        _write_string(f, "OSVersion", "n/a")
        tg = f.create_group("TransformGroup")
        g0 = tg.create_group("0")
        _write_string(g0, "TransformType", _COMPOSITE_TYPE)
        g1 = tg.create_group("1")
        _write_string(g1, "TransformType", _FIELD_TYPE)
        _write_array(g1, "TransformFixedParameters", fixed.astype("<f8"))
        g1.create_dataset("TransformParameters", data=params, compression="gzip",
                          compression_opts=9, shuffle=True, track_times=False)
    return path
