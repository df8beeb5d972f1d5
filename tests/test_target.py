"""Known-answer tests for search regions and target selection (tmstarget.target)."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from tmstarget.errors import InputError
from tmstarget.regions import default_search_region, sphere_mask, voxel_centers_mm
from tmstarget.target import find_targets, load_search_region

# A 4 mm grid over the MNI152NLin2009cAsym box (same origin corner as fMRIPrep's res-2 grid).
SHAPE = (49, 58, 49)
RAS = np.array([[4.0, 0, 0, -96.5], [0, 4.0, 0, -132.5], [0, 0, 4.0, -78.5], [0, 0, 0, 1]])
TRUTH = (-40.5, 35.5, 33.5)  # a voxel centre inside the left DLPFC search region


def _brain(shape, affine):
    """Ellipsoidal 'brain' in world mm (independent of storage orientation)."""
    xyz = voxel_centers_mm(shape, affine)
    return ((xyz[..., 0] / 70) ** 2 + ((xyz[..., 1] + 18) / 95) ** 2
            + ((xyz[..., 2] - 10) / 75) ** 2) <= 1


def _planted_map(shape, affine, rng, center=TRUTH, fwhm=12.0, amp=0.6, noise=0.03):
    xyz = voxel_centers_mm(shape, affine)
    sigma = fwhm / 2.3548
    d2 = ((xyz - np.asarray(center)) ** 2).sum(-1)
    return -amp * np.exp(-d2 / (2 * sigma**2)) + noise * rng.standard_normal(shape)


def _flip(affine, shape, axes):
    """Storage flipped along ``axes``: same world points, different array order."""
    aff = affine.copy()
    for ax in axes:
        aff[:3, 3] = aff[:3, 3] + aff[:3, ax] * (shape[ax] - 1)
        aff[:3, ax] = -aff[:3, ax]
    return aff


def _orientations():
    rot = np.eye(4)
    t = np.deg2rad(10)
    rot[:3, :3] = [[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]
    return {
        "RAS": RAS,
        "LAS": _flip(RAS, SHAPE, [0]),
        "LPS": _flip(RAS, SHAPE, [0, 1]),
        "oblique": rot @ RAS,
    }


@pytest.mark.parametrize("orient", ["RAS", "LAS", "LPS", "oblique"])
def test_planted_focus_found_in_every_storage_orientation(orient, target_rng):
    affine = _orientations()[orient]
    assert "".join(nb.aff2axcodes(affine)) == {"RAS": "RAS", "LAS": "LAS", "LPS": "LPS",
                                               "oblique": "RAS"}[orient]
    brain = _brain(SHAPE, affine)
    region = default_search_region(brain, affine)
    rmap = _planted_map(SHAPE, affine, target_rng)
    t = find_targets(rmap, region, affine, methods=["classic", "cluster", "weighted"])
    for name, tg in t.items():
        d = np.linalg.norm(np.array([tg.x, tg.y, tg.z]) - TRUTH)
        assert d <= 4.0, (orient, name, d, (tg.x, tg.y, tg.z))
        assert tg.x < 0, "left-DLPFC target must have x < 0 (RAS+)"
        assert tg.r < -0.3
    assert t["classic"].n_voxels == 1


def test_same_world_target_whatever_the_storage(target_rng):
    """The same world map stored RAS and LAS gives the identical world target."""
    seed = target_rng.integers(1 << 30)
    res = {}
    for orient in ("RAS", "LAS"):
        affine = _orientations()[orient]
        rng = np.random.default_rng(seed)
        xyz = voxel_centers_mm(SHAPE, affine)
        # noise as a function of world position, so both storages hold the same map
        noise = 0.02 * np.sin(xyz[..., 0] * 1.3 + xyz[..., 1] * 0.7) * np.cos(xyz[..., 2] * 0.9)
        rmap = _planted_map(SHAPE, affine, rng, noise=0.0) + noise
        brain = _brain(SHAPE, affine)
        t = find_targets(rmap, default_search_region(brain, affine), affine,
                         methods=["classic", "cluster", "weighted"])
        res[orient] = {k: (v.x, v.y, v.z) for k, v in t.items()}
    for k in res["RAS"]:
        np.testing.assert_allclose(res["RAS"][k], res["LAS"][k], atol=1e-6)


def test_cluster_percent_is_honoured(target_rng):
    brain = _brain(SHAPE, RAS)
    region = default_search_region(brain, RAS)
    n = int(region.sum())
    # flat map: every region voxel equally plausible except the planted focus
    rmap = _planted_map(SHAPE, RAS, target_rng, noise=0.0)
    for pct in (1, 5, 25):
        t = find_targets(rmap, region, RAS, methods=["cluster"], cluster_percent=pct)["cluster"]
        assert t.n_voxels <= int(np.ceil(n * pct / 100))
        assert t.n_voxels >= 1
    small = find_targets(rmap, region, RAS, methods=["cluster"], cluster_percent=1)["cluster"]
    big = find_targets(rmap, region, RAS, methods=["cluster"], cluster_percent=25)["cluster"]
    assert big.n_voxels > small.n_voxels


def test_snapped_centroid_is_reported():
    """A ring-shaped cluster has its centroid in a hole: it must be snapped, and say so."""
    shape = (21, 21, 21)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = -20
    region = np.ones(shape, bool)
    xyz = voxel_centers_mm(shape, aff)
    rho = np.hypot(xyz[..., 0], xyz[..., 1])
    ring = (np.abs(rho - 10) <= 1.5) & (np.abs(xyz[..., 2]) <= 1)
    region &= ~(rho < 6)  # the hole of the ring is not in the region
    rmap = np.where(ring, -0.8, 0.1)
    pct = 100.0 * (ring & region).sum() / region.sum()
    t = find_targets(rmap, region, aff, methods=["cluster"], cluster_percent=pct)["cluster"]
    assert t.n_voxels == (ring & region).sum()
    assert t.snapped
    assert t.snap_distance_mm > 0
    assert np.allclose(t.centroid_mm, (0, 0, 0), atol=1.0)
    assert region[t.voxel]


def test_classic_is_the_minimum(target_rng):
    brain = _brain(SHAPE, RAS)
    region = default_search_region(brain, RAS)
    rmap = target_rng.uniform(-0.5, 0.5, SHAPE)
    t = find_targets(rmap, region, RAS, methods=["classic"])["classic"]
    assert t.r == pytest.approx(rmap[region].min())


def test_user_search_mask_outside_brain_names_the_file(tmp_path):
    brain = _brain(SHAPE, RAS)
    outside = sphere_mask(SHAPE, RAS, (0, 0, 95), 6) & ~brain
    assert outside.any()
    f = tmp_path / "my_dlpfc_mask.nii.gz"
    nb.save(nb.Nifti1Image(outside.astype(np.uint8), RAS), f)
    with pytest.raises(InputError, match=r"my_dlpfc_mask\.nii\.gz.*outside the brain"):
        load_search_region({"kind": "file", "file": str(f), "space": "MNI152NLin2009cAsym"},
                           brain, RAS)


def test_user_search_mask_empty_and_missing(tmp_path):
    brain = _brain(SHAPE, RAS)
    f = tmp_path / "empty_mask.nii.gz"
    nb.save(nb.Nifti1Image(np.zeros(SHAPE, np.uint8), RAS), f)
    with pytest.raises(InputError, match=r"empty_mask\.nii\.gz.*empty"):
        load_search_region({"kind": "file", "file": str(f)}, brain, RAS)
    with pytest.raises(InputError, match=r"nope\.nii\.gz.*does not exist"):
        load_search_region({"kind": "file", "file": str(tmp_path / "nope.nii.gz")}, brain, RAS)


def test_user_search_mask_on_another_grid_is_resampled(tmp_path):
    brain = _brain(SHAPE, RAS)
    aff2 = np.diag([2.0, 2.0, 2.0, 1.0])
    aff2[:3, 3] = (-96.5, -132.5, -78.5)
    m = sphere_mask((97, 115, 97), aff2, TRUTH, 12)
    f = tmp_path / "fine_mask.nii.gz"
    nb.save(nb.Nifti1Image(m.astype(np.uint8), aff2), f)
    region, desc = load_search_region({"kind": "file", "file": str(f)}, brain, RAS)
    assert "fine_mask.nii.gz" in desc
    cen = voxel_centers_mm(SHAPE, RAS)[region].mean(0)
    assert np.linalg.norm(cen - TRUTH) < 2.0


def test_default_region_is_left_and_in_brain():
    brain = _brain(SHAPE, RAS)
    region = default_search_region(brain, RAS)
    xyz = voxel_centers_mm(SHAPE, RAS)
    assert region.any()
    assert (xyz[region][:, 0] < 0).all()
    assert not (region & ~brain).any()


# ------------------------------------------------------------------ issue 18 / issue 15 items
def _mni2mm():
    from tmstarget.io import data_file

    m = nb.load(data_file("tpl-MNI152NLin2009cAsym_res-02_desc-brain_mask.nii.gz"))
    return np.asarray(m.dataobj) > 0, m.affine


FOCUS = np.array([-38.5, 44.5, 27.5])


def _broad_weak_focal_strong():
    """Issue 18's case on the real 2 mm grid: a focal strong focus (r = -0.67 at its centre,
    FWHM 8 mm) and, 21 mm away, a broad weak region (r = -0.23 plateau, radius 11.5 mm) that
    is the *larger* cluster among the most negative 10 %."""
    brain, aff = _mni2mm()
    region = default_search_region(brain, aff)
    xyz = voxel_centers_mm(brain.shape, aff)
    broad = np.array([-40.5, 33.5, 45.5])
    rng = np.random.default_rng(1)
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.standard_normal(brain.shape), 1.0)
    noise /= noise[region].std()
    sig = 8 / 2.3548
    focal = np.exp(-((xyz - FOCUS) ** 2).sum(-1) / (2 * sig**2))
    plateau = 1 / (1 + np.exp((np.linalg.norm(xyz - broad, axis=-1) - 11.5) / 0.7))
    rmap = -0.67 * focal - 0.23 * plateau + 0.04 * noise
    return rmap, region, aff, broad


def test_default_cluster_rule_finds_the_focal_strong_cluster():
    rmap, region, aff, broad = _broad_weak_focal_strong()
    t = find_targets(rmap, region, aff, methods=["cluster", "cluster_largest", "classic"])
    pos = {k: np.array([v.x, v.y, v.z]) for k, v in t.items()}
    assert np.linalg.norm(pos["classic"] - FOCUS) <= 2.0
    # the old rule (kept as cluster_largest) takes the broad weak region: this is the hard case
    assert np.linalg.norm(pos["cluster_largest"] - FOCUS) > 15.0
    assert np.linalg.norm(pos["cluster_largest"] - broad) < 8.0
    assert t["cluster_largest"].n_voxels > t["cluster"].n_voxels
    # the default rule takes the focus
    assert np.linalg.norm(pos["cluster"] - FOCUS) <= 3.0, pos["cluster"]
    # independent oracle: the two clusters of the top 10 % (scipy labelling here), and their
    # plain sum |r| -- which would ALSO pick the broad region, hence TFCE, not sum |r|
    from scipy import ndimage

    vals = np.where(region, rmap, np.inf)
    k = int(np.ceil(region.sum() * 0.10))
    keep = np.zeros(rmap.shape, bool)
    keep.flat[np.argsort(vals, axis=None)[:k]] = True
    keep &= rmap < 0
    lab, _ = ndimage.label(keep, np.ones((3, 3, 3)))
    xyz = voxel_centers_mm(rmap.shape, aff)
    lf = lab[tuple(np.rint(np.linalg.solve(aff[:3, :3], FOCUS - aff[:3, 3])).astype(int))]
    lb = np.bincount(lab[lab > 0]).argmax()
    assert lf != lb and lf > 0
    assert -rmap[lab == lb].sum() > -rmap[lab == lf].sum()
    sel = lab == lf
    w = -rmap[sel]
    np.testing.assert_allclose(t["cluster"].centroid_mm, (xyz[sel] * w[:, None]).sum(0) / w.sum(),
                               atol=1e-9)
    # backups: rank 1 is the target, rank 2 the broad region ~20 mm away
    c = t["cluster"].candidates
    assert [d["rank"] for d in c] == [1, 2, 3][:len(c)] and len(c) >= 2
    assert (c[0]["x"], c[0]["y"], c[0]["z"]) == (t["cluster"].x, t["cluster"].y, t["cluster"].z)
    assert c[0]["distance_to_primary_mm"] == 0.0
    p2 = np.array([c[1]["x"], c[1]["y"], c[1]["z"]])
    assert np.linalg.norm(p2 - broad) < 8.0
    assert c[1]["distance_to_primary_mm"] == pytest.approx(np.linalg.norm(p2 - pos["cluster"]))
    assert c[1]["n_voxels"] == int((lab == lb).sum())
    assert c[1]["mean_r"] == pytest.approx(rmap[lab == lb].mean())
    assert c[0]["score"] > c[1]["score"]
    d = t["cluster"].to_dict()
    assert d["candidates"][1]["n_voxels"] == c[1]["n_voxels"] and d["status"] == "ok"


def test_tfce_known_answers():
    """TFCE = sum_k e^E h_k^H dh, checked on shapes whose extents are known by construction."""
    from tmstarget.target import tfce

    shape = (12, 12, 12)
    v = np.zeros(shape)
    mask = np.ones(shape, bool)
    v[2, 2, 2] = 0.5  # isolated voxel: extent 1 at every height
    v[6:9, 6:9, 6:9] = 0.25  # 27-voxel cube at a quarter of the top height
    out = tfce(v, mask, e=0.5, h=2.0, n_steps=50)
    dh = 0.5 / 50
    hs = dh * np.arange(1, 51)
    assert out[2, 2, 2] == pytest.approx(np.sum(hs**2 * dh))
    assert out[7, 7, 7] == pytest.approx(np.sum(27**0.5 * hs[hs <= 0.25 + 1e-12] ** 2 * dh))
    assert out[0, 0, 0] == 0.0
    # a step pyramid: a 3x3x3 cube at 0.2 with its centre at 0.5 -> extent 27 up to 0.2, then 1
    v2 = np.zeros(shape)
    v2[1:4, 1:4, 1:4] = 0.2
    v2[2, 2, 2] = 0.5
    o2 = tfce(v2, mask, n_steps=50)
    low = hs <= 0.2 + 1e-12
    assert o2[2, 2, 2] == pytest.approx(np.sum(np.where(low, 27**0.5, 1.0) * hs**2 * dh))
    # outside the mask counts as 0
    m2 = mask.copy()
    m2[2, 2, 2] = False
    assert tfce(v2, m2, n_steps=50)[2, 2, 2] == 0.0


def _few_negative_map():
    shape = (10, 10, 10)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    region = np.ones(shape, bool)
    rng = np.random.default_rng(5)
    rmap = rng.uniform(0.05, 0.5, shape)  # positive everywhere ...
    neg = [(2, 2, 2), (2, 2, 3), (2, 3, 2), (3, 2, 2), (7, 7, 7), (7, 1, 8)]
    for i, ijk in enumerate(neg):  # ... except 6 voxels (fewer than any method asks for)
        rmap[ijk] = -0.1 - 0.05 * i
    return rmap, region, aff, neg


def test_centroids_use_negative_voxels_only():
    rmap, region, aff, neg = _few_negative_map()
    xyz = voxel_centers_mm(rmap.shape, aff)
    t = find_targets(rmap, region, aff, methods=["cluster", "cluster_largest", "weighted"],
                     cluster_percent=10, weighted_n_voxels=50)  # 100 and 50 voxels asked
    sel = np.zeros(rmap.shape, bool)
    for ijk in neg:
        sel[ijk] = True
    w = -rmap[sel]
    oracle = (xyz[sel] * w[:, None]).sum(0) / w.sum()
    assert t["weighted"].n_voxels == 6
    np.testing.assert_allclose(t["weighted"].centroid_mm, oracle, atol=1e-9)
    assert "only 6 negative voxels" in t["weighted"].description
    for m in ("cluster", "cluster_largest"):
        assert t[m].n_voxels <= 4
        cen = np.array(t[m].centroid_mm)
        assert t[m].r < 0 and t[m].ok
        # the centroid lies in the convex hull of negative voxels only: here, one cluster
        assert min(np.linalg.norm(cen - xyz[ijk]) for ijk in neg) < 2.5
        assert "positive voxels are never used" in t[m].description
    # property: what the positive voxels hold cannot matter
    other = np.where(rmap > 0, np.random.default_rng(9).uniform(0.01, 0.9, rmap.shape), rmap)
    t2 = find_targets(other, region, aff, methods=["cluster", "cluster_largest", "weighted"],
                      cluster_percent=10, weighted_n_voxels=50)
    for m in t:
        assert (t2[m].x, t2[m].y, t2[m].z) == (t[m].x, t[m].y, t[m].z)


def test_no_negative_voxel_is_reported_not_averaged():
    rmap, region, aff, _ = _few_negative_map()
    pos = np.abs(rmap) + 0.01
    t = find_targets(pos, region, aff, methods=["classic", "cluster", "cluster_largest",
                                                "weighted"])
    for m, tg in t.items():
        assert tg.status == "no_negative_voxels" and not tg.ok, m
        assert tg.n_voxels == 0 and tg.centroid_mm is None and tg.candidates is None
        assert "NO TARGET" in tg.description
        assert tg.r == pytest.approx(pos[region].min())
        assert tg.to_dict()["status"] == "no_negative_voxels"


def test_time_series_methods_are_not_map_methods():
    rmap, region, aff, _ = _few_negative_map()
    with pytest.raises(InputError, match="time series"):
        find_targets(rmap, region, aff, methods=["snt"])
    with pytest.raises(InputError, match="unknown target method"):
        find_targets(rmap, region, aff, methods=["clusterr"])
