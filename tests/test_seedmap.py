"""Known-answer tests for seed time series and correlation maps (tmstarget.seedmap)."""

from __future__ import annotations

from types import SimpleNamespace

import nibabel as nb
import numpy as np
import pytest

from tmstarget.errors import InputError
from tmstarget.regions import SGACC_CENTER_MM, sphere_mask, voxel_centers_mm
from tmstarget.seedmap import (combine_runs, correlation_map, seed_timeseries, seed_weights,
                               to_volume)

SHAPE = (20, 24, 20)
AFF = np.array([[4.0, 0, 0, -40], [0, 4.0, 0, -50], [0, 0, 4.0, -40], [0, 0, 0, 1]])


def _run(rng, mask, n_t=50):
    vox = np.argwhere(mask).astype(np.int32)
    return SimpleNamespace(data=rng.standard_normal((n_t, len(vox))).astype(np.float32),
                           voxels=vox, affine=AFF, shape=SHAPE, qc={}, tr=2.0)


def test_sphere_seed_timeseries_is_the_hand_computed_mean(target_rng):
    mask = np.ones(SHAPE, bool)
    comb = combine_runs([_run(target_rng, mask)])
    w, desc = seed_weights({"kind": "sphere", "center_mm": SGACC_CENTER_MM, "radius_mm": 10,
                            "space": "MNI152NLin2009cAsym"}, SHAPE, AFF)
    ts, n = seed_timeseries(comb, w)
    # by hand: voxels whose centre is within 10 mm of (6, 16, -10)
    xyz = voxel_centers_mm(SHAPE, AFF)
    inside = np.linalg.norm(xyz - np.array(SGACC_CENTER_MM), axis=-1) <= 10
    vol = np.zeros((comb.data.shape[0], *SHAPE), np.float32)
    vol[:, comb.voxels[:, 0], comb.voxels[:, 1], comb.voxels[:, 2]] = comb.data
    expected = vol[:, inside].mean(axis=1)
    assert n == inside.sum() > 10
    np.testing.assert_allclose(ts, expected, rtol=1e-5, atol=1e-6)
    assert "radius 10 mm" in desc


def test_weighted_seed_map_file(tmp_path, target_rng):
    mask = np.ones(SHAPE, bool)
    comb = combine_runs([_run(target_rng, mask)])
    wmap = np.zeros(SHAPE, np.float32)
    wmap[5, 6, 7], wmap[8, 9, 10] = 3.0, -1.0
    f = tmp_path / "circuit.nii.gz"
    nb.save(nb.Nifti1Image(wmap, AFF), f)
    w, desc = seed_weights({"kind": "file", "file": str(f), "space": "MNI152NLin2009cAsym"},
                           SHAPE, AFF)
    ts, n = seed_timeseries(comb, w)
    vol = to_volume(np.zeros(comb.data.shape[1]), comb)  # noqa: F841 (grid sanity)
    i1 = np.flatnonzero((comb.voxels == [5, 6, 7]).all(1))[0]
    i2 = np.flatnonzero((comb.voxels == [8, 9, 10]).all(1))[0]
    expected = (3.0 * comb.data[:, i1] - 1.0 * comb.data[:, i2]) / 4.0
    np.testing.assert_allclose(ts, expected, rtol=1e-5)
    assert n == 2 and "weighted" in desc


def test_correlation_map_equals_numpy(target_rng):
    x = target_rng.standard_normal((80, 30))
    t = target_rng.standard_normal(80)
    r = correlation_map(x, t)
    ref = [np.corrcoef(t, x[:, j])[0, 1] for j in range(30)]
    np.testing.assert_allclose(r, ref, atol=1e-10)


def test_constant_voxel_gets_zero_not_nan(target_rng):
    x = target_rng.standard_normal((40, 5))
    x[:, 2] = 3.0
    r = correlation_map(x, target_rng.standard_normal(40))
    assert np.isfinite(r).all() and r[2] == 0


def test_combine_runs_uses_common_voxels_in_order(target_rng):
    m1 = np.zeros(SHAPE, bool)
    m1[2:10, 2:10, 2:10] = True
    m2 = np.zeros(SHAPE, bool)
    m2[4:12, 4:12, 4:12] = True
    r1, r2 = _run(target_rng, m1, 30), _run(target_rng, m2, 20)
    comb = combine_runs([r1, r2])
    assert comb.data.shape == (50, (m1 & m2).sum())
    assert comb.run_lengths == [30, 20]
    # the value of a voxel must travel with it
    v = np.array([5, 6, 7])
    j = np.flatnonzero((comb.voxels == v).all(1))[0]
    j1 = np.flatnonzero((r1.voxels == v).all(1))[0]
    j2 = np.flatnonzero((r2.voxels == v).all(1))[0]
    np.testing.assert_array_equal(comb.data[:30, j], r1.data[:, j1])
    np.testing.assert_array_equal(comb.data[30:, j], r2.data[:, j2])


def test_seed_outside_mask_is_an_error(target_rng):
    mask = np.zeros(SHAPE, bool)
    mask[:3, :3, :3] = True
    comb = combine_runs([_run(target_rng, mask)])
    w = sphere_mask(SHAPE, AFF, SGACC_CENTER_MM, 10).astype(float)
    with pytest.raises(InputError, match="no voxel inside the brain mask"):
        seed_timeseries(comb, w, "sgACC sphere")


def test_runs_on_different_grids_are_an_error(target_rng):
    mask = np.ones(SHAPE, bool)
    r1 = _run(target_rng, mask)
    r2 = _run(target_rng, mask)
    r2.affine = AFF.copy()
    r2.affine[0, 3] += 2
    with pytest.raises(InputError, match="different voxel grid"):
        combine_runs([r1, r2], ["a_bold.nii.gz", "b_bold.nii.gz"])


def test_runs_with_different_repetition_times_are_an_error(target_rng):
    mask = np.ones(SHAPE, bool)
    r1, r2 = _run(target_rng, mask), _run(target_rng, mask)
    r2.tr = 2.5
    import pytest

    from tmstarget.errors import InputError

    with pytest.raises(InputError, match=r"repetition time \(2.5 s\) differs from that of "
                                         r"run-1.nii.gz \(2 s\)") as ei:
        combine_runs([r1, r2], ["run-1.nii.gz", "run-2.nii.gz"])
    assert ei.value.path == "run-2.nii.gz"
