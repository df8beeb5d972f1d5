"""SAINT/SNT-style target: hierarchical clustering of DLPFC and sgACC voxels by their time series.

Written from the published description of the Stanford protocol (Cole EJ et al. 2020, Am J
Psychiatry 177:716-726 and its supplement; Cole EJ et al. 2022, Am J Psychiatry 179:132-141):
the left-DLPFC target is the subregion *most functionally anticorrelated with the sgACC*, found
by agglomerative (hierarchical) clustering of voxels by time-series similarity rather than on a
single voxel's correlation. The clinical software is proprietary; the open re-implementation in
contarg (``contarg/hierarchical.py``, no licence: read to understand, not copied) fixes the
details the papers leave open. These are pure functions on arrays, so the workflow can call
them with the denoised data of one participant/session.

Algorithm
---------
1. **Distance.** For the voxels of a region (time series ``T x V``), the dissimilarity of two
   voxels is ``1 - rho`` with ``rho`` the Spearman rank correlation of their time series
   (rank-transform each series, then Pearson on the ranks).
2. **Clustering.** Agglomerative clustering with ``linkage`` (default ``average``) on that
   dissimilarity, no spatial adjacency constraint, cut at ``distance_threshold`` (0.5, i.e.
   clusters merge while their average dissimilarity is at most 0.5, Spearman >= 0.5). Done
   separately for the search-region (DLPFC) voxels and for the sgACC ROI voxels.
3. **Cluster series.** Each cluster is represented by its median time series (median over its
   voxels at each time point).
4. **Net correlation.** Each DLPFC cluster's Spearman correlation with every sgACC cluster's
   median series, averaged with the sgACC clusters' voxel counts as weights:
   ``net_c = sum_k n_k rho(c, k) / sum_k n_k``.
5. **Eligibility.** DLPFC clusters with more than ``min_cluster_voxels`` voxels (50) and a
   negative net correlation.
6. **Ranking.** Among eligible clusters: rank by size (largest = 1), by spatial concentration
   ``n_voxels / mean pairwise distance (mm)`` (most concentrated = 1) and by net correlation
   (most negative = 1); score = ``rank_size^w_s x rank_conc^w_c x rank_corr^w_r`` (default
   weights 1: the plain rank product); the lowest score wins (ties: more negative net
   correlation, then higher concentration, then larger size, then lower label).
7. **Target.** The centre of mass (unweighted mean of the voxel centres, MNI mm) of the top
   cluster. Clusters are not spatially constrained, so the centre may fall outside the region:
   it is then snapped to the nearest search-region voxel and reported (``snapped``).
   The next two ranked clusters are reported as backup candidates.

Where the description was ambiguous, and what tmstarget chose
--------------------------------------------------------------
* *Distance and threshold*: the papers say "hierarchical clustering" of time series; we use
  ``1 - Spearman`` with a 0.5 cut, as contarg's summary does (contarg's code passes a callable
  ``1 - |Spearman|`` metric to scikit-learn, which then compares *rows of the correlation
  matrix*, a second-order similarity; we use the first-order definition its documentation
  states).
* *Linkage*: average (contarg's command-line default; its library default is single).
* *Cut*: SciPy ``fcluster(criterion="distance")`` keeps merges at cophenetic distance
  ``<= distance_threshold``; scikit-learn's ``distance_threshold`` stops at ``>=``. Ties at
  exactly 0.5 are measure-zero for real data.
* *Size weighting of the sgACC clusters*: a weighted **mean** (divided by the total sgACC
  voxels) instead of contarg's weighted sum: the ranking is identical (same constant for every
  DLPFC cluster) and the value stays a correlation in [-1, 1].
* *Minimum size*: "more than 50 voxels" (contarg's ``nvox > 50``) on the analysis grid.
* *Rank weights*: contarg multiplies each rank by its weight before taking the product, which
  cannot change the order (the product of the weights is a common factor); tmstarget uses the
  weights as exponents (a weighted geometric combination), so a weight of 0 drops a criterion
  and 2 doubles its influence. Defaults 1 reproduce the plain rank product.
* *Rank ties*: average ranks (the pandas default contarg uses).
* *Preprocessing*: the Stanford pipeline cleans its own data (contarg: detrend, 0.01-0.1 Hz,
  percent signal change, motion confounds). tmstarget feeds the data denoised by the chosen
  ``denoise.strategy`` (the same data every other method uses); percent-signal-change scaling
  does not matter because Spearman correlation is invariant to it.
* *sgACC ROI*: the configured seed (``seed``: the sphere, or the non-zero voxels of a mask or
  map file) inside the brain mask.
* *Centre of mass*: unweighted mean of the top cluster's voxel centres.

Cost
----
The ``V x V`` dissimilarity is built block by block straight into SciPy's condensed form
(``V (V - 1) / 2`` float64: 400 MB for 10,000 voxels; SciPy's average linkage keeps one more
copy). See ``benchmarks/bench_snt.py`` for time and peak memory on a 10,000-voxel, 1,200-volume
run.

Reproducibility at acceptable cost
----------------------------------
* :func:`snt_split_half`: the whole algorithm on each half (two clusterings).
* :func:`snt_bootstrap`: the clusters of the full data are kept fixed and each resample only
  re-scores them (Spearman of the resampled median series, net correlation, ranking): a
  resample costs a few milliseconds instead of a clustering. This measures how stable the
  *choice among the full-data clusters* is, not how stable the clustering itself is; the
  split-half measures the latter. The bootstrap cloud consists of cluster centres.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist
from scipy.stats import rankdata

from .errors import InputError

#: ``Target.status`` when no cluster passes the size and negative-correlation criteria.
STATUS_NO_ELIGIBLE: str = "no_eligible_cluster"
#: Linkages accepted (SciPy names; all valid on a precomputed dissimilarity).
LINKAGES: tuple[str, ...] = ("average", "single", "complete", "weighted")


@dataclass(frozen=True)
class SNTParams:
    """Parameters of the SNT-style method (config ``target.snt``; published defaults).

    Attributes
    ----------
    distance_threshold : float
        Cut of the dendrogram in ``1 - Spearman`` units (0.5).
    linkage : str
        Agglomerative linkage (``average``).
    min_cluster_voxels : int
        A DLPFC cluster must have more than this many voxels (50).
    size_weight, concentration_weight, correlation_weight : float
        Exponents of the three ranks in the rank product (1, 1, 1).
    """

    distance_threshold: float = 0.5
    linkage: str = "average"
    min_cluster_voxels: int = 50
    size_weight: float = 1.0
    concentration_weight: float = 1.0
    correlation_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < float(self.distance_threshold) <= 2:
            raise InputError(None, f"target.snt.distance_threshold must be in (0, 2], got "
                             f"{self.distance_threshold}.", "Use the published 0.5.")
        if self.linkage not in LINKAGES:
            raise InputError(None, f"target.snt.linkage '{self.linkage}' is not known.",
                             f"Use one of {list(LINKAGES)}.")
        if int(self.min_cluster_voxels) < 0:
            raise InputError(None, "target.snt.min_cluster_voxels must be >= 0.", "Use 50.")
        for k in ("size_weight", "concentration_weight", "correlation_weight"):
            if float(getattr(self, k)) < 0:
                raise InputError(None, f"target.snt.{k} must be >= 0.", "Use 1.")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> SNTParams:
        """From the ``target.snt`` config section (missing keys take the defaults)."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = set(cfg) - known
        if unknown:
            raise InputError(None, f"unknown target.snt key(s) {sorted(unknown)}.",
                             f"Use some of {sorted(known)}.")
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for sidecars)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Cluster:
    """One cluster of voxels.

    Attributes
    ----------
    label : int
        1-based label (order of first appearance in the voxel order).
    members : numpy.ndarray of int
        Column indices of its voxels in the region's ``T x V`` array.
    center_mm : numpy.ndarray (3,)
        Centre of mass (mean voxel centre), MNI mm.
    concentration : float
        ``n_voxels / mean pairwise distance (mm)`` (NaN for a single voxel).
    series : numpy.ndarray (T,)
        Median time series over its voxels.
    """

    label: int
    members: np.ndarray
    center_mm: np.ndarray
    concentration: float
    series: np.ndarray

    @property
    def n_voxels(self) -> int:
        """Number of voxels."""
        return int(self.members.size)


