"""Known-answer tests for the SAINT/SNT-style method (tmstarget.snt).

The oracles are written here from the published description (Spearman dissimilarity via
scipy.stats.spearmanr, medians, size-weighted net correlation, rank product), independently
of the module's block-wise implementation.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import squareform

from tmstarget.seedmap import CombinedData
from tmstarget.snt import (
    SNTParams,
    cluster_voxels,
    net_correlations,
    rank_clusters,
    snt_bootstrap,
    snt_clusters,
    snt_inputs,
    snt_split_half,
    snt_target,
    spearman_dissimilarity,
)
from tmstarget.target import TargetFinder

SHAPE = (24, 24, 20)
AFF = np.array([[3.0, 0, 0, -60.0], [0, 3.0, 0, 0.0], [0, 0, 3.0, 0.0], [0, 0, 0, 1]])


def _smooth(rng, n):
    return np.convolve(rng.standard_normal(n + 8), np.ones(4) / 4, "same")[4:n + 4]


def _world(ijk):
    return np.asarray(ijk, float) @ AFF[:3, :3].T + AFF[:3, 3]


def _scenario(rng, n_t=300):
    """A DLPFC box of parcels and an sgACC box, on a 3 mm grid.

    Parcels (each voxel = parcel signal + small noise, so a parcel is one cluster):
      A  the focus: 6x6x3 = 108 voxels, compact, signal -0.55 s + 0.835 u_A (anticorrelated)
      B  6x6x3 = 108 voxels, positively correlated with s
      C  a 12x2x3 bar (72 voxels, spread out: less concentrated), weakly anticorrelated
      D  3x3x3 = 27 voxels (below the 50-voxel minimum), more anticorrelated than A (-0.75 s)
    """
    region = np.zeros(SHAPE, bool)
    parcels = {"A": (slice(2, 8), slice(2, 8), slice(2, 5)),
               "B": (slice(10, 16), slice(2, 8), slice(2, 5)),
               "C": (slice(2, 14), slice(12, 14), slice(8, 11)),
               "D": (slice(18, 21), slice(18, 21), slice(2, 5))}
    for sl in parcels.values():
        region[sl] = True
    sgacc = np.zeros(SHAPE, bool)
    sgacc[16:20, 10:14, 14:18] = True
    s = _smooth(rng, n_t)
    sig = {"A": -0.55 * s + 0.835 * _smooth(rng, n_t), "B": 0.8 * s + 0.6 * _smooth(rng, n_t),
           "C": -0.25 * s + 0.95 * _smooth(rng, n_t), "D": -0.75 * s + 0.66 * _smooth(rng, n_t)}
    vol = np.zeros((n_t, *SHAPE))
    for k, sl in parcels.items():
        vol[(slice(None), *sl)] = sig[k][:, None, None, None]
    vol[:, sgacc] = s[:, None]
    mask = region | sgacc
    vol += 0.12 * rng.standard_normal(vol.shape) * mask[None]
    vox = np.argwhere(mask).astype(np.int32)
    data = vol[(slice(None), *vox.T)].astype(np.float32)
    comb = CombinedData(data, vox, AFF, SHAPE, [n_t])
    centres = {k: _world(np.argwhere(_box(sl)).mean(0)) for k, sl in parcels.items()}
    return comb, region, sgacc.astype(float), centres


def _box(sl):
    m = np.zeros(SHAPE, bool)
    m[sl] = True
    return m


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_spearman_dissimilarity_matches_scipy(target_rng):
    x = target_rng.standard_normal((40, 13))
    x[:, 3] = x[:, 2] ** 3  # monotone transform: Spearman 1, distance 0
    x[:, 7] = 1.0  # constant: correlates 0 with everything
    d = spearman_dissimilarity(x, block=4)
    rho = stats.spearmanr(x).statistic
    rho = np.nan_to_num(rho, nan=0.0)
    np.fill_diagonal(rho, 1.0)
    np.testing.assert_allclose(d, squareform(1 - rho, checks=False), atol=1e-6)
    assert d[np.ravel_multi_index((2, 3), (13, 13)) - 3 - 3] == pytest.approx(0.0, abs=1e-6)


def test_clusters_recover_planted_groups(target_rng):
    n_t = 200
    groups = np.repeat([0, 1, 2], [15, 20, 10])
    lat = np.stack([_smooth(target_rng, n_t) for _ in range(3)], 1)
    x = lat[:, groups] + 0.1 * target_rng.standard_normal((n_t, groups.size))
    perm = target_rng.permutation(groups.size)
    lab = cluster_voxels(x[:, perm], SNTParams())
    assert len(set(lab)) == 3
    for g in range(3):
        assert len(set(lab[groups[perm] == g])) == 1


def test_rank_product_by_hand():
    p = SNTParams(min_cluster_voxels=50)
    sizes = np.array([200, 100, 60, 40, 300])
    conc = np.array([1.0, 3.0, 2.0, 9.0, 0.5])
    net = np.array([-0.1, -0.3, -0.2, -0.9, 0.2])
    ranking, score, elig = rank_clusters(sizes, conc, net, p)
    # eligible: 0, 1, 2 (3 too small, 4 positive). ranks (size, conc, corr):
    # 0: (1, 3, 3) = 9   1: (2, 1, 1) = 2   2: (3, 2, 2) = 12
    assert elig.tolist() == [True, True, True, False, False]
    assert score[:3].tolist() == pytest.approx([9.0, 2.0, 12.0])
    assert ranking == [1, 0, 2]
    # weights are exponents: size weight 3 -> 0: 1*3*3 = 9, 1: 8*1*1 = 8, 2: 27*4 = 108
    r2, s2, _ = rank_clusters(sizes, conc, net, SNTParams(size_weight=3.0))
    assert s2[:3].tolist() == pytest.approx([9.0, 8.0, 108.0]) and r2 == [1, 0, 2]
    r3, _, _ = rank_clusters(sizes, conc, net, SNTParams(size_weight=0, concentration_weight=0))
    assert r3 == [1, 2, 0]  # net correlation alone


def test_snt_ranks_the_planted_focus_first(target_rng):
    comb, region, sg_w, centres = _scenario(target_rng)
    xr, xyzr, xs, xyzs = snt_inputs(comb, region, sg_w)
    res = snt_clusters(xr, xyzr, xs, xyzs, SNTParams())
    sizes = sorted(c.n_voxels for c in res.region_clusters)
    assert sizes == [27, 72, 108, 108], sizes  # the four parcels
    assert len(res.sgacc_clusters) == 1
    top = res.region_clusters[res.ranking[0]]
    np.testing.assert_allclose(top.center_mm, centres["A"], atol=1e-9)
    # D is more anticorrelated but below the minimum size; B is positive: both ineligible
    by_size = {c.n_voxels: i for i, c in enumerate(res.region_clusters)}
    assert not res.eligible[by_size[27]]
    assert len(res.ranking) == 2  # A and C
    # independent oracle of the net correlation: Spearman of medians, one sgACC cluster
    med_s = np.median(xs, axis=1)
    for i, c in enumerate(res.region_clusters):
        med = np.median(xr[:, c.members], axis=1)
        assert res.net_correlation[i] == pytest.approx(stats.spearmanr(med, med_s).statistic,
                                                       abs=1e-9)
    # as a Target on the grid, with backups
    finder = TargetFinder(region, AFF)
    rmap = np.where(region, -0.2, 0.0)
    t = snt_target(res, finder, rmap)
    assert t.ok and t.method == "snt" and not t.snapped
    np.testing.assert_allclose([t.x, t.y, t.z], centres["A"], atol=1e-9)
    assert t.candidates[0]["distance_to_primary_mm"] == 0.0 and len(t.candidates) == 2
    assert t.candidates[1]["distance_to_primary_mm"] == pytest.approx(
        np.linalg.norm(centres["C"] - centres["A"]))
    assert t.candidates[1]["n_voxels"] == 72


def test_snt_properties_voxel_order_and_monotone_scaling(target_rng):
    comb, region, sg_w, _ = _scenario(target_rng, n_t=200)
    xr, xyzr, xs, xyzs = snt_inputs(comb, region, sg_w)
    base = snt_clusters(xr, xyzr, xs, xyzs).target_mm
    perm = np.random.default_rng(3).permutation(xr.shape[1])
    scale = np.random.default_rng(4).uniform(0.5, 3, xr.shape[1])
    other = snt_clusters(np.exp(xr[:, perm]) * scale[perm], xyzr[perm], xs * 7 + 3, xyzs)
    np.testing.assert_allclose(other.target_mm, base, atol=1e-9)


def test_no_eligible_cluster_is_not_a_target(target_rng):
    comb, region, sg_w, _ = _scenario(target_rng, n_t=150)
    xr, xyzr, xs, xyzs = snt_inputs(comb, region, sg_w)
    res = snt_clusters(xr, xyzr, xs, xyzs, SNTParams(min_cluster_voxels=500))
    assert res.ranking == [] and res.target_mm is None
    t = snt_target(res, TargetFinder(region, AFF))
    assert t.status == "no_eligible_cluster" and not t.ok and "NO TARGET" in t.description


def test_snt_split_half_and_bootstrap(target_rng):
    comb, region, sg_w, centres = _scenario(target_rng, n_t=400)
    xr, xyzr, xs, xyzs = snt_inputs(comb, region, sg_w)
    a, b = np.arange(0, 200), np.arange(200, 400)
    sh = snt_split_half(xr, xyzr, xs, xyzs, a, b)
    assert sh["distance_mm"] is not None and sh["distance_mm"] < 1e-6
    np.testing.assert_allclose(sh["target_a_mm"], centres["A"], atol=1e-9)
    full = snt_clusters(xr, xyzr, xs, xyzs)
    # identity resample = the full data: same choice
    ident = snt_bootstrap(full, np.ones((1, 400), int))
    assert ident["chosen"][0] == full.ranking[0]
    from tmstarget.reproducibility import circular_block_bootstrap

    bs = snt_bootstrap(full, circular_block_bootstrap(400, 20, 30, seed=1))
    assert bs["targets_mm"].shape == (30, 3)
    assert bs["radius95_mm"] == pytest.approx(0.0, abs=1e-9)
    assert bs["fraction_within_5mm"] == 1.0


def test_net_correlation_is_size_weighted_mean(target_rng):
    a = target_rng.standard_normal((50, 2))
    b = target_rng.standard_normal((50, 3))
    sz = np.array([10, 1, 5])
    got = net_correlations(a, b, sz)
    rho = np.array([[stats.spearmanr(a[:, i], b[:, k]).statistic for k in range(3)]
                    for i in range(2)])
    np.testing.assert_allclose(got, rho @ sz / sz.sum(), atol=1e-12)


def test_params_from_config_rejects_unknown_keys():
    assert SNTParams.from_config({}) == SNTParams()
    with pytest.raises(Exception, match="unknown target.snt"):
        SNTParams.from_config({"distance": 0.4})
    with pytest.raises(Exception, match="linkage"):
        SNTParams(linkage="ward")
