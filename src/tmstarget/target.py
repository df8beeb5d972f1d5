"""Search regions and target selection on a seed-correlation map.

Every coordinate here is MNI152NLin2009cAsym, RAS+ mm, computed from the image affine, so
results do not depend on how an image is stored (RAS, LAS, LPS, oblique).

Only anticorrelated voxels count
--------------------------------
The target is where the map is *negative* (anticorrelated with the seed). Every method below
draws its voxels from the search-region voxels with ``r < 0`` only: a centroid never includes
a positive-r voxel, even when the region has fewer negative voxels than a method asks for (the
method then uses the negative voxels there are and says so in ``description``). A region with
no negative voxel at all has no target: every method returns ``status =
"no_negative_voxels"`` (the coordinate is then the least positive voxel, for inspection only,
``n_voxels = 0``) and the caller must warn and must not export it (:data:`STATUS_OK` is the
only status that is a target).

Methods (map-only; see :data:`MAP_METHODS`)
-------------------------------------------
classic
    The single most negative voxel in the search region (Fox et al. 2012), on the map computed
    from spatially smoothed data.
cluster
    The most negative ``cluster_percent`` % of search-region voxels (negative ones only) and
    their 26-connected clusters; the chosen cluster is the one holding the highest
    *threshold-free cluster enhancement* (TFCE; Smith & Nichols 2009, NeuroImage 44:83) of the
    anticorrelation ``-r``: ``TFCE(v) = sum_h e(v, h)^E h^H dh`` over heights ``h`` from 0 to
    the deepest anticorrelation, ``e(v, h)`` the size (voxels) of the 26-connected component of
    ``{-r >= h}`` (inside the search region) that contains ``v``, with the published 3-D
    defaults ``E = 0.5``, ``H = 2`` (:data:`TFCE_E`, :data:`TFCE_H`, :data:`TFCE_STEPS` steps).
    TFCE is the standard documented combination of size and strength: height counts
    quadratically, extent by its square root, so a focal strong cluster outranks a broad weak
    one (issue 18: the largest-cluster rule chose a broad r = -0.23 region 20.7 mm from a
    planted r = -0.67 focus), while a lone noisy voxel (extent 1) does not. Ties: larger plain
    mass ``sum |r|``, then more voxels. Target = the |r|-weighted centre of gravity of that
    cluster (at the cluster-forming threshold).
cluster_largest
    The same clusters, the *largest* one (ties: larger ``sum |r|``), |r|-weighted centre of
    gravity (the Cash et al. 2021 style rule tmstarget used as ``cluster`` before).
weighted
    The |r|-weighted centroid of the ``weighted_n_voxels`` most negative voxels.

Both cluster methods report their top three clusters in ``candidates`` (rank, position,
size, mean and minimum r, score, distance from the primary target): backup targets.

Methods that need time series, not a map (:data:`DATA_METHODS`): ``snt`` (SAINT/SNT-style
hierarchical clustering, :mod:`tmstarget.snt`) and ``seedmap`` (group-map-weighted seed,
Fox 2013; :mod:`tmstarget.groupmap` builds its seed series, then any map method applies).

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

#: Methods that pick a target on a seed-correlation map (:meth:`TargetFinder.find`).
MAP_METHODS: tuple[str, ...] = ("classic", "cluster", "cluster_largest", "weighted")
#: Methods that need the voxel time series (:mod:`tmstarget.snt`, :mod:`tmstarget.groupmap`).
DATA_METHODS: tuple[str, ...] = ("snt", "seedmap")
#: Every method name ``target.methods`` accepts.
ALL_METHODS: tuple[str, ...] = MAP_METHODS + DATA_METHODS
#: Backwards-compatible name: the map methods.
METHODS: tuple[str, ...] = MAP_METHODS
#: ``Target.status`` of a real target. Anything else is *not* a target (see module docstring).
STATUS_OK: str = "ok"
#: ``Target.status`` when the search region has no voxel with r < 0.
STATUS_NO_NEGATIVE: str = "no_negative_voxels"
#: Number of candidate clusters reported (the primary and two backups).
N_CANDIDATES: int = 3
#: TFCE extent exponent E (Smith & Nichols 2009 default for 3-D images).
TFCE_E: float = 0.5
#: TFCE height exponent H (Smith & Nichols 2009 default).
TFCE_H: float = 2.0
#: Number of height steps of the TFCE integral (``dh = max / TFCE_STEPS``).
TFCE_STEPS: int = 50


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
    #: :data:`STATUS_OK`, or why this is not a target (:data:`STATUS_NO_NEGATIVE`).
    status: str = STATUS_OK
    #: Cluster methods: the top clusters, best first (rank 1 is this target); else ``None``.
    #: Each: rank, x, y, z (MNI mm, snapped like the target), n_voxels, mean_r, min_r, score
    #: (the rule's ranking value: TFCE for ``cluster``, voxels for ``cluster_largest``), mass
    #: (sum |r|), distance_to_primary_mm, snapped.
    candidates: list[dict[str, Any]] | None = None

    @property
    def ok(self) -> bool:
        """Whether this is a real target (status ``ok``)."""
        return self.status == STATUS_OK

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (keys of earlier versions first, new keys appended)."""
        d = asdict(self)
        d["voxel"] = [int(v) for v in self.voxel]
        d["centroid_mm"] = None if self.centroid_mm is None else [float(v) for v in self.centroid_mm]
        d["candidates"] = None if self.candidates is None else [dict(c) for c in self.candidates]
        return d


