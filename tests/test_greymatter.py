"""Grey-matter search region and the native depth mask (tmstarget.greymatter)."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from tmstarget.errors import InputError
from tmstarget.greymatter import (
    TEMPLATE_GM_PROBSEG,
    depth_mask,
    find_gm_probseg,
    grey_matter_mask,
)
from tmstarget.io import data_file
from tmstarget.native import HeadModel
from tmstarget.regions import default_search_region, voxel_centers_mm
from tmstarget.target import load_search_region


def _mni2mm():
    m = nb.load(data_file("tpl-MNI152NLin2009cAsym_res-02_desc-brain_mask.nii.gz"))
    return np.asarray(m.dataobj) > 0, m.affine


def test_shipped_template_gm_map_is_cortex():
    brain, aff = _mni2mm()
    img = nb.load(data_file(TEMPLATE_GM_PROBSEG))
    assert img.shape == brain.shape and np.allclose(img.affine, aff)
    g = np.asarray(img.dataobj)
    assert g.min() >= 0 and g.max() <= 1
    # 8-12 mm below the brain surface is mostly cortex; the centrum semiovale is white matter
    shell = ndimage.binary_erosion(brain, iterations=4) & ~ndimage.binary_erosion(brain,
                                                                                 iterations=6)
    assert g[shell].mean() > 0.4
    for p in ((-26, -10, 30), (26, -10, 30)):
        ijk = np.rint(np.linalg.solve(aff[:3, :3], np.array(p) - aff[:3, 3])).astype(int)
        assert g[tuple(ijk)] < 0.1, p
    assert 0.3 < (g[brain] >= 0.3).mean() < 0.6
    region = default_search_region(brain, aff)
    frac = (g[region] >= 0.3).mean()
    assert 0.4 < frac < 0.8, frac


def test_search_region_restricted_to_grey_matter(tmp_path):
    brain, aff = _mni2mm()
    full, d0 = load_search_region({"kind": "default", "grey_matter": False}, brain, aff)
    assert "not restricted to grey matter" in d0
    gm, _ = grey_matter_mask(brain.shape, aff)
    reg, d1 = load_search_region({"kind": "default"}, brain, aff)
    assert not (reg & ~gm).any() and np.array_equal(reg, full & gm)
    assert "template grey-matter map" in d1 and f"{int(reg.sum())} of {int(full.sum())}" in d1
    strict, _ = load_search_region({"kind": "default", "grey_matter_threshold": 0.6}, brain, aff)
    assert strict.sum() < reg.sum() and not (strict & ~reg).any()
    # a participant's own probseg, on another (1 mm-like, shifted) grid: GM = y > 30 mm only
    aff2 = np.diag([1.5, 1.5, 1.5, 1.0])
    aff2[:3, 3] = (-97.0, -133.0, -79.0)
    shp = (130, 155, 130)
    y = voxel_centers_mm(shp, aff2)[..., 1]
    p = tmp_path / "sub-01_space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz"
    nb.save(nb.Nifti1Image((y > 30).astype(np.float32), aff2), p)
    own, d2 = load_search_region({"kind": "default"}, brain, aff, gm_probseg=p)
    assert p.name in d2 and "resampled" in d2
    yy = voxel_centers_mm(brain.shape, aff)[..., 1]
    assert own.any() and (yy[own] > 29).all() and not (own & ~full).any()
    # nothing left -> a clear error naming the file
    nb.save(nb.Nifti1Image((y > 200).astype(np.float32), aff2), p)
    with pytest.raises(InputError, match=r"label-GM_probseg.*no search-region voxel is grey"):
        load_search_region({"kind": "default"}, brain, aff, gm_probseg=p)
    nb.save(nb.Nifti1Image((y > 30).astype(np.float32) * 7, aff2), p)
    with pytest.raises(InputError, match="not a probability map"):
        load_search_region({"kind": "default"}, brain, aff, gm_probseg=p)


def test_find_gm_probseg(tmp_path):
    anat = tmp_path / "sub-01" / "anat"
    anat.mkdir(parents=True)
    for n in ("sub-01_space-MNI152NLin2009cAsym_res-2_label-GM_probseg.nii.gz",
              "sub-01_space-MNI152NLin2009cAsym_res-1_label-GM_probseg.nii.gz",
              "sub-01_space-MNI152NLin6Asym_res-2_label-GM_probseg.nii.gz",
              "sub-01_label-GM_probseg.nii.gz",
              "sub-01_space-MNI152NLin2009cAsym_res-2_label-WM_probseg.nii.gz"):
        (anat / n).write_bytes(b"")
    got = find_gm_probseg(tmp_path, "01")
    assert got.name == "sub-01_space-MNI152NLin2009cAsym_res-1_label-GM_probseg.nii.gz"
    assert find_gm_probseg(tmp_path, "01", res="2").name.startswith(
        "sub-01_space-MNI152NLin2009cAsym_res-2_label-GM")
    assert find_gm_probseg(tmp_path, "01", space="MNI152NLin6Asym").name.startswith(
        "sub-01_space-MNI152NLin6Asym")
    assert find_gm_probseg(tmp_path, "02") is None
    ses = tmp_path / "sub-01" / "ses-A" / "anat"
    ses.mkdir(parents=True)
    (ses / "sub-01_ses-A_space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz").write_bytes(b"")
    assert find_gm_probseg(tmp_path, "01", session="A").parent == ses


class _Identity:
    def map(self, pts):
        return np.asarray(pts, float)


def test_depth_mask_on_a_spherical_head():
    """Head = ball of radius 70 mm: a voxel's depth is 70 - |p| (up to one voxel)."""
    shape = (81, 81, 81)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = -80.0
    xyz = voxel_centers_mm(shape, aff)
    rho = np.linalg.norm(xyz, axis=-1)
    head = rho <= 70.0
    surf = head & ~ndimage.binary_erosion(head)
    pts = xyz[surf]
    model = HeadModel(head, None, aff, pts, cKDTree(pts), 2.0)
    region = (rho <= 60) & (xyz[..., 0] < 0)
    keep, info = depth_mask(region, aff, _Identity(), model, max_depth_mm=25.0)
    depth = 70.0 - rho
    assert not (keep & ~region).any()
    assert keep[region & (depth <= 25 - 2.0)].all()  # clearly shallow: kept
    assert not keep[region & (depth > 25 + 2.0)].any()  # clearly deep: removed
    assert info["n_kept"] == int(keep.sum()) and info["n_outside_head"] == 0
    assert info["n_too_deep"] == int(region.sum() - keep.sum())
    # a transform that moves everything outside the head removes everything
    class _Away:
        def map(self, p):
            return np.asarray(p, float) + 200.0
    none, info2 = depth_mask(region, aff, _Away(), model, 25.0)
    assert not none.any() and info2["n_outside_head"] == int(region.sum())
