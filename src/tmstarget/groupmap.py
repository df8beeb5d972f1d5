"""Seed-map targeting (Fox et al. 2013; Cash et al. 2021): group-map-weighted seeds.

Fox MD, Liu H, Pascual-Leone A (2013) NeuroImage 66:151-160 (PMC3594474) showed that a seed
*map* -- the group-average connectivity map of the sgACC, used as a weighted seed over the
whole brain -- gives more reproducible individual left-DLPFC targets than a small sgACC sphere;
Cash et al. 2021 (Biol Psychiatry 90:689 and Hum Brain Mapp) used such maps to measure
within- vs between-subject target distances.

Seed series from a signed map
-----------------------------
Every in-brain voxel's denoised time series is weighted by the group map's value there and
averaged: ``seed(t) = sum_v w_v x_v(t) / sum_v |w_v|``. The map is used *signed*: voxels
positively connected to the sgACC at group level add their signal, voxels anticorrelated with
it (the DLPFC, the task-positive network) add theirs with the sign flipped, so both halves of
the anticorrelated system reinforce the same sgACC-like series. The target is then chosen as
usual on the correlation map of that series: the search-region voxel(s) most *anticorrelated*
with it (any map method of :mod:`tmstarget.target`). Dividing by ``sum |w|`` only scales the
series, which a correlation ignores. Optionally the voxels of the search region itself can be
left out of the weighting (``exclude``), so the seed is not built partly from the voxels it is
then correlated with.

(Verification note: the search tool available while writing this returned only the abstract of
PMC3594474, not its methods text; the signed whole-brain weighting above is the construction
described in the abstract's "seed maps" and in the method notes of this project. The lead
should check the sentence in the paper's methods before release.)

Leave-one-out group maps
------------------------
For a cohort without a published map, the group map of participant P is built from the other
participants' individual seed-correlation maps only (P never contributes to its own group map,
whichever of its sessions is concerned): mean of the Fisher z-transformed maps, transformed
back to r. :func:`leave_one_out_group_map` returns the map and the exact participants used;
:func:`write_group_map` writes it as a derivative with those participants in its sidecar.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np

from .errors import InputError
from .io import sha256sum, write_json, write_nifti


def seedmap_timeseries(data: np.ndarray, weights: np.ndarray,
                       exclude: np.ndarray | None = None,
                       name: str = "group seed map") -> tuple[np.ndarray, dict[str, Any]]:
    """Group-map-weighted seed time series (signed weights, Fox et al. 2013).

    Parameters
    ----------
    data : numpy.ndarray (T, V)
        Denoised voxel time series (all in-brain voxels).
    weights : numpy.ndarray (V,)
        Group map value at each of those voxels (signed; NaN counts as 0).
    exclude : numpy.ndarray of bool (V,), optional
        Voxels left out of the weighting (e.g. the search region).
    name : str
        Named in error messages.

    Returns
    -------
    ts : numpy.ndarray, float64 (T,)
        ``sum_v w_v x_v / sum_v |w_v|`` over the voxels used.
    info : dict
        ``n_voxels`` used, ``n_positive``, ``n_negative``, ``sum_abs_weight``,
        ``n_excluded``.
    """
    data = np.asarray(data)
    w = np.nan_to_num(np.asarray(weights, np.float64).ravel(), nan=0.0)
    if w.size != data.shape[1]:
        raise InputError(name, f"{w.size} weights for {data.shape[1]} voxels.",
                         "Sample the group map at the data's voxels.")
    n_ex = 0
    if exclude is not None:
        ex = np.asarray(exclude, bool).ravel()
        n_ex = int((ex & (w != 0)).sum())
        w = np.where(ex, 0.0, w)
    sel = np.flatnonzero(w != 0)
    if sel.size == 0:
        raise InputError(name, "the group seed map has no non-zero value inside the brain "
                         "mask (after exclusions).", "Check the map's space "
                         "(MNI152NLin2009cAsym) and that it is not empty.")
    ts = np.asarray(data[:, sel], np.float64) @ w[sel] / np.abs(w[sel]).sum()
    return ts, {"n_voxels": int(sel.size), "n_positive": int((w[sel] > 0).sum()),
                "n_negative": int((w[sel] < 0).sum()),
                "sum_abs_weight": float(np.abs(w[sel]).sum()), "n_excluded": n_ex}


def _participant(key: Any) -> str:
    """Participant label of a cohort key: ``"01"``, ``"sub-01"`` or ``("01", session)``."""
    p = key[0] if isinstance(key, tuple) else key
    p = str(p)
    return p.removeprefix("sub-")


def leave_one_out_group_map(maps: Mapping[Any, np.ndarray], participant: str,
                            min_participants: int = 2) -> tuple[np.ndarray, list[Any]]:
    """Group map for ``participant`` from everyone else's individual maps.

    Parameters
    ----------
    maps : mapping
        Cohort key (``"01"``, ``"sub-01"`` or ``(participant, session)``) to the individual
        seed-correlation map (r; any shape, all the same grid). Several sessions of one
        participant may be present: all of them are left out for that participant.
    participant : str
        ``"01"`` or ``"sub-01"``.
    min_participants : int
        Fewest *other* participants accepted.

    Returns
    -------
    group : numpy.ndarray, float64
        ``tanh(mean_k arctanh(r_k))`` over the maps used (NaN where every used map is NaN).
    used : list
        The cohort keys that contributed (sorted), none of them ``participant``'s.

    Raises
    ------
    InputError
        Too few other participants, or maps on different grids.
    """
    me = _participant(participant)
    used = sorted((k for k in maps if _participant(k) != me), key=str)
    others = {_participant(k) for k in used}
    if len(others) < int(min_participants):
        raise InputError(None, f"a leave-one-out group map for sub-{me} needs at least "
                         f"{min_participants} other participants, the cohort has {len(others)}.",
                         "Add participants or give a published group map (seed.kind: file).")
    shape = np.shape(maps[used[0]])
    acc = np.zeros(shape, np.float64)
    cnt = np.zeros(shape, np.float64)
    for k in used:
        m = np.asarray(maps[k], np.float64)
        if m.shape != shape:
            raise InputError(str(k), f"this map has shape {m.shape}, the others {shape}.",
                             "Use individual maps on one grid.")
        z = np.arctanh(np.clip(m, -0.999999, 0.999999))
        ok = np.isfinite(z)
        acc[ok] += z[ok]
        cnt[ok] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        group = np.tanh(acc / cnt)
    return np.where(cnt > 0, group, np.nan), used


def write_group_map(group: np.ndarray, affine: np.ndarray, out_path: str | Path,
                    participant: str, used: Sequence[Any],
                    sources: Mapping[Any, str | Path] | None = None,
                    space: str = "MNI152NLin2009cAsym") -> dict[str, Any]:
    """Write a leave-one-out group map (NIfTI) and its JSON sidecar.

    The sidecar names the participant the map is for, the participants (and sessions) it was
    built from, and the SHA-256 of each source map when ``sources`` is given.

    Returns
    -------
    dict
        The sidecar.
    """
    me = _participant(participant)
    if any(_participant(k) == me for k in used):  # never write a map that includes P
        raise InputError(out_path, f"the group map for sub-{me} would include sub-{me}.",
                         "Build it with leave_one_out_group_map.")
    hdr = nb.Nifti1Header()
    hdr.set_xyzt_units("mm")
    img = nb.Nifti1Image(np.asarray(group, np.float32), np.asarray(affine, float), hdr)
    img.set_qform(affine, 1)
    img.set_sform(affine, 4)
    write_nifti(img, out_path)
    side = {
        "Description": "Leave-one-out group seed map: mean of the other participants' "
                       "individual seed-correlation maps (Fisher z average, back to r). The "
                       "participant it is for never contributes to it.",
        "Space": space,
        "Units": "r (Pearson correlation, unitless)",
        "ForParticipant": f"sub-{me}",
        "ParticipantsUsed": sorted({f"sub-{_participant(k)}" for k in used}),
        "MapsUsed": [list(k) if isinstance(k, tuple) else str(k) for k in used],
        "NumberOfMaps": len(used),
    }
    if sources is not None:
        side["Sources"] = [{"key": list(k) if isinstance(k, tuple) else str(k),
                            "path": str(sources[k]), "sha256": sha256sum(sources[k])}
                           for k in used]
    write_json(str(out_path).replace(".nii.gz", ".json").replace(".nii", ".json"), side)
    return json.loads(json.dumps(side))
