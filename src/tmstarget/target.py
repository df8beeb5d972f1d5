"""Search regions and target selection on a seed-correlation map.

Every coordinate here is MNI152NLin2009cAsym, RAS+ mm, computed from the image affine, so
results do not depend on how an image is stored (RAS, LAS, LPS, oblique).

Methods
-------
classic
    The single most negative voxel in the search region (Fox et al. 2012), on the map computed
    from spatially smoothed data.
cluster
    The most negative ``cluster_percent`` % of search-region voxels, the largest 26-connected
    cluster among them, and its |r|-weighted centre of gravity (Cash et al. 2021 style).
weighted
    The |r|-weighted centroid of the ``weighted_n_voxels`` most negative voxels.

A centroid that does not fall in a search-region voxel is snapped to the nearest
search-region voxel centre, and the result says so (``snapped``, ``snap_distance_mm``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
from scipy import ndimage

from .errors import InputError
from .regions import default_search_region, voxel_centers_mm

METHODS: tuple[str, ...] = ("classic", "cluster", "weighted")


@dataclass
class Target:
    """One target on the seed-correlation map.

    Coordinates are MNI152NLin2009cAsym RAS+ mm.
    """

    method: str
    x: float
    y: float
    z: float
    r: float
    voxel: tuple[int, int, int]
    n_voxels: int
    snapped: bool
    snap_distance_mm: float
    centroid_mm: tuple[float, float, float] | None
    distance_to_region_edge_mm: float
    description: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["voxel"] = [int(v) for v in self.voxel]
        d["centroid_mm"] = None if self.centroid_mm is None else [float(v) for v in self.centroid_mm]
        return d


def load_search_region(search: Mapping[str, Any], brain_mask: np.ndarray,
                       affine: np.ndarray, data_space: str = "MNI152NLin2009cAsym"
                       ) -> tuple[np.ndarray, str]:
    """Build the search region on the BOLD grid.

    Parameters
    ----------
    search : mapping
        ``{"kind": "default", "radius_mm": 20, "sites": {...}, "left_only": true}`` or
        ``{"kind": "file", "file": path}`` (a mask in MNI152NLin2009cAsym).
    brain_mask : numpy.ndarray of bool
        The participant's brain mask on the BOLD grid.
    affine : numpy.ndarray
        BOLD grid affine.

    Returns
    -------
    region : numpy.ndarray of bool
    description : str

    Raises
    ------
    InputError
        The user mask is missing, unreadable, empty after resampling, or outside the brain.
    """
    kind = search.get("kind", "default")
    if kind == "default":
        sites = {k: tuple(v) for k, v in (search.get("sites") or {}).items()} or None
        radius = float(search.get("radius_mm", 20.0))
        region = default_search_region(brain_mask, affine, sites=sites, radius_mm=radius)
        if not search.get("left_only", True):
            from .regions import REFERENCE_TARGETS_MM, sphere_mask
            region = np.zeros(brain_mask.shape, bool)
            for c in (sites or REFERENCE_TARGETS_MM).values():
                region |= sphere_mask(brain_mask.shape, affine, c, radius)
            region &= brain_mask
        names = ", ".join(sites or ["BA9", "BA46", "5cm", "F3"])
        desc = (f"union of {radius:g} mm spheres at {names} (MNI152NLin2009cAsym), within the "
                f"brain mask" + (", left hemisphere (x < 0)" if search.get("left_only", True) else ""))
        if not region.any():
            raise InputError(None, "the default search region is empty inside this brain mask.",
                             "Check that the BOLD is in MNI152NLin2009cAsym and covers the "
                             "frontal lobe.")
        return region, desc
    if kind != "file":
        raise InputError(None, f"search kind '{kind}' is not known.", "Use 'default' or 'file'.")
    path = Path(str(search.get("file") or ""))
    if not path.is_file():
        raise InputError(path, "the search-region mask does not exist.",
                         "Fix search.file in the config.")
    from nilearn.image import resample_img

    try:
        img = nb.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(path, f"cannot read the search-region mask ({exc}).",
                         "Give a valid 3D NIfTI mask.") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
        img = nb.Nifti1Image(data, img.affine, img.header)
    if data.ndim != 3:
        raise InputError(path, f"the search-region mask must be 3D, it is {data.ndim}D.",
                         "Give a 3D mask.")
    if not np.any(data):
        raise InputError(path, "the search-region mask is empty (all zeros).",
                         "Give a mask with the region set to 1.")
    from .spaces import resample_to_grid, resolve_image_space

    space, how = resolve_image_space(img, search.get("space"), path, "search.space")
    img = nb.Nifti1Image((np.nan_to_num(data) > 0).astype(np.uint8), img.affine)
    if space == data_space:
        res = resample_img(img, target_affine=affine, target_shape=brain_mask.shape,
                           interpolation="nearest", force_resample=True, copy_header=True)
        user = np.asarray(res.dataobj) > 0
    else:
        user = resample_to_grid(img, space, data_space, affine, brain_mask.shape, "nearest") > 0
    if not user.any():
        raise InputError(path, "the search-region mask is empty after resampling to the BOLD "
                         "grid (it lies outside the image's field of view).",
                         "Check that the mask is in MNI152NLin2009cAsym space.")
    region = user & brain_mask
    if not region.any():
        raise InputError(path, "the search-region mask lies entirely outside the brain mask.",
                         "Check that the mask is in MNI152NLin2009cAsym space (not another "
                         "template or native space) and covers cortex.")
    frac = region.sum() / user.sum()
    via = "" if space == data_space else f", moved {space} -> {data_space} by the template transform"
    return region, (f"user mask {path.name} ({space}, {how}{via}) within the brain mask "
                    f"({100 * frac:.0f}% of it in brain)")


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def _nearest_region_voxel(point: np.ndarray, region_xyz: np.ndarray,
                          region_ijk: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    d = np.sqrt(((region_xyz - point) ** 2).sum(axis=1))
    i = int(np.argmin(d))
    return region_ijk[i], region_xyz[i], float(d[i])


def _centroid_target(method: str, sel: np.ndarray, rmap: np.ndarray, region: np.ndarray,
                     xyz: np.ndarray, edge: np.ndarray, affine: np.ndarray,
                     description: str) -> Target:
    """Target at the |r|-weighted centroid of the voxels ``sel`` (bool 3D)."""
    w = np.abs(rmap[sel]).astype(np.float64)
    pts = xyz[sel]
    cen = (pts * w[:, None]).sum(axis=0) / w.sum() if w.sum() > 0 else pts.mean(axis=0)
    ijk = np.rint(np.linalg.solve(affine[:3, :3], cen - affine[:3, 3])).astype(int)
    inside = bool(np.all(ijk >= 0) and np.all(ijk < region.shape) and region[tuple(ijk)])
    if inside:
        point, vox, snapped, dist = cen, ijk, False, 0.0
    else:
        rijk = np.argwhere(region)
        vox, point, dist = _nearest_region_voxel(cen, xyz[region], rijk)
        snapped = True
    return Target(method, *(float(v) for v in point), r=float(rmap[tuple(vox)]),
                  voxel=tuple(int(v) for v in vox), n_voxels=int(sel.sum()), snapped=snapped,
                  snap_distance_mm=float(dist), centroid_mm=tuple(float(v) for v in cen),
                  distance_to_region_edge_mm=float(edge[tuple(vox)]), description=description)


class TargetFinder:
    """Pick targets repeatedly on maps sharing one grid and search region.

    The grid geometry (voxel centres, distance to the region edge) is computed once, so the
    bootstrap can call :meth:`find` hundreds of times cheaply.

    Parameters
    ----------
    region : numpy.ndarray of bool, 3D
        Search region.
    affine : numpy.ndarray (4, 4)
        Grid affine (any storage orientation).
    """

    def __init__(self, region: np.ndarray, affine: np.ndarray) -> None:
        self.region = np.asarray(region, bool)
        if not self.region.any():
            raise InputError(None, "the search region is empty.", "Check the search region.")
        self.affine = np.asarray(affine, float)
        self.shape = self.region.shape
        self.xyz = voxel_centers_mm(self.shape, self.affine)
        # Distance (mm) from each region voxel to the nearest voxel outside the region.
        self.edge = ndimage.distance_transform_edt(
            np.pad(self.region, 1), sampling=_voxel_sizes(self.affine))[1:-1, 1:-1, 1:-1]

    def find(self, rmap: np.ndarray, methods: Sequence[str] = ("classic", "cluster"),
             cluster_percent: float = 10.0, weighted_n_voxels: int = 50) -> dict[str, Target]:
        """Targets on ``rmap`` (see :func:`find_targets`)."""
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise InputError(None, f"unknown target method(s) {unknown}.",
                             f"Use some of {list(METHODS)}.")
        region = self.region & np.isfinite(rmap)
        n_region = int(region.sum())
        if n_region == 0:
            raise InputError(None, "the search region has no voxel with a value in the map.",
                             "Check the search region and the brain mask.")
        xyz, edge, affine = self.xyz, self.edge, self.affine
        vals = np.where(region, rmap, np.inf)
        out: dict[str, Target] = {}
        for m in methods:
            if m == "classic":
                vox = np.unravel_index(int(np.argmin(vals)), rmap.shape)
                p = xyz[vox]
                out[m] = Target(m, *(float(v) for v in p), r=float(rmap[vox]),
                                voxel=tuple(int(v) for v in vox), n_voxels=1, snapped=False,
                                snap_distance_mm=0.0, centroid_mm=None,
                                distance_to_region_edge_mm=float(edge[vox]),
                                description="most negative voxel of the seed-correlation map "
                                            "in the search region (Fox et al. 2012)")
            elif m == "cluster":
                if not 0 < cluster_percent <= 100:
                    raise InputError(None, f"cluster_percent must be in (0, 100], got "
                                     f"{cluster_percent}.", "Fix target.cluster_percent.")
                k = max(1, int(np.ceil(n_region * cluster_percent / 100.0)))
                order = np.argsort(vals, axis=None, kind="stable")[:k]
                keep = np.zeros(rmap.shape, bool)
                keep.flat[order] = True
                labels, n = ndimage.label(keep, structure=np.ones((3, 3, 3), bool))
                sizes = ndimage.sum_labels(keep, labels, index=np.arange(1, n + 1))
                mass = ndimage.sum_labels(np.abs(np.where(keep, rmap, 0)), labels,
                                          index=np.arange(1, n + 1))
                # largest cluster; ties broken by the larger summed |r|
                best = int(np.lexsort((-mass, -sizes))[0]) + 1
                out[m] = _centroid_target(
                    m, labels == best, rmap, region, xyz, edge, affine,
                    f"|r|-weighted centre of gravity of the largest 26-connected cluster among "
                    f"the most negative {cluster_percent:g}% ({k} voxels) of the search region")
            else:  # weighted
                k = int(min(max(1, weighted_n_voxels), n_region))
                order = np.argsort(vals, axis=None, kind="stable")[:k]
                sel = np.zeros(rmap.shape, bool)
                sel.flat[order] = True
                out[m] = _centroid_target(m, sel, rmap, region, xyz, edge, affine,
                                          f"|r|-weighted centroid of the {k} most negative "
                                          f"voxels of the search region")
        return out


def find_targets(rmap: np.ndarray, region: np.ndarray, affine: np.ndarray,
                 methods: Sequence[str] = ("classic", "cluster"), cluster_percent: float = 10.0,
                 weighted_n_voxels: int = 50) -> dict[str, Target]:
    """Pick targets on a seed-correlation map.

    Parameters
    ----------
    rmap : numpy.ndarray, 3D
        Seed-correlation map (r) on the BOLD grid.
    region : numpy.ndarray of bool, 3D
        Search region.
    affine : numpy.ndarray (4, 4)
        Grid affine (any storage orientation).
    methods : sequence of str
        Any of :data:`METHODS`.
    cluster_percent : float
        ``cluster``: percentage (0–100] of region voxels kept, most negative first.
    weighted_n_voxels : int
        ``weighted``: number of most negative voxels averaged.

    Returns
    -------
    dict
        Method name → :class:`Target`.
    """
    return TargetFinder(region, affine).find(rmap, methods, cluster_percent, weighted_n_voxels)
