"""How far can a target be trusted? Split-half, block bootstrap, reference sites, cohort view.

All computations reuse the denoised data of a participant/session (no re-reading of the
BOLD); correlations for all bootstrap resamples are matrix products restricted to the search
region and the seed, not a loop over voxels.

References
----------
Cash RFH et al. (2021) Hum Brain Mapp 42:4155-4172 (within- vs between-subject target
distances). Künsch HR (1989) Ann Stat 17:1217 and Politis DN, Romano JP (1992) (circular block
bootstrap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .regions import REFERENCE_TARGETS_MM, voxel_centers_mm
from .seedmap import CombinedData
from .target import Target, TargetFinder


def _xyz(t: Target) -> np.ndarray:
    return np.array([t.x, t.y, t.z], dtype=float)


def split_indices(run_lengths: Sequence[int], mode: str = "time",
                  gap_volumes: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Volume indices of the two halves of the concatenated data.

    Parameters
    ----------
    run_lengths : sequence of int
        Retained volumes of each run, in concatenation order.
    mode : {"time", "run"}
        ``time``: first and second half of the concatenated series (``gap_volumes`` dropped
        in the middle). ``run``: whole runs in each half (needs ≥ 2 runs; otherwise falls
        back to ``time`` and says so).
    gap_volumes : int
        Volumes left out between the halves (``time`` mode).

    Returns
    -------
    a, b : numpy.ndarray of int
    description : str
    """
    n = int(sum(run_lengths))
    if mode == "run" and len(run_lengths) >= 2:
        bounds = np.concatenate([[0], np.cumsum(run_lengths)])
        # first k runs vs the rest, k chosen to balance the volumes
        k = int(np.argmin([abs(bounds[i] - n / 2) for i in range(1, len(run_lengths))])) + 1
        return (np.arange(0, bounds[k]), np.arange(bounds[k], n),
                f"runs 1-{k} vs runs {k + 1}-{len(run_lengths)}")
    note = "" if mode == "time" else " (run split needs ≥ 2 runs; split in time instead)"
    gap = max(0, int(gap_volumes))
    half = (n - gap) // 2
    if half < 3:
        raise ValueError(f"too few volumes ({n}) to split in halves with a gap of {gap}")
    return (np.arange(0, half), np.arange(n - half, n),
            f"first vs second half in time ({half} volumes each, gap {gap}){note}")


def circular_block_bootstrap(n: int | Sequence[int], block: int, n_resamples: int,
                             seed: int) -> np.ndarray:
    """Resampling counts of a circular block bootstrap that never crosses a run boundary.

    Parameters
    ----------
    n : int or sequence of int
        Number of volumes, or the retained volumes of each run in concatenation order. Each
        run is resampled on its own (blocks wrap around inside the run, never into the next
        one), to its own length.
    block : int
        Block length in volumes (≥ 1; at most the run's length).
    n_resamples : int
        Number of resamples.
    seed : int
        Seed of the random generator (same seed → identical resamples).

    Returns
    -------
    numpy.ndarray, int32, (n_resamples, total volumes)
        How many times each volume appears in each resample (each run's segment of a row sums
        to that run's length).
    """
    lengths = [int(n)] if np.isscalar(n) else [int(v) for v in n]
    rng = np.random.default_rng(seed)
    total = int(sum(lengths))
    counts = np.zeros((n_resamples, total), dtype=np.int32)
    bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    for b in range(n_resamples):
        for r, length in enumerate(lengths):
            if length <= 0:
                continue
            blk = int(min(max(1, block), length))
            n_blocks = int(np.ceil(length / blk))
            starts = rng.integers(0, length, size=n_blocks)
            idx = ((starts[:, None] + np.arange(blk)[None, :]) % length).ravel()[:length]
            counts[b, bounds[r]:bounds[r + 1]] = np.bincount(idx, minlength=length)
    return counts


