"""Default-mode correlations of a seed map (tmstarget.physiology): known maps, any storage."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from conftest import storage_affine

from tmstarget.physiology import DMN_ROIS, default_mode_correlations


def _map(orient: str):
    """A 3 mm map: r = 0.5 within 6 mm of the PCC centre, 0.3 around aMPFC, a gradient in x
    elsewhere (so values differ voxel to voxel), zero outside a box 'brain'."""
    shape = (50, 60, 45)
    base = np.diag([3.0, 3.0, 3.0, 1.0])
    base[:3, 3] = (-75.0, -100.0, -60.0)
    aff = storage_affine(orient, base, shape)
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = nib.affines.apply_affine(aff, ijk)
    r = 0.001 * xyz[:, 0]
    for name, val in (("PCC", 0.5), ("aMPFC", 0.3)):
        c = np.asarray(DMN_ROIS[name]["center_mm"])
        r[np.linalg.norm(xyz - c, axis=1) <= 6.0] = val
    r[np.abs(xyz[:, 0]) > 60] = 0.0  # outside the 'brain'
    return nib.Nifti1Image(r.reshape(shape).astype(np.float32), aff), xyz, r


def test_roi_means_match_a_plain_loop():
    img, xyz, r = _map("RAS")
    out = default_mode_correlations(img, targets={"classic": (-40.0, 40.0, 30.0)},
                                    reference_sites={"F3": (-37.0, 26.0, 49.0),
                                                     "far": (70.0, 0.0, 0.0)})
    brain = r != 0
    for name, val in (("PCC", 0.5), ("aMPFC", 0.3)):
        roi = out["rois"][name]
        c = np.asarray(DMN_ROIS[name]["center_mm"])
        sel = [i for i in range(len(r)) if brain[i] and np.linalg.norm(xyz[i] - c) <= 6.0]
        assert roi["n_voxels"] == len(sel) > 20
        assert abs(roi["mean_r"] - val) < 1e-4
        expected_pct = 100.0 * np.mean(r[brain] < r[sel].mean())
        assert abs(roi["percentile_in_brain"] - expected_pct) < 0.1
        assert roi["published_space"] and "Andrews-Hanna" in roi["source"]
    # the nearest voxel's r at a target: x = -39 mm (the 3 mm grid's nearest centre)
    assert abs(out["targets"]["classic"]["r"] - 0.001 * -39.0) < 1e-5
    assert out["reference_sites"]["far"]["r"] is None  # outside the brain
    assert abs(out["brain_mean_r"] - float(r[brain].mean())) < 1e-4
    assert out["space"] == "MNI152NLin2009cAsym"


def test_storage_order_does_not_matter():
    ref = default_mode_correlations(_map("RAS")[0], targets={"t": (-40.0, 40.0, 30.0)})
    for orient in ("LAS", "LPS", "oblique"):
        out = default_mode_correlations(_map(orient)[0], targets={"t": (-40.0, 40.0, 30.0)})
        for name in DMN_ROIS:
            assert abs(out["rois"][name]["mean_r"] - ref["rois"][name]["mean_r"]) < 1e-3, orient
        if orient != "oblique":  # same grid points: same nearest voxel
            assert out["targets"]["t"]["r"] == ref["targets"]["t"]["r"]
