"""Seed and search-region definitions; the published coordinates they come from.

All masks are computed in *world* coordinates from the image affine, so they are
correct whatever the storage orientation of the image (RAS, LAS, LPS, oblique).

Every built-in coordinate carries the space it was published in (:data:`PUBLISHED`). Those
published in FSL's MNI152 (``MNI152NLin6Asym``) are converted to fMRIPrep's default
``MNI152NLin2009cAsym`` through the shipped template-to-template transform
(:mod:`tmstarget.spaces`); the converted values are the module constants below, and
``tests/test_spaces.py`` recomputes them from the transform.

References
----------
Fox MD et al. (2012) Biol Psychiatry 72:595-603 (sgACC seed at 6, 16, -10; radius 10 mm;
average stimulation sites; FSL MNI152 space). Cash RFH et al. (2021) Biol Psychiatry
90:689-700. Mayka MA et al. (2006) NeuroImage 31:1453 (M1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class PublishedCoordinate:
    """A coordinate as published: value, template space and source."""

    name: str
    xyz: tuple[float, float, float]
    space: str
    source: str


#: Built-in coordinates as published.
PUBLISHED: dict[str, PublishedCoordinate] = {
    "sgACC": PublishedCoordinate(
        "sgACC", (6.0, 16.0, -10.0), "MNI152NLin6Asym",
        "Fox et al. 2012 (Biol Psychiatry 72:595): subgenual cingulate seed, 10 mm sphere; "
        "analysis in FSL's MNI152 (= MNI152NLin6Asym)"),
    "BA9": PublishedCoordinate(
        "BA9", (-36.0, 39.0, 43.0), "MNI152NLin6Asym",
        "Fox et al. 2012: average stimulation site of the 'BA9' targeting approach (as used by "
        "Fox 2012 and Cash 2021), FSL MNI152"),
    "BA46": PublishedCoordinate(
        "BA46", (-44.0, 40.0, 29.0), "MNI152NLin6Asym",
        "Fox et al. 2012: average stimulation site of the 'BA46' targeting approach, FSL MNI152"),
    "5cm": PublishedCoordinate(
        "5cm", (-41.0, 16.0, 54.0), "MNI152NLin6Asym",
        "Fox et al. 2012: average stimulation site of the '5 cm rule', FSL MNI152"),
    "F3": PublishedCoordinate(
        "F3", (-37.0, 26.0, 49.0), "MNI152NLin6Asym",
        "Fox et al. 2012: average stimulation site of the 'F3' (EEG 10-20 / Beam) approach, FSL "
        "MNI152 (a group average: the participant's own F3 is found on the head)"),
    "M1_hotspot": PublishedCoordinate(
        "M1_hotspot", (-37.0, -21.0, 58.0), "Talairach",
        "Mayka et al. 2006 (NeuroImage 31:1453) ALE centre of M1 (the meta-analysis reports "
        "Talairach coordinates; attribution not re-checked against its table). Used as given, "
        "unconverted, as a coarse population reference for the scalp-depth advice only"),
}

#: The four standard left-DLPFC stimulation sites as published (MNI152NLin6Asym).
PUBLISHED_SITES: dict[str, PublishedCoordinate] = {
    k: PUBLISHED[k] for k in ("BA9", "BA46", "5cm", "F3")}

#: sgACC seed centre (Fox et al. 2012), converted to MNI152NLin2009cAsym RAS+ mm (1.2 mm from
#: the published value).
SGACC_CENTER_MM: tuple[float, float, float] = (5.31, 16.11, -10.94)
#: sgACC seed radius in mm (Fox et al. 2012).
SGACC_RADIUS_MM: float = 10.0

#: Standard left-DLPFC stimulation sites (average sites used by Fox 2012 and Cash 2021),
#: converted to MNI152NLin2009cAsym RAS+ mm (3.2-3.7 mm from the published values).
REFERENCE_TARGETS_MM: dict[str, tuple[float, float, float]] = {
    "BA9": (-39.65, 39.45, 42.67),
    "BA46": (-46.94, 39.27, 28.12),
    "5cm": (-43.75, 14.44, 55.57),
    "F3": (-40.08, 25.04, 50.38),
}
#: Radius of each sphere in the default left-DLPFC search region, mm.
SEARCH_SPHERE_RADIUS_MM: float = 20.0


def voxel_centers_mm(shape: tuple[int, ...], affine: npt.ArrayLike) -> np.ndarray:
    """World (RAS+ mm) coordinates of every voxel centre.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape (first three dimensions are used).
    affine : array-like, shape (4, 4)
        Voxel-to-world affine of the grid.

    Returns
    -------
    numpy.ndarray, shape (*shape[:3], 3)
        x, y, z of each voxel centre in mm.
    """
    aff = np.asarray(affine, dtype=float)
    ijk = np.indices(tuple(shape[:3]), dtype=float)
    xyz = np.tensordot(aff[:3, :3], ijk, axes=(1, 0)) + aff[:3, 3][:, None, None, None]
    return np.moveaxis(xyz, 0, -1)


def sphere_mask(
    shape: tuple[int, ...],
    affine: npt.ArrayLike,
    center_mm: Iterable[float],
    radius_mm: float,
) -> np.ndarray:
    """Boolean mask of voxels whose centre lies within ``radius_mm`` of ``center_mm``.

    Parameters
    ----------
    shape, affine
        The grid (see :func:`voxel_centers_mm`).
    center_mm : iterable of 3 floats
        Sphere centre in world RAS+ mm.
    radius_mm : float
        Radius in mm (inclusive).

    Returns
    -------
    numpy.ndarray of bool, shape ``shape[:3]``
    """
    c = np.asarray(list(center_mm), dtype=float)
    d2 = np.sum((voxel_centers_mm(shape, affine) - c) ** 2, axis=-1)
    return d2 <= radius_mm**2 + 1e-6


def default_search_region(
    brain_mask: npt.ArrayLike,
    affine: npt.ArrayLike,
    sites: Mapping[str, Iterable[float]] | None = None,
    radius_mm: float = SEARCH_SPHERE_RADIUS_MM,
) -> np.ndarray:
    """Default left-DLPFC search region.

    Union of ``radius_mm`` spheres around the reference sites (BA9, BA46, 5 cm, F3),
    restricted to the brain mask and to the left hemisphere (x < 0 mm).

    Parameters
    ----------
    brain_mask : array-like of bool, 3D
        Brain mask on the grid.
    affine : array-like, shape (4, 4)
        Grid affine.
    sites : mapping, optional
        Sphere centres (default :data:`REFERENCE_TARGETS_MM`).
    radius_mm : float
        Sphere radius.

    Returns
    -------
    numpy.ndarray of bool
    """
    brain = np.asarray(brain_mask).astype(bool)
    sites = REFERENCE_TARGETS_MM if sites is None else sites
    region = np.zeros(brain.shape, dtype=bool)
    for center in sites.values():
        region |= sphere_mask(brain.shape, affine, center, radius_mm)
    left = voxel_centers_mm(brain.shape, affine)[..., 0] < 0
    return region & brain & left