@dataclass
class SNTResult:
    """Clusters, their scores and the chosen cluster.

    Attributes
    ----------
    region_clusters, sgacc_clusters : list of Cluster
    net_correlation : numpy.ndarray (n_region_clusters,)
    eligible : numpy.ndarray of bool
    ranking : list of int
        Indices into ``region_clusters`` of the eligible clusters, best first.
    score : numpy.ndarray
        Rank product of each region cluster (``inf`` when not eligible).
    params : SNTParams
    """

    region_clusters: list[Cluster]
    sgacc_clusters: list[Cluster]
    net_correlation: np.ndarray
    eligible: np.ndarray
    ranking: list[int]
    score: np.ndarray
    params: SNTParams
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def target_mm(self) -> np.ndarray | None:
        """Centre of mass of the top cluster (``None`` when no cluster is eligible)."""
        return None if not self.ranking else self.region_clusters[self.ranking[0]].center_mm

    def table(self) -> list[dict[str, Any]]:
        """One row per region cluster (for a TSV): label, size, concentration, net r, rank."""
        pos = {c: i + 1 for i, c in enumerate(self.ranking)}
        return [{"label": c.label, "n_voxels": c.n_voxels,
                 "x": float(c.center_mm[0]), "y": float(c.center_mm[1]),
                 "z": float(c.center_mm[2]), "concentration": float(c.concentration),
                 "net_correlation": float(self.net_correlation[i]),
                 "eligible": bool(self.eligible[i]), "score": float(self.score[i]),
                 "rank": pos.get(i)} for i, c in enumerate(self.region_clusters)]


