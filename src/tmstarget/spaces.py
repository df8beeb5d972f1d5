"""Template spaces: which template a coordinate or image is in, and moving between templates.

tmstarget's analysis space is the space of the BOLD data (fMRIPrep's default
``MNI152NLin2009cAsym``). Coordinates in the TMS literature -- the sgACC seed and the standard
DLPFC sites of Fox et al. 2012 among them -- were mostly published in FSL's MNI152
(``MNI152NLin6Asym``), which differs from MNI152NLin2009cAsym by a few millimetres in
prefrontal cortex. Every built-in coordinate therefore carries the space it was published in
(:data:`tmstarget.regions.PUBLISHED`), and is converted into the data's space through a
template-to-template transform computed once with ANTs from the two templates and shipped in
``tmstarget/data`` with its provenance (``template_transforms.json``, made by
``scripts/make_template_transforms.py``).

Conventions: RAS+ mm; a ``from-A_to-B`` / ``tpl-B_from-A`` transform resamples an A image into
B, so as a point map it takes B points to A points (:mod:`tmstarget.itk`).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np

from .errors import InputError
from .io import data_file

NLIN6 = "MNI152NLin6Asym"
NLIN2009C = "MNI152NLin2009cAsym"
#: Template spaces tmstarget knows.
TEMPLATE_SPACES: tuple[str, ...] = (NLIN2009C, NLIN6)

#: Shipped point maps, (from space, to space) -> file (see the module docstring for names).
_POINT_MAPS: dict[tuple[str, str], str] = {
    (NLIN6, NLIN2009C): "tpl-MNI152NLin6Asym_from-MNI152NLin2009cAsym_mode-image_xfm.h5",
    (NLIN2009C, NLIN6): "tpl-MNI152NLin2009cAsym_from-MNI152NLin6Asym_mode-image_xfm.h5",
}

#: Standard template grids (shape, world bounding box of the voxel centres, RAS+ mm) by space,
#: to recognise the template of a user's image whatever its storage orientation.
KNOWN_GRIDS: dict[str, list[tuple[tuple[int, int, int], tuple[tuple[float, ...], ...]]]] = {
    NLIN6: [((182, 218, 182), ((-91.0, -126.0, -72.0), (90.0, 91.0, 109.0))),
            ((91, 109, 91), ((-90.0, -126.0, -72.0), (90.0, 90.0, 108.0)))],
    NLIN2009C: [((193, 229, 193), ((-96.0, -132.0, -78.0), (96.0, 96.0, 114.0))),
                ((97, 115, 97), ((-96.5, -132.5, -78.5), (95.5, 95.5, 113.5)))],
}


def check_space(space: str, what: str) -> str:
    """Return ``space`` if tmstarget knows it, else raise a config error naming ``what``."""
    if space not in TEMPLATE_SPACES:
        raise InputError(None, f"{what}: space '{space}' is not known.",
                         f"Use one of {', '.join(TEMPLATE_SPACES)}.")
    return space


@functools.lru_cache(maxsize=4)
def _point_map(from_space: str, to_space: str):
    from .native import load_point_transform

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_point_transform(data_file(_POINT_MAPS[(from_space, to_space)]))


def convert_points(points: Sequence[Sequence[float]] | np.ndarray, from_space: str,
                   to_space: str) -> np.ndarray:
    """Move template coordinates (N, 3), RAS+ mm, from one template space to another.

    Identity when the spaces are equal.

    Raises
    ------
    InputError
        Unknown space, or a point outside the shipped transform's field of view.
    """
    pts = np.atleast_2d(np.asarray(points, dtype=float))
    check_space(from_space, "coordinate")
    check_space(to_space, "coordinate")
    if from_space == to_space:
        return pts.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _point_map(from_space, to_space).map(pts)


def detect_space(img: nb.Nifti1Image) -> str | None:
    """The template whose standard grid ``img`` is on (any storage orientation), or None."""
    shape = tuple(int(v) for v in img.shape[:3])
    aff = np.asarray(img.affine, float)
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)]) @ aff.T
    lo, hi = corners[:, :3].min(axis=0), corners[:, :3].max(axis=0)
    for space, grids in KNOWN_GRIDS.items():
        for gshape, (glo, ghi) in grids:
            if sorted(shape) == sorted(gshape) and np.allclose(lo, glo, atol=1.01) \
                    and np.allclose(hi, ghi, atol=1.01):
                return space
    return None


def resolve_image_space(img: nb.Nifti1Image, declared: str | None, path: str | Path,
                        key: str) -> tuple[str, str]:
    """The template space of a user image: declared, or recognised from its grid.

    Returns
    -------
    space : str
    how : str
        ``"declared"``, ``"declared and matches the grid"`` or ``"recognised from the grid"``.

    Raises
    ------
    InputError
        Nothing declared and the grid is not a known template grid; or the declared space
        contradicts a recognised grid.
    """
    found = detect_space(img)
    if declared is None:
        if found is None:
            raise InputError(path, f"the image is not on a standard {NLIN6} or {NLIN2009C} "
                             "grid, so its template cannot be recognised.",
                             f"Set {key} to the template the image is in ({NLIN6} for FSL's "
                             f"MNI152, {NLIN2009C} for fMRIPrep/TemplateFlow's default).")
        return found, "recognised from the grid"
    check_space(declared, key)
    if found is not None and found != declared:
        raise InputError(path, f"{key} says {declared}, but the image is on the standard "
                         f"{found} grid.", f"Check which template the image was made in and set "
                         f"{key} accordingly.")
    return declared, ("declared and matches the grid" if found else "declared")


def resample_to_grid(img: nb.Nifti1Image, from_space: str, to_space: str,
                     target_affine: np.ndarray, target_shape: Sequence[int],
                     interpolation: str = "linear") -> np.ndarray:
    """Sample a 3D template image onto another grid, through the template transform if needed.

    For every target voxel centre ``x`` (``to_space``), the value of ``img`` at the
    ``from_space`` point corresponding to ``x`` (nearest neighbour or trilinear; 0 outside).

    Returns
    -------
    numpy.ndarray, float64, ``target_shape``
    """
    from scipy import ndimage

    from .regions import voxel_centers_mm

    data = np.asarray(img.dataobj, dtype=np.float64)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    xyz = voxel_centers_mm(tuple(target_shape), target_affine).reshape(-1, 3)
    valid = np.ones(len(xyz), bool)
    if from_space != to_space:
        # points of to_space -> points of from_space: the map from to_space to from_space.
        # Only points well inside the shipped field (which covers the brain with a margin) are
        # mapped; the rest of the grid (outside the brain) is set to 0.
        valid = _inside_field(from_space=to_space, to_space=from_space, pts=xyz)
        xyz = xyz.copy()
        xyz[valid] = convert_points(xyz[valid], to_space, from_space)
    ijk = nb.affines.apply_affine(np.linalg.inv(img.affine), xyz).T
    order = 0 if interpolation == "nearest" else 1
    out = ndimage.map_coordinates(data, ijk, order=order, mode="constant", cval=0.0)
    out[~valid] = 0.0
    return out.reshape(tuple(target_shape))


def _inside_field(from_space: str, to_space: str, pts: np.ndarray) -> np.ndarray:
    """Points that lie where the shipped field can map them (>= the edge margin inside)."""
    from .native import FIELD_EDGE_MARGIN_VOXELS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        field = _point_map(from_space, to_space).xfm.transforms[0]
    ref = field.reference
    ijk = nb.affines.apply_affine(np.linalg.inv(ref.affine), pts)
    m = FIELD_EDGE_MARGIN_VOXELS
    hi = np.asarray(ref.shape[:3]) - 1 - m
    return np.all((ijk >= m) & (ijk <= hi), axis=1)


def provenance() -> dict[str, Any]:
    """The shipped transforms' provenance record (``template_transforms.json``)."""
    import json

    return json.loads(Path(data_file("template_transforms.json")).read_text())
