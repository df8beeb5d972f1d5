"""Seed-map targeting (tmstarget.groupmap): signed weighted seed, leave-one-out group maps."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from tmstarget.errors import InputError
from tmstarget.groupmap import leave_one_out_group_map, seedmap_timeseries, write_group_map
from tmstarget.seedmap import correlation_map


def test_signed_seed_map_oracle_and_sign(target_rng):
    t, v = 120, 30
    x = target_rng.standard_normal((t, v))
    w = target_rng.uniform(-1, 1, v)
    w[[3, 7]] = 0.0
    w[5] = np.nan
    ts, info = seedmap_timeseries(x, w)
    ww = np.nan_to_num(w)
    oracle = sum(ww[j] * x[:, j] for j in range(v)) / np.abs(ww).sum()
    np.testing.assert_allclose(ts, oracle, atol=1e-12)
    assert info["n_voxels"] == v - 3 and info["n_negative"] + info["n_positive"] == v - 3
    # a negatively weighted voxel enters sign-flipped: a map -1 on voxel 0 only gives -x0
    w1 = np.zeros(v)
    w1[0] = -1.0
    np.testing.assert_allclose(seedmap_timeseries(x, w1)[0], -x[:, 0])


def test_signed_seed_map_recovers_the_anticorrelated_target(target_rng):
    """Source s in 'sgACC' voxels (+ weights) and -s in a 'DLPFC' focus (- weights elsewhere):
    the signed seed carries s, and the focus voxels are the most anticorrelated."""
    t, v = 300, 200
    s = target_rng.standard_normal(t)
    x = target_rng.standard_normal((t, v))
    x[:, :20] += 1.0 * s[:, None]  # sgACC-like
    x[:, 100:110] -= 0.8 * s[:, None]  # focus (inside the search region 100:150)
    x[:, 150:170] -= 0.8 * s[:, None]  # group-anticorrelated voxels outside the region
    w = np.zeros(v)
    w[:20] = 0.6
    w[150:170] = -0.4
    region = np.zeros(v, bool)
    region[100:150] = True
    ts, _ = seedmap_timeseries(x, w, exclude=region)
    assert abs(np.corrcoef(ts, s)[0, 1]) > 0.9 and np.corrcoef(ts, s)[0, 1] > 0
    r = correlation_map(x, ts)
    assert set(np.argsort(r[region])[:10] + 100) == set(range(100, 110))
    # excluding the region: weights there are ignored whatever they are
    w2 = w.copy()
    w2[region] = 5.0
    np.testing.assert_allclose(seedmap_timeseries(x, w2, exclude=region)[0], ts)
    with pytest.raises(InputError, match="no non-zero value"):
        seedmap_timeseries(x, np.where(region, 1.0, 0.0), exclude=region)


def _cohort(rng, n=5, shape=(4, 5, 6)):
    maps = {}
    for i in range(1, n + 1):
        maps[(f"{i:02d}", None)] = np.tanh(rng.normal(0, 0.3, shape))
    maps[("03", "2")] = np.tanh(rng.normal(0, 0.3, shape))  # a second session of sub-03
    return maps


def test_leave_one_out_excludes_the_participant_provably(target_rng):
    maps = _cohort(target_rng)
    g, used = leave_one_out_group_map(maps, "sub-03")
    assert all(k[0] != "03" for k in used) and len(used) == 4
    # oracle: Fisher-z mean of the four others
    z = np.mean([np.arctanh(maps[(f"{i:02d}", None)]) for i in (1, 2, 4, 5)], axis=0)
    np.testing.assert_allclose(g, np.tanh(z), atol=1e-12)
    # property: whatever sub-03's maps hold (any session), its group map is unchanged
    for junk in (np.full((4, 5, 6), 0.99), np.full((4, 5, 6), np.nan),
                 target_rng.uniform(-1, 1, (4, 5, 6))):
        m2 = dict(maps)
        m2[("03", None)] = junk
        m2[("03", "2")] = -junk
        g2, used2 = leave_one_out_group_map(m2, "03")
        np.testing.assert_array_equal(g2, g)
        assert used2 == used
    # and every other participant's map does change it
    m3 = dict(maps)
    m3[("01", None)] = maps[("01", None)] * 0.5
    assert not np.allclose(leave_one_out_group_map(m3, "03")[0], g)


def test_leave_one_out_needs_others_and_one_grid(target_rng):
    maps = {"01": np.zeros((2, 2, 2)), "02": np.zeros((2, 2, 2))}
    with pytest.raises(InputError, match="at least 2 other"):
        leave_one_out_group_map(maps, "01")
    maps["03"] = np.zeros((3, 2, 2))
    with pytest.raises(InputError, match="shape"):
        leave_one_out_group_map(maps, "01")


def test_group_map_derivative_lists_the_participants_used(tmp_path, target_rng):
    maps = _cohort(target_rng)
    srcs = {}
    for k, m in maps.items():
        p = tmp_path / f"sub-{k[0]}_{k[1] or 'x'}_map.nii.gz"
        nb.save(nb.Nifti1Image(m.astype(np.float32), np.eye(4)), p)
        srcs[k] = p
    g, used = leave_one_out_group_map(maps, "02")
    out = tmp_path / "sub-02_space-MNI152NLin2009cAsym_desc-looGroup_boldmap.nii.gz"
    side = write_group_map(g, np.eye(4), out, "02", used, srcs)
    saved = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
    assert saved == side
    assert saved["ForParticipant"] == "sub-02"
    assert saved["ParticipantsUsed"] == ["sub-01", "sub-03", "sub-04", "sub-05"]
    assert "sub-02" not in json.dumps(saved["MapsUsed"]) and saved["NumberOfMaps"] == 5
    assert all(len(s["sha256"]) == 64 for s in saved["Sources"])
    np.testing.assert_allclose(np.asarray(nb.load(out).dataobj), g, atol=1e-6)
    with pytest.raises(InputError, match="would include"):
        write_group_map(g, np.eye(4), tmp_path / "bad.nii.gz", "02", [("02", None)])
    assert not (tmp_path / "bad.nii.gz").exists()