def weighted_correlations(x: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson r of ``s`` with each column of ``x`` under each row of integer weights ``w``.

    Equivalent to correlating the resampled series ``s[idx]`` and ``x[idx]`` where ``w``
    counts how often each time point appears, computed as matrix products.

    Parameters
    ----------
    x : (n_time, n_voxels) array
    s : (n_time,) array
    w : (n_resamples, n_time) array of counts (or 0/1 selections)

    Returns
    -------
    numpy.ndarray (n_resamples, n_voxels)
    """
    x = np.asarray(x, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n = w.sum(axis=1)[:, None]
    sx = w @ x
    sxx = w @ (x * x)
    sxs = w @ (x * s[:, None])
    ss = (w @ s)[:, None]
    sss = (w @ (s * s))[:, None]
    num = n * sxs - ss * sx
    den = np.sqrt(np.maximum(n * sxx - sx * sx, 0) * np.maximum(n * sss - ss * ss, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    return np.where(den > 0, r, 0.0)


@dataclass
class RegionData:
    """The data needed to recompute targets: seed series and search-region voxels."""

    x: np.ndarray  # (n_time, n_region_voxels)
    seed: np.ndarray  # (n_time,)
    region_index: tuple[np.ndarray, ...]  # 3D index of the region voxels (into the grid)
    finder: TargetFinder

    def to_map(self, r: np.ndarray) -> np.ndarray:
        vol = np.full(self.finder.shape, np.nan)
        vol[self.region_index] = r
        return vol


def region_data(combined: CombinedData, seed_ts: np.ndarray, region: np.ndarray) -> RegionData:
    """Restrict the combined data to the search region (keeping the seed series)."""
    mask = combined.mask()
    region = np.asarray(region, bool) & mask
    lookup = np.full(combined.shape, -1, dtype=np.int64)
    lookup[tuple(combined.voxels.T)] = np.arange(combined.voxels.shape[0])
    idx = np.nonzero(region)
    cols = lookup[idx]
    return RegionData(combined.data[:, cols].astype(np.float64), np.asarray(seed_ts, float), idx,
                      TargetFinder(region, combined.affine))


def split_half(rd_a: RegionData, rd_b: RegionData, full: Mapping[str, Target],
               target_kw: Mapping[str, Any]) -> dict[str, Any]:
    """Targets from two independent halves with the same method, their distances and maps.

    Parameters
    ----------
    rd_a, rd_b : RegionData
        The two halves' own data (each half cleaned as its own problem and with its own seed
        time series: not halves cut out of data cleaned as a whole).
    full : mapping
        The full-data targets, per method.
    target_kw : mapping
        Keyword arguments of :meth:`TargetFinder.find`.
    """
    r = [correlation_vector(rd.x, rd.seed) for rd in (rd_a, rd_b)]
    maps = [rd.to_map(v) for rd, v in ((rd_a, r[0]), (rd_b, r[1]))]
    tg = [rd_a.finder.find(m, methods=list(full), **target_kw) for m in maps]
    map_r = float(np.corrcoef(r[0], r[1])[0, 1]) if r[0].size > 1 else float("nan")
    out = {}
    for m in full:
        pa, pb, pf = _xyz(tg[0][m]), _xyz(tg[1][m]), _xyz(full[m])
        out[m] = {
            "half_a": {"x": pa[0], "y": pa[1], "z": pa[2], "r": tg[0][m].r},
            "half_b": {"x": pb[0], "y": pb[1], "z": pb[2], "r": tg[1][m].r},
            "distance_mm": float(np.linalg.norm(pa - pb)),
            "half_a_to_full_mm": float(np.linalg.norm(pa - pf)),
            "half_b_to_full_mm": float(np.linalg.norm(pb - pf)),
            "map_r": map_r,
        }
    return out


def correlation_vector(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Pearson r of ``s`` with every column of ``x`` (no resampling)."""
    return weighted_correlations(x, s, np.ones((1, x.shape[0])))[0]


def bootstrap(rd: RegionData, counts: np.ndarray, full: Mapping[str, Target],
              target_kw: Mapping[str, Any], chunk: int = 50) -> tuple[list[dict], dict]:
    """Targets of each bootstrap resample and the cloud's summary per method.

    Returns
    -------
    cloud : list of dict
        One row per resample × method: resample, method, x, y, z, r.
    summary : dict
        Per method: n_resamples, centroid (x, y, z), radius95_mm (95th percentile of the
        distances to the full-data target), fraction_within_5mm.
    """
    cloud: list[dict] = []
    for start in range(0, counts.shape[0], chunk):
        r = weighted_correlations(rd.x, rd.seed, counts[start:start + chunk])
        for i in range(r.shape[0]):
            tg = rd.finder.find(rd.to_map(r[i]), methods=list(full), **target_kw)
            for m, t in tg.items():
                cloud.append({"resample": start + i, "method": m, "x": t.x, "y": t.y,
                              "z": t.z, "r": t.r})
    summary = {}
    for m in full:
        pts = np.array([[c["x"], c["y"], c["z"]] for c in cloud if c["method"] == m])
        d = np.linalg.norm(pts - _xyz(full[m]), axis=1)
        summary[m] = {
            "n_resamples": int(len(pts)),
            "centroid": {k: float(v) for k, v in zip("xyz", pts.mean(axis=0), strict=True)},
            "radius95_mm": float(np.percentile(d, 95)),
            "fraction_within_5mm": float(np.mean(d <= 5.0)),
        }
    return cloud, summary