def load_search_region(search: Mapping[str, Any], brain_mask: np.ndarray,
                       affine: np.ndarray, gm_probseg: str | Path | None = None,
                       data_space: str = "MNI152NLin2009cAsym") -> tuple[np.ndarray, str]:
    """Build the search region on the BOLD grid.

    Parameters
    ----------
    search : mapping
        ``{"kind": "default", "radius_mm": 20, "sites": {...}, "left_only": true}`` or
        ``{"kind": "file", "file": path}`` (a mask in MNI152NLin2009cAsym); with
        ``grey_matter`` (default true) and ``grey_matter_threshold`` (default 0.3) the region
        is restricted to grey matter (:mod:`tmstarget.greymatter`).
    brain_mask : numpy.ndarray of bool
        The participant's brain mask on the BOLD grid.
    affine : numpy.ndarray
        BOLD grid affine.
    gm_probseg : path, optional
        The participant's fMRIPrep ``label-GM_probseg`` in MNI152NLin2009cAsym
        (:func:`tmstarget.greymatter.find_gm_probseg`); ``None`` = the shipped template map.
    data_space : str
        Template of the BOLD grid (a user mask in another template is moved through the
        shipped template transform, :mod:`tmstarget.spaces`).

    Returns
    -------
    region : numpy.ndarray of bool
    description : str

    Raises
    ------
    InputError
        The user mask is missing, unreadable, empty after resampling, or outside the brain;
        no grey matter is left in the region.
    """
    region, desc = _load_search_region(search, brain_mask, affine, data_space)
    if not search.get("grey_matter", True):
        return region, desc + "; not restricted to grey matter (search.grey_matter: false)"
    from .greymatter import DEFAULT_GM_THRESHOLD, grey_matter_mask

    thr = float(search.get("grey_matter_threshold", DEFAULT_GM_THRESHOLD))
    gm, gm_desc = grey_matter_mask(brain_mask.shape, affine, gm_probseg, thr,
                                   data_space=data_space)
    out = region & gm
    if not out.any():
        raise InputError(gm_probseg, f"no search-region voxel is grey matter ({gm_desc}).",
                         f"Check that the BOLD and the grey-matter map are in "
                         f"{data_space}, lower search.grey_matter_threshold, or set "
                         "search.grey_matter: false.")
    return out, (f"{desc}; restricted to {gm_desc}: {int(out.sum())} of {int(region.sum())} "
                 f"voxels")