def _standardised_ranks(x: np.ndarray) -> np.ndarray:
    """Columns rank-transformed, centred and scaled so that ``z.T @ z`` = Spearman rho."""
    r = rankdata(np.asarray(x, np.float64), axis=0)
    r -= r.mean(axis=0)
    n = np.sqrt((r * r).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(n > 0, r / n, 0.0)  # a constant series correlates 0 with everything
    return z


def spearman_dissimilarity(x: np.ndarray, block: int = 512) -> np.ndarray:
    """Condensed ``1 - Spearman rho`` between the columns of ``x`` (SciPy ``pdist`` order).

    Built block by block (rows ``i0:i1`` against all columns) straight into the condensed
    vector, so the full ``V x V`` matrix never exists.

    Parameters
    ----------
    x : numpy.ndarray (T, V)
    block : int
        Rows per block.

    Returns
    -------
    numpy.ndarray, float64, (V (V - 1) / 2,)
    """
    z = _standardised_ranks(x).astype(np.float32)
    v = z.shape[1]
    out = np.empty(v * (v - 1) // 2, dtype=np.float64)
    for i0 in range(0, v, block):
        i1 = min(v, i0 + block)
        rho = z[:, i0:i1].T @ z[:, i0:]  # (b, v - i0)
        for i in range(i0, i1):
            if i == v - 1:
                break
            start = i * v - i * (i + 1) // 2
            seg = rho[i - i0, i - i0 + 1:]
            out[start:start + seg.size] = 1.0 - seg
    np.clip(out, 0.0, 2.0, out=out)
    return out


def cluster_voxels(x: np.ndarray, params: SNTParams) -> np.ndarray:
    """Agglomerative clustering of the columns of ``x`` (labels 1..n, first-seen order)."""
    v = x.shape[1]
    if v == 0:
        raise InputError(None, "no voxels to cluster.", "Check the search region and seed.")
    if v == 1:
        return np.ones(1, dtype=np.int64)
    z = linkage(spearman_dissimilarity(x), method=params.linkage)
    lab = fcluster(z, t=float(params.distance_threshold), criterion="distance")
    # relabel by first appearance, so labels do not depend on SciPy's internal numbering
    _, first, inv = np.unique(lab, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inv].astype(np.int64) + 1


def make_clusters(x: np.ndarray, xyz: np.ndarray, labels: np.ndarray) -> list[Cluster]:
    """Cluster objects (median series, centre of mass, concentration) from labels."""
    out = []
    for lab in range(1, int(labels.max()) + 1):
        idx = np.flatnonzero(labels == lab)
        pts = np.asarray(xyz, np.float64)[idx]
        conc = float(idx.size / pdist(pts).mean()) if idx.size > 1 else float("nan")
        series = np.median(np.asarray(x, np.float64)[:, idx], axis=1)
        out.append(Cluster(lab, idx, pts.mean(axis=0), conc, series))
    return out


def _spearman_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rho between every column of ``a`` and every column of ``b``."""
    return _standardised_ranks(a).T @ _standardised_ranks(b)


def net_correlations(region_series: np.ndarray, sgacc_series: np.ndarray,
                     sgacc_sizes: np.ndarray) -> np.ndarray:
    """Size-weighted mean Spearman correlation of each region cluster with the sgACC clusters.

    Parameters
    ----------
    region_series : numpy.ndarray (T, C)
    sgacc_series : numpy.ndarray (T, K)
    sgacc_sizes : numpy.ndarray (K,)

    Returns
    -------
    numpy.ndarray (C,)
    """
    w = np.asarray(sgacc_sizes, np.float64)
    return _spearman_between(region_series, sgacc_series) @ w / w.sum()


def rank_clusters(sizes: np.ndarray, concentration: np.ndarray, net: np.ndarray,
                  params: SNTParams) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Eligibility and rank-product order (see the module docstring, steps 5-6).

    Returns
    -------
    ranking : list of int
        Eligible indices, best first.
    score : numpy.ndarray
        Rank product (``inf`` for ineligible clusters).
    eligible : numpy.ndarray of bool
    """
    sizes = np.asarray(sizes, np.float64)
    conc = np.nan_to_num(np.asarray(concentration, np.float64), nan=0.0)
    net = np.asarray(net, np.float64)
    eligible = (sizes > int(params.min_cluster_voxels)) & (net < 0)
    score = np.full(sizes.shape, np.inf)
    idx = np.flatnonzero(eligible)
    if idx.size == 0:
        return [], score, eligible
    r_size = rankdata(-sizes[idx])
    r_conc = rankdata(-conc[idx])
    r_corr = rankdata(net[idx])
    logs = (float(params.size_weight) * np.log(r_size)
            + float(params.concentration_weight) * np.log(r_conc)
            + float(params.correlation_weight) * np.log(r_corr))
    score[idx] = np.exp(logs)
    order = np.lexsort((idx, -sizes[idx], -conc[idx], net[idx], np.round(logs, 12)))
    return [int(idx[o]) for o in order], score, eligible


def snt_clusters(x_region: np.ndarray, xyz_region: np.ndarray, x_sgacc: np.ndarray,
                 xyz_sgacc: np.ndarray, params: SNTParams | None = None) -> SNTResult:
    """Run the SNT-style method on arrays.

    Parameters
    ----------
    x_region : numpy.ndarray (T, V)
        Denoised time series of the search-region (DLPFC) voxels.
    xyz_region : numpy.ndarray (V, 3)
        Their voxel centres, MNI152NLin2009cAsym RAS+ mm.
    x_sgacc : numpy.ndarray (T, S)
        Denoised time series of the sgACC ROI voxels.
    xyz_sgacc : numpy.ndarray (S, 3)
        Their voxel centres (mm).
    params : SNTParams, optional

    Returns
    -------
    SNTResult
    """
    params = params or SNTParams()
    x_region = np.asarray(x_region)
    x_sgacc = np.asarray(x_sgacc)
    if x_region.ndim != 2 or x_sgacc.ndim != 2 or x_region.shape[0] != x_sgacc.shape[0]:
        raise InputError(None, f"region ({x_region.shape}) and sgACC ({x_sgacc.shape}) time "
                         "series must be (time x voxels) with the same number of volumes.",
                         "Pass the same volumes for both.")
    if x_region.shape[0] < 10:
        raise InputError(None, f"only {x_region.shape[0]} volumes: too few for SNT.",
                         "Use more data.")
    if x_sgacc.shape[1] == 0:
        raise InputError(None, "the sgACC ROI has no voxel.", "Check the seed and brain mask.")
    reg = make_clusters(x_region, xyz_region, cluster_voxels(x_region, params))
    sga = make_clusters(x_sgacc, xyz_sgacc, cluster_voxels(x_sgacc, params))
    net = net_correlations(np.stack([c.series for c in reg], 1),
                           np.stack([c.series for c in sga], 1),
                           np.array([c.n_voxels for c in sga]))
    ranking, score, eligible = rank_clusters(np.array([c.n_voxels for c in reg]),
                                             np.array([c.concentration for c in reg]),
                                             net, params)
    return SNTResult(reg, sga, net, eligible, ranking, score, params)


def snt_target(result: SNTResult, finder: Any, rmap: np.ndarray | None = None,
               n_candidates: int = 3) -> Any:
    """The SNT result as a :class:`tmstarget.target.Target` on the search-region grid.

    Parameters
    ----------
    result : SNTResult
    finder : tmstarget.target.TargetFinder
        Grid and search region (snapping, distance to the region edge).
    rmap : numpy.ndarray, 3D, optional
        The seed-correlation map: when given, ``r`` is the map value at the target voxel and
        the candidates carry the mean/min r of their voxels; otherwise ``r`` is the chosen
        cluster's net correlation.
    n_candidates : int
        Ranked clusters reported (the first is the target).

    Returns
    -------
    Target
        ``status`` is ``"no_eligible_cluster"`` (not a target) when no cluster has more than
        ``min_cluster_voxels`` voxels and a negative net correlation; its coordinate is then
        the centre of the cluster with the most negative net correlation, for inspection.
    """
    from .target import STATUS_OK, Target, _snap

    region, xyz, aff = finder.region, finder.xyz, finder.affine
    rvox = np.argwhere(region)  # C order, as the region's voxel order in snt_inputs
    n_members = sum(c.n_voxels for c in result.region_clusters)
    if rmap is not None and n_members != len(rvox):
        raise InputError(None, f"the SNT clusters hold {n_members} voxels but the search region "
                         f"has {len(rvox)}.", "Cluster the voxels of finder.region (C order, "
                         "as snt_inputs returns them).")

    def place(c: Cluster) -> tuple[np.ndarray, np.ndarray, bool, float]:
        return _snap(np.asarray(c.center_mm, float), region, xyz, aff)

    def vox_r(c: Cluster) -> tuple[float | None, float | None, float | None]:
        if rmap is None:
            return None, None, None
        v = rmap[tuple(rvox[c.members].T)]
        return float(v.mean()), float(v.min()), float(np.abs(v[v < 0]).sum())

    p = result.params
    if result.ranking:
        best = result.region_clusters[result.ranking[0]]
        status = STATUS_OK
        net = float(result.net_correlation[result.ranking[0]])
        desc = (f"SNT-style (Cole et al. 2020/2022): centre of mass of the top-ranked of "
                f"{len(result.region_clusters)} agglomerative clusters ({p.linkage} linkage, "
                f"1 - Spearman cut at {p.distance_threshold:g}) of the search-region voxels, "
                f"ranked by size x concentration x net correlation with "
                f"{len(result.sgacc_clusters)} sgACC clusters; {best.n_voxels} voxels, net "
                f"correlation {net:.3f}")
    else:
        i = int(np.argmin(result.net_correlation))
        best = result.region_clusters[i]
        status = STATUS_NO_ELIGIBLE
        net = float(result.net_correlation[i])
        desc = (f"NO TARGET: no search-region cluster has more than {p.min_cluster_voxels} "
                f"voxels and a negative net correlation with the sgACC clusters; the "
                f"coordinate is the centre of the most anticorrelated cluster ({best.n_voxels} "
                f"voxels, net correlation {net:.3f}), for inspection only")
    point, vox, snapped, dist = place(best)
    r_at = float(rmap[tuple(vox)]) if rmap is not None else net
    cands = []
    p0 = np.asarray(point, float)
    for k, ci in enumerate(result.ranking[:n_candidates]):
        c = result.region_clusters[ci]
        pt, _, sn, _ = place(c)
        mean_r, min_r, mass = vox_r(c)
        cands.append({"rank": k + 1, "x": float(pt[0]), "y": float(pt[1]), "z": float(pt[2]),
                      "n_voxels": c.n_voxels, "mean_r": mean_r, "min_r": min_r,
                      "score": float(result.score[ci]), "mass": mass,
                      "distance_to_primary_mm": float(np.linalg.norm(np.asarray(pt) - p0)),
                      "snapped": bool(sn), "net_correlation": float(result.net_correlation[ci]),
                      "concentration": float(c.concentration)})
    return Target("snt", *(float(v) for v in point), r=r_at, voxel=tuple(int(v) for v in vox),
                  n_voxels=best.n_voxels, snapped=snapped, snap_distance_mm=float(dist),
                  centroid_mm=tuple(float(v) for v in best.center_mm),
                  distance_to_region_edge_mm=float(finder.edge[tuple(vox)]),
                  description=desc, status=status, candidates=cands or None)


def snt_inputs(combined: Any, region: np.ndarray,
               sgacc_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Arrays for :func:`snt_clusters` from a participant's combined denoised data.

    Parameters
    ----------
    combined : tmstarget.seedmap.CombinedData
    region : numpy.ndarray of bool, 3D
        Search region on the same grid.
    sgacc_weights : numpy.ndarray, 3D
        Seed weights (:func:`tmstarget.seedmap.seed_weights`); non-zero voxels form the ROI.

    Returns
    -------
    x_region, xyz_region, x_sgacc, xyz_sgacc
        Region voxels in C order of the grid (the order :func:`snt_target` assumes).
    """
    from .regions import voxel_centers_mm

    vox = np.asarray(combined.voxels)
    flat = np.ravel_multi_index(tuple(vox.T), combined.shape)
    lookup = np.full(int(np.prod(combined.shape)), -1, np.int64)
    lookup[flat] = np.arange(vox.shape[0])
    reg_flat = np.flatnonzero(np.asarray(region, bool).ravel())
    cols_r = lookup[reg_flat]
    if np.any(cols_r < 0):
        raise InputError(None, "search-region voxels lie outside the analysis mask.",
                         "Intersect the search region with the brain mask first.")
    w = np.asarray(sgacc_weights)[tuple(vox.T)]
    cols_s = np.flatnonzero(w != 0)
    if cols_s.size == 0:
        raise InputError(None, "the sgACC ROI has no voxel inside the brain mask.",
                         "Check the seed's position/space and size.")
    xyz = voxel_centers_mm(combined.shape, combined.affine)
    xyz_r = xyz.reshape(-1, 3)[reg_flat]
    xyz_s = xyz[tuple(vox[cols_s].T)]
    data = combined.data
    return data[:, cols_r], xyz_r, data[:, cols_s], xyz_s


def snt_split_half(x_region: np.ndarray, xyz_region: np.ndarray, x_sgacc: np.ndarray,
                   xyz_sgacc: np.ndarray, a: Sequence[int], b: Sequence[int],
                   params: SNTParams | None = None) -> dict[str, Any]:
    """The whole SNT method on each half of the volumes.

    Parameters
    ----------
    a, b : sequence of int
        Volume indices of the two halves (e.g. :func:`tmstarget.reproducibility.split_indices`;
        for independent halves, denoise each half on its own first).

    Returns
    -------
    dict
        ``half_a``/``half_b`` (SNTResult), ``target_a_mm``/``target_b_mm`` (or None) and
        ``distance_mm`` (None when a half has no eligible cluster).
    """
    a = np.asarray(a, int)
    b = np.asarray(b, int)
    ra = snt_clusters(x_region[a], xyz_region, x_sgacc[a], xyz_sgacc, params)
    rb = snt_clusters(x_region[b], xyz_region, x_sgacc[b], xyz_sgacc, params)
    ta, tb = ra.target_mm, rb.target_mm
    dist = None if ta is None or tb is None else float(np.linalg.norm(ta - tb))
    return {"half_a": ra, "half_b": rb, "target_a_mm": ta, "target_b_mm": tb,
            "distance_mm": dist}


def snt_bootstrap(full: SNTResult, counts: np.ndarray) -> dict[str, Any]:
    """Re-score the full-data clusters on bootstrap resamples (clusters fixed).

    The median series of each cluster is computed per time point, so resampling time points
    resamples it exactly; each resample recomputes the Spearman correlations, the net
    correlations and the ranking (sizes and concentrations are fixed).

    Parameters
    ----------
    full : SNTResult
        Result on the full data.
    counts : numpy.ndarray (n_resamples, T)
        How often each volume appears in each resample
        (:func:`tmstarget.reproducibility.circular_block_bootstrap`).

    Returns
    -------
    dict
        ``targets_mm`` (n_resamples, 3) with NaN rows where no cluster was eligible,
        ``chosen`` (index into ``full.region_clusters`` or -1), ``radius95_mm`` and
        ``fraction_within_5mm`` (distances to the full-data target), ``n_no_target``.
    """
    p = full.params
    sizes = np.array([c.n_voxels for c in full.region_clusters])
    conc = np.array([c.concentration for c in full.region_clusters])
    keep = np.flatnonzero(sizes > int(p.min_cluster_voxels))  # others can never be eligible
    reg = np.stack([full.region_clusters[i].series for i in keep], 1) if keep.size else None
    sga = np.stack([c.series for c in full.sgacc_clusters], 1)
    ssz = np.array([c.n_voxels for c in full.sgacc_clusters], np.float64)
    counts = np.asarray(counts)
    out = np.full((counts.shape[0], 3), np.nan)
    chosen = np.full(counts.shape[0], -1, int)
    for bi, cnt in enumerate(counts):
        if reg is None:
            break
        idx = np.repeat(np.arange(cnt.size), cnt)
        net_k = net_correlations(reg[idx], sga[idx], ssz)
        net = np.zeros(sizes.size)
        net[keep] = net_k
        net[np.setdiff1d(np.arange(sizes.size), keep)] = 1.0  # not eligible anyway
        ranking, _, _ = rank_clusters(sizes, conc, net, p)
        if ranking:
            chosen[bi] = ranking[0]
            out[bi] = full.region_clusters[ranking[0]].center_mm
    ok = ~np.isnan(out[:, 0])
    t0 = full.target_mm
    if t0 is None or not ok.any():
        return {"targets_mm": out, "chosen": chosen, "radius95_mm": None,
                "fraction_within_5mm": None, "n_no_target": int((~ok).sum())}
    d = np.linalg.norm(out[ok] - t0, axis=1)
    return {"targets_mm": out, "chosen": chosen,
            "radius95_mm": float(np.percentile(d, 95)),
            "fraction_within_5mm": float(np.sum(d <= 5.0) / counts.shape[0]),
            "n_no_target": int((~ok).sum())}
