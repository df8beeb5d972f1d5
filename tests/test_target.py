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
        load_search_region({"kind": "file", "file": str(f)}, brain, RAS)


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