def _load_search_region(search: Mapping[str, Any], brain_mask: np.ndarray,
                        affine: np.ndarray, data_space: str = "MNI152NLin2009cAsym"
                        ) -> tuple[np.ndarray, str]:
    """The search region before the grey-matter restriction."""
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
        desc = (f"union of {radius:g} mm spheres at {names} ({data_space}), within the "
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


def _snap(cen: np.ndarray, region: np.ndarray, xyz: np.ndarray,
          affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """``cen`` if it lies in a region voxel, else the nearest region voxel centre."""
    ijk = np.rint(np.linalg.solve(affine[:3, :3], cen - affine[:3, 3])).astype(int)
    inside = bool(np.all(ijk >= 0) and np.all(ijk < region.shape) and region[tuple(ijk)])
    if inside:
        return cen, ijk, False, 0.0
    rijk = np.argwhere(region)
    vox, point, dist = _nearest_region_voxel(cen, xyz[region], rijk)
    return point, vox, True, dist


def _centroid_target(method: str, sel: np.ndarray, rmap: np.ndarray, region: np.ndarray,
                     xyz: np.ndarray, edge: np.ndarray, affine: np.ndarray,
                     description: str) -> Target:
    """Target at the |r|-weighted centroid of the voxels ``sel`` (bool 3D, all with r < 0)."""
    if not sel.any() or np.any(rmap[sel] >= 0):  # pragma: no cover - guarded by the callers
        raise ValueError("a centroid target needs a non-empty set of negative-r voxels")
    w = -rmap[sel].astype(np.float64)
    cen = (xyz[sel] * w[:, None]).sum(axis=0) / w.sum()
    point, vox, snapped, dist = _snap(cen, region, xyz, affine)
    return Target(method, *(float(v) for v in point), r=float(rmap[tuple(vox)]),
                  voxel=tuple(int(v) for v in vox), n_voxels=int(sel.sum()), snapped=snapped,
                  snap_distance_mm=float(dist), centroid_mm=tuple(float(v) for v in cen),
                  distance_to_region_edge_mm=float(edge[tuple(vox)]), description=description)


def tfce(values: np.ndarray, mask: np.ndarray, e: float = TFCE_E, h: float = TFCE_H,
         n_steps: int = TFCE_STEPS) -> np.ndarray:
    """Threshold-free cluster enhancement of the non-negative ``values`` inside ``mask``.

    ``TFCE(v) = sum_k e(v, h_k)^E h_k^H dh`` with ``h_k = k dh`` (``k = 1..n_steps``,
    ``dh = max / n_steps``) and ``e(v, h)`` the voxel count of the 26-connected component of
    ``{values >= h} & mask`` containing ``v`` (Smith & Nichols 2009, NeuroImage 44:83).

    Parameters
    ----------
    values : numpy.ndarray, 3D
        Height map (e.g. ``-r``); negative values and voxels outside ``mask`` count as 0.
    mask : numpy.ndarray of bool, 3D
    e, h : float
        Extent and height exponents.
    n_steps : int
        Number of height steps.

    Returns
    -------
    numpy.ndarray, float64, 3D (0 outside ``mask``)
    """
    out = np.zeros(values.shape, np.float64)
    mask = np.asarray(mask, bool)
    if not mask.any():
        return out
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(mask))
    v = np.where(mask[box], np.nan_to_num(np.asarray(values[box], np.float64)), 0.0)
    top = float(v.max())
    if top <= 0:
        return out
    dh = top / int(n_steps)
    acc = np.zeros(v.shape, np.float64)
    struct = np.ones((3, 3, 3), bool)
    for k in range(1, int(n_steps) + 1):
        hk = k * dh
        above = v >= hk - 1e-12 * top
        if not above.any():
            break
        lab, n = ndimage.label(above, structure=struct)
        sizes = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
        sizes[0] = 0.0
        acc += (sizes[lab] ** e) * (hk ** h) * dh
    out[box] = acc
    return out


def cluster_scores(rmap: np.ndarray,
                   keep: np.ndarray) -> tuple[np.ndarray, int, dict[str, np.ndarray]]:
    """26-connected clusters of ``keep`` and their size/strength statistics.

    Parameters
    ----------
    rmap : numpy.ndarray, 3D
    keep : numpy.ndarray of bool, 3D
        Voxels that may form clusters (all must have r < 0).

    Returns
    -------
    labels : numpy.ndarray of int, 3D
        Cluster label per voxel (0 outside ``keep``).
    n : int
        Number of clusters.
    stats : dict of numpy.ndarray (n,)
        ``size``; ``mass`` (sum |r|); ``mean_r``; ``min_r``.
    """
    labels, n = ndimage.label(keep, structure=np.ones((3, 3, 3), bool))
    idx = np.arange(1, n + 1)
    a = np.where(keep, -rmap, 0.0)
    size = ndimage.sum_labels(keep, labels, index=idx)
    mass = ndimage.sum_labels(a, labels, index=idx)
    stats = {"size": size, "mass": mass,
             "mean_r": -mass / np.maximum(size, 1),
             "min_r": (ndimage.minimum(np.where(keep, rmap, np.inf), labels, index=idx)
                       if n else np.zeros(0))}
    return labels, n, stats


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
        self._tfce_cache: tuple[np.ndarray, np.ndarray] | None = None

    def _no_target(self, m: str, rmap: np.ndarray, vals: np.ndarray) -> Target:
        vox = np.unravel_index(int(np.argmin(vals)), rmap.shape)
        return Target(m, *(float(v) for v in self.xyz[vox]), r=float(rmap[vox]),
                      voxel=tuple(int(v) for v in vox), n_voxels=0, snapped=False,
                      snap_distance_mm=0.0, centroid_mm=None,
                      distance_to_region_edge_mm=float(self.edge[vox]),
                      description="NO TARGET: no search-region voxel is anticorrelated with the "
                                  "seed (every r >= 0); the coordinate is the least positive "
                                  "voxel, for inspection only",
                      status=STATUS_NO_NEGATIVE)

    def _cluster(self, m: str, rmap: np.ndarray, region: np.ndarray, vals: np.ndarray,
                 n_region: int, n_neg: int, cluster_percent: float) -> Target:
        if not 0 < cluster_percent <= 100:
            raise InputError(None, f"cluster_percent must be in (0, 100], got "
                             f"{cluster_percent}.", "Fix target.cluster_percent.")
        k = max(1, int(np.ceil(n_region * cluster_percent / 100.0)))
        kk = min(k, n_neg)  # negative voxels only
        order = np.argsort(vals, axis=None, kind="stable")[:kk]
        keep = np.zeros(rmap.shape, bool)
        keep.flat[order] = True
        labels, n, st = cluster_scores(rmap, keep)
        if m == "cluster":
            if self._tfce_cache is None or self._tfce_cache[0] is not rmap:
                self._tfce_cache = (rmap, tfce(-rmap, region & (rmap < 0)))
            t = self._tfce_cache[1]
            st["tfce"] = ndimage.maximum(t, labels, index=np.arange(1, n + 1))
            rank = np.lexsort((-st["size"], -st["mass"], -st["tfce"]))
            rule = (f"highest TFCE of the anticorrelation (E = {TFCE_E:g}, H = {TFCE_H:g}; "
                    f"size and strength combined)")
        else:
            rank = np.lexsort((-st["mass"], -st["size"]))
            rule = "largest cluster (ties: larger sum |r|)"
        what = (f"the most negative {cluster_percent:g}% ({k} voxels) of the search region"
                if kk == k else
                f"the {kk} negative voxels of the search region (fewer than the "
                f"{cluster_percent:g}% = {k} asked for; positive voxels are never used)")
        xyz, edge, affine = self.xyz, self.edge, self.affine
        best = int(rank[0]) + 1
        tg = _centroid_target(m, labels == best, rmap, region, xyz, edge, affine,
                              f"|r|-weighted centre of gravity of the 26-connected cluster with "
                              f"the {rule} among {what}")
        p0 = np.array([tg.x, tg.y, tg.z])
        cands = []
        score = st["tfce"] if m == "cluster" else st["size"]
        for i, c in enumerate(rank[:N_CANDIDATES]):
            sel = labels == int(c) + 1
            t = tg if i == 0 else _centroid_target(m, sel, rmap, region, xyz, edge, affine, "")
            cands.append({"rank": i + 1, "x": t.x, "y": t.y, "z": t.z,
                          "n_voxels": int(st["size"][c]), "mean_r": float(st["mean_r"][c]),
                          "min_r": float(st["min_r"][c]), "score": float(score[c]),
                          "mass": float(st["mass"][c]),
                          "distance_to_primary_mm": float(np.linalg.norm(
                              np.array([t.x, t.y, t.z]) - p0)),
                          "snapped": bool(t.snapped)})
        tg.candidates = cands
        return tg

    def find(self, rmap: np.ndarray, methods: Sequence[str] = ("classic", "cluster"),
             cluster_percent: float = 10.0, weighted_n_voxels: int = 50) -> dict[str, Target]:
        """Targets on ``rmap`` (see :func:`find_targets`)."""
        data_only = [m for m in methods if m in DATA_METHODS]
        if data_only:
            raise InputError(None, f"target method(s) {data_only} need the voxel time series, "
                             "not a correlation map.", "Use tmstarget.snt / tmstarget.groupmap "
                             f"for them, or pick map methods from {list(MAP_METHODS)}.")
        unknown = [m for m in methods if m not in MAP_METHODS]
        if unknown:
            raise InputError(None, f"unknown target method(s) {unknown}.",
                             f"Use some of {list(ALL_METHODS)}.")
        region = self.region & np.isfinite(rmap)
        n_region = int(region.sum())
        if n_region == 0:
            raise InputError(None, "the search region has no voxel with a value in the map.",
                             "Check the search region and the brain mask.")
        xyz, edge, affine = self.xyz, self.edge, self.affine
        vals = np.where(region, rmap, np.inf)
        n_neg = int((region & (rmap < 0)).sum())
        out: dict[str, Target] = {}
        for m in methods:
            if n_neg == 0:
                out[m] = self._no_target(m, rmap, vals)
            elif m == "classic":
                vox = np.unravel_index(int(np.argmin(vals)), rmap.shape)
                p = xyz[vox]
                out[m] = Target(m, *(float(v) for v in p), r=float(rmap[vox]),
                                voxel=tuple(int(v) for v in vox), n_voxels=1, snapped=False,
                                snap_distance_mm=0.0, centroid_mm=None,
                                distance_to_region_edge_mm=float(edge[vox]),
                                description="most negative voxel of the seed-correlation map "
                                            "in the search region (Fox et al. 2012)")
            elif m in ("cluster", "cluster_largest"):
                out[m] = self._cluster(m, rmap, region, vals, n_region, n_neg, cluster_percent)
            else:  # weighted
                want = int(max(1, weighted_n_voxels))
                k = int(min(want, n_neg))
                order = np.argsort(vals, axis=None, kind="stable")[:k]
                sel = np.zeros(rmap.shape, bool)
                sel.flat[order] = True
                note = ("" if k == want else f" (only {k} negative voxels, fewer than the "
                        f"{want} asked for; positive voxels are never used)")
                out[m] = _centroid_target(m, sel, rmap, region, xyz, edge, affine,
                                          f"|r|-weighted centroid of the {k} most negative "
                                          f"voxels of the search region{note}")
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
        Any of :data:`MAP_METHODS`.
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