def reference_sites(rmap: np.ndarray, brain: np.ndarray, affine: np.ndarray,
                    targets: Mapping[str, Target],
                    sites: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """Distance from each target to the standard scalp-rule/atlas sites and r at each site.

    The r at a site is the map value at the nearest in-brain voxel centre (``null`` when the
    nearest in-brain voxel is more than one voxel away).
    """
    sites = REFERENCE_TARGETS_MM if sites is None else sites
    xyz = voxel_centers_mm(rmap.shape, affine)
    bxyz = xyz[brain]
    bval = rmap[brain]
    vox = float(np.max(np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))))
    out = {}
    for name, c in sites.items():
        c = np.asarray(c, float)
        d = np.linalg.norm(bxyz - c, axis=1)
        i = int(np.argmin(d))
        out[name] = {
            "x": float(c[0]), "y": float(c[1]), "z": float(c[2]),
            "r": float(bval[i]) if d[i] <= vox else None,
            "distance_mm": {m: float(np.linalg.norm(_xyz(t) - c)) for m, t in targets.items()},
        }
    return out


def cohort_summary(rows: Sequence[Mapping[str, Any]], ratio_limit: float,
                   radius_limit_mm: float) -> tuple[list[dict], dict]:
    """Within- vs between-subject distances and reliability flags.

    Parameters
    ----------
    rows : sequence of mapping
        One per participant × session × method with keys participant_id, session_id,
        method, x, y, z, split_half_distance_mm, bootstrap_radius95_mm.
    ratio_limit : float
        A split-half distance above ``ratio_limit`` × the cohort's median between-subject
        distance (same method) is not "clearly below" it: flagged.
    radius_limit_mm : float
        A bootstrap 95 % radius above this is flagged.

    Returns
    -------
    flagged_rows : list of dict
        ``rows`` with ``reliability`` ("reliable"/"unreliable") and ``reliability_reason``.
    summary : dict
        Per method: within (split-half) and between-subject distance distributions (n,
        median, q1, q3) and the ratio of their medians.
    """
    methods = sorted({r["method"] for r in rows})
    summary: dict[str, Any] = {}
    out = [dict(r) for r in rows]
    for m in methods:
        mr = [r for r in out if r["method"] == m]
        within = np.array([r["split_half_distance_mm"] for r in mr
                           if r.get("split_half_distance_mm") is not None], float)
        between = []
        for i in range(len(mr)):
            for j in range(i + 1, len(mr)):
                if mr[i]["participant_id"] != mr[j]["participant_id"]:
                    between.append(float(np.linalg.norm(
                        [mr[i][k] - mr[j][k] for k in ("x", "y", "z")])))
        between_a = np.array(between, float)

        def dist(v: np.ndarray) -> dict[str, Any]:
            if v.size == 0:
                return {"n": 0, "median": None, "q1": None, "q3": None}
            q1, med, q3 = np.percentile(v, [25, 50, 75])
            return {"n": int(v.size), "median": float(med), "q1": float(q1), "q3": float(q3)}

        bmed = float(np.median(between_a)) if between_a.size else None
        wmed = float(np.median(within)) if within.size else None
        summary[m] = {
            "within_subject_split_half_mm": dist(within),
            "between_subject_mm": dist(between_a),
            "within_between_ratio": (wmed / bmed) if (bmed and wmed is not None) else None,
        }
        for r in mr:
            reasons = []
            if r.get("split_half_distance_mm") is None:
                reasons.append("no target in one half of the data (split-half distance "
                               "undefined)")
            elif bmed is None:
                r["between_subject_note"] = "fewer than 2 participants: no between-subject reference"
            elif r["split_half_distance_mm"] > ratio_limit * bmed:
                reasons.append(
                    f"split-half distance {r['split_half_distance_mm']:.1f} mm is not clearly "
                    f"below the cohort's median between-subject distance {bmed:.1f} mm "
                    f"(limit {ratio_limit:g} × median = {ratio_limit * bmed:.1f} mm)")
            if r.get("bootstrap_radius95_mm") is None:
                reasons.append("no bootstrap resample had a target")
            elif r["bootstrap_radius95_mm"] > radius_limit_mm:
                reasons.append(f"bootstrap 95% radius {r['bootstrap_radius95_mm']:.1f} mm exceeds "
                               f"{radius_limit_mm:g} mm")
            r["reliability"] = "unreliable" if reasons else "reliable"
            r["reliability_reason"] = "; ".join(reasons) if reasons else ""
    return out, summary
