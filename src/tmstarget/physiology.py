"""Physiology check of a seed map: does it look like the default-mode pattern it should?

The sgACC is functionally coupled with the default-mode network, so an sgACC seed map computed
from good data is expected to be positive in the posterior cingulate (PCC) and the medial
prefrontal cortex (mPFC) (e.g. Fox et al. 2012 Biol Psychiatry 72:595, whose sgACC map shows
the default-mode pattern anticorrelated with the DLPFC). This module *reports* how much of that
pattern a participant's map shows; it never changes a target, and no threshold here decides
anything: a real 5-minute task run may well show little of it, and the report says what was
seen.

ROIs are spheres around coordinates published for the two midline "core hubs" of the default
network by Andrews-Hanna et al. (2010) Neuron 65:550-562 (doi:10.1016/j.neuron.2010.02.005),
reported there in MNI space. They are used as given on the MNI152NLin2009cAsym grid (no
template-to-template conversion is applied; ``published_space`` records the space as
published, so a converter can be applied later); the MNI template flavours differ by a few mm
around the midline, less than the 6 mm sphere radius. The two centres, (-8, -56, 26) and
(-6, 52, -2), are the values widely quoted from that paper; they were not re-read from its
table when this module was written, so check them against it before citing them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nb
import numpy as np

from .regions import sphere_mask

__all__ = ["DMN_ROIS", "DMN_ROI_RADIUS_MM", "default_mode_correlations"]

#: Radius of each default-mode ROI sphere, mm.
DMN_ROI_RADIUS_MM = 6.0

_AH2010 = ("Andrews-Hanna JR, Reidler JS, Sepulcre J, Poulin R, Buckner RL (2010) "
           "Functional-anatomic fractionation of the brain's default network. Neuron "
           "65:550-562, doi:10.1016/j.neuron.2010.02.005 (core hubs of the default network)")

#: Default-mode ROIs: centre (RAS+ mm, used on the MNI152NLin2009cAsym grid), the space the
#: coordinate was published in, and the source.
DMN_ROIS: dict[str, dict[str, Any]] = {
    "PCC": {"description": "posterior cingulate cortex", "center_mm": (-8.0, -56.0, 26.0),
            "published_space": "MNI (as published; template flavour not stated)",
            "source": _AH2010},
    "aMPFC": {"description": "anterior medial prefrontal cortex",
              "center_mm": (-6.0, 52.0, -2.0),
              "published_space": "MNI (as published; template flavour not stated)",
              "source": _AH2010},
}


def _value_at(data: np.ndarray, valid: np.ndarray, affine: np.ndarray,
              xyz: Sequence[float]) -> dict[str, Any]:
    """r of the nearest in-map voxel centre; None when it is more than one voxel away.

    The same rule as the reference-site r of :func:`tmstarget.reproducibility.reference_sites`.
    """
    c = np.asarray(xyz, dtype=float)
    out: dict[str, Any] = {"x": float(c[0]), "y": float(c[1]), "z": float(c[2]), "r": None}
    ijk = np.argwhere(valid)
    if ijk.size == 0:
        out["note"] = "empty seed map"
        return out
    pts = nb.affines.apply_affine(affine, ijk)
    d = np.linalg.norm(pts - c, axis=1)
    i = int(np.argmin(d))
    vox = float(np.max(np.sqrt((affine[:3, :3] ** 2).sum(axis=0))))
    if d[i] > vox:
        out["note"] = "outside the seed map (no in-brain voxel within one voxel)"
        return out
    out["r"] = round(float(data[tuple(ijk[i])]), 4)
    out["voxel_distance_mm"] = round(float(d[i]), 2)
    return out


def default_mode_correlations(rmap_img: nb.Nifti1Image,
                              targets: Mapping[str, Sequence[float]] | None = None,
                              reference_sites: Mapping[str, Sequence[float]] | None = None,
                              rois: Mapping[str, Mapping[str, Any]] | None = None,
                              radius_mm: float = DMN_ROI_RADIUS_MM,
                              space: str = "MNI152NLin2009cAsym") -> dict[str, Any]:
    """The seed map's correlation in the default-mode ROIs, and r at the targets and sites.

    Parameters
    ----------
    rmap_img : nibabel image
        Seed-correlation map (r) in MNI152NLin2009cAsym; voxels outside the brain are 0 or
        non-finite.
    targets : mapping, optional
        Method -> (x, y, z) MNI mm of the chosen targets.
    reference_sites : mapping, optional
        Name -> (x, y, z) MNI mm of the standard sites (BA9, BA46, 5 cm, F3).
    rois : mapping, optional
        ROI definitions (default :data:`DMN_ROIS`).
    radius_mm : float

    Returns
    -------
    dict
        ``rois``: per ROI its centre, radius, voxels, ``mean_r``, ``median_r`` and
        ``percentile_in_brain`` (where the ROI's mean r falls among all brain voxels' r, 0-100),
        plus the published space and source; ``brain_mean_r`` / ``brain_median_r``;
        ``targets`` and ``reference_sites``: r of the nearest voxel; ``space``; ``expected``
        (what a default-mode pattern would show); ``note``.
    """
    rois = DMN_ROIS if rois is None else rois
    data = np.asarray(rmap_img.dataobj, dtype=np.float64)
    if data.ndim == 4:
        data = data[..., 0]
    aff = np.asarray(rmap_img.affine, dtype=float)
    valid = np.isfinite(data) & (data != 0)
    brain_r = data[valid]
    out: dict[str, Any] = {
        "space": space, "convention": "RAS+ mm", "radius_mm": float(radius_mm),
        "brain_mean_r": round(float(brain_r.mean()), 4) if brain_r.size else None,
        "brain_median_r": round(float(np.median(brain_r)), 4) if brain_r.size else None,
        "rois": {}, "targets": {}, "reference_sites": {},
        "expected": "an sgACC seed map from good data is positive in the PCC and the mPFC "
                    "(the default-mode pattern), well above the brain's typical r",
        "note": "descriptive only: nothing here changes a target or passes/fails a "
                "participant",
    }
    for name, roi in rois.items():
        sel = sphere_mask(data.shape, aff, roi["center_mm"], radius_mm) & valid
        vals = data[sel]
        entry: dict[str, Any] = {
            "description": roi.get("description"),
            "center_mm": [float(v) for v in roi["center_mm"]],
            "published_space": roi.get("published_space"), "source": roi.get("source"),
            "n_voxels": int(sel.sum()), "mean_r": None, "median_r": None,
            "percentile_in_brain": None}
        if vals.size:
            m = float(vals.mean())
            entry.update(mean_r=round(m, 4), median_r=round(float(np.median(vals)), 4),
                         percentile_in_brain=round(float(100.0 * np.mean(brain_r < m)), 1))
        out["rois"][name] = entry
    for key, pts in (("targets", targets), ("reference_sites", reference_sites)):
        for name, xyz in (pts or {}).items():
            out[key][name] = _value_at(data, valid, aff, xyz)
    return out
