"""The targeting methods that need voxel time series, not only the seed map: ``snt``, ``seedmap``.

The map methods (``classic``, ``cluster``, ``cluster_largest``, ``weighted``) pick a point on the
sgACC seed-correlation map (:mod:`tmstarget.target`). The two methods here work on a
participant/session's denoised data (:class:`tmstarget.seedmap.CombinedData`):

``snt``
    SAINT/SNT-style hierarchical clustering of the search-region and sgACC voxels
    (:mod:`tmstarget.snt`); reproducibility: the whole clustering on each independently cleaned
    half; bootstrap: the full-data clusters re-scored on each resample.
``seedmap``
    The seed time series is a *group map's* weighted average over the brain (Fox et al. 2013,
    NeuroImage 66:151; :func:`tmstarget.groupmap.seedmap_timeseries`), by default leaving the
    search region out; the target is the most negative voxel of that seed's correlation map in
    the search region. The group map is a given file or the leave-one-out mean of the other
    participants' sgACC maps (``target.seedmap.source``). Reproducibility: the same on each
    half (each half's own seed series) and on each bootstrap resample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

#: Methods computed here.
DATA_METHODS: tuple[str, ...] = ("snt", "seedmap")


def needs_data(methods: Sequence[str]) -> bool:
    """Whether the target step must read the denoised time series."""
    return any(m in DATA_METHODS for m in methods)


@dataclass
class SeedmapSeed:
    """The group map sampled on the data's voxels, and how it was obtained."""

    weights: np.ndarray  # (V,) on combined.voxels
    exclude: np.ndarray | None  # (V,) bool: voxels left out of the average
    description: str
    source: dict[str, Any]


def seedmap_seed(cfg: Mapping[str, Any], combined: Any, region: np.ndarray,
                 data_space: str, group_map: str | Path | None = None) -> SeedmapSeed:
    """The seedmap method's group map on the data's voxels.

    Parameters
    ----------
    cfg : mapping
        The configuration (``target.seedmap``).
    combined : CombinedData
    region : numpy.ndarray of bool, 3D
        The search region (left out of the average when ``exclude_search_region``).
    data_space : str
    group_map : path, optional
        The group map file: for ``source: cohort`` the leave-one-out map made by the
        workflow; for ``source: file`` ``target.seedmap.file`` is used.
    """
    from .io import sha256sum
    from .seedmap import seed_weights

    sm = dict(cfg["target"].get("seedmap") or {})
    source = sm.get("source", "cohort")
    if source == "file":
        path = sm.get("file")
        if not path:
            raise InputError(None, "target.seedmap.source is 'file' but target.seedmap.file is "
                             "not set.", "Give the group map's path, or use source: cohort.")
        space = sm.get("space")
    else:
        path = group_map
        space = data_space
        if path is None:
            raise InputError(None, "the seedmap method needs the cohort's leave-one-out group "
                             "map, which was not made.", "Run through the tmstarget command "
                             "(it makes the group maps), or use target.seedmap.source: file.")
    w3, desc = seed_weights({"kind": "file", "file": str(path), "space": space},
                            combined.shape, combined.affine, data_space)
    vox = tuple(np.asarray(combined.voxels).T)
    weights = np.asarray(w3, float)[vox]
    exclude = np.asarray(region, bool)[vox] if sm.get("exclude_search_region", True) else None
    return SeedmapSeed(weights, exclude, desc,
                       {"source": source, "file": str(path), "sha256": sha256sum(path),
                        "exclude_search_region": exclude is not None})


def seedmap_map(combined: Any, seed: SeedmapSeed) -> tuple[np.ndarray, np.ndarray, dict]:
    """The seedmap seed series and its correlation with every voxel (values on the voxels)."""
    from .groupmap import seedmap_timeseries
    from .seedmap import correlation_map

    ts, info = seedmap_timeseries(combined.data, seed.weights, seed.exclude,
                                  name=seed.source["file"])
    return ts, correlation_map(combined.data, ts), info


def seedmap_target(rmap: np.ndarray, finder: Any) -> Any:
    """The seedmap target: the most negative voxel of the seedmap correlation map."""
    from dataclasses import replace

    t = finder.find(rmap, methods=["classic"])["classic"]
    return replace(t, method="seedmap", description=(
        "most negative voxel, in the search region, of the correlation map of the "
        "group-map-weighted seed time series (Fox et al. 2013)" if t.ok else t.description))


def snt_run(combined: Any, region: np.ndarray, sgacc_weights: np.ndarray,
            cfg: Mapping[str, Any]) -> tuple[Any, tuple[np.ndarray, ...]]:
    """The SNT clustering of a participant's data; also returns the arrays it used."""
    from .snt import SNTParams, snt_clusters, snt_inputs

    from dataclasses import replace

    params = SNTParams.from_config(cfg["target"].get("snt"))
    # the minimum cluster size is published in 2 mm voxels: keep its volume on other grids
    vox_mm3 = float(abs(np.linalg.det(np.asarray(combined.affine, float)[:3, :3])))
    if vox_mm3 > 0:
        params = replace(params, min_cluster_voxels=int(round(
            params.min_cluster_voxels * 8.0 / vox_mm3)))
    arrays = snt_inputs(combined, region, sgacc_weights)
    return snt_clusters(*arrays, params), arrays
