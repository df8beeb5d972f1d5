"""Template spaces: published coordinates converted with the shipped template transform."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from tmstarget.errors import InputError
from tmstarget.io import data_file
from tmstarget.regions import (PUBLISHED, PUBLISHED_SITES, REFERENCE_TARGETS_MM,
                               SGACC_CENTER_MM)
from tmstarget.seedmap import seed_weights
from tmstarget.spaces import (NLIN6, NLIN2009C, convert_points, detect_space, provenance,
                              resample_to_grid, resolve_image_space)

HERE = Path(__file__).resolve().parent
NLIN6_T1W = HERE / "data" / "templates" / "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"
TPL_2009C = data_file("tpl-MNI152NLin2009cAsym_res-01_desc-brain_T1w.nii.gz")
MASK_2009C = data_file("tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz")


def test_module_constants_are_the_converted_published_coordinates():
    """The constants used everywhere equal the shipped transform applied to the publications."""
    got = convert_points([PUBLISHED["sgACC"].xyz], NLIN6, NLIN2009C)[0]
    np.testing.assert_allclose(got, SGACC_CENTER_MM, atol=0.01)
    for name, pc in PUBLISHED_SITES.items():
        assert pc.space == NLIN6
        got = convert_points([pc.xyz], NLIN6, NLIN2009C)[0]
        np.testing.assert_allclose(got, REFERENCE_TARGETS_MM[name], atol=0.01)
    # a few millimetres, not zero and not centimetres
    for name, pc in PUBLISHED.items():
        if pc.space == NLIN6:
            d = np.linalg.norm(np.subtract(convert_points([pc.xyz], NLIN6, NLIN2009C)[0],
                                           pc.xyz))
            assert 0.2 < d < 8.0, (name, d)


def test_round_trip_and_identity():
    rng = np.random.default_rng(0)
    pts = rng.uniform([-60, -90, -40], [60, 60, 70], size=(200, 3))
    back = convert_points(convert_points(pts, NLIN6, NLIN2009C), NLIN2009C, NLIN6)
    assert np.linalg.norm(back - pts, axis=1).max() < 0.5
    np.testing.assert_array_equal(convert_points(pts, NLIN6, NLIN6), pts)


def test_transform_aligns_the_templates_better_than_identity():
    """Independent of point-map conventions: FSL's MNI152 resampled through the transform onto
    the 2009c grid resembles the 2009c template more than without it (and a wrong direction or
    a mirrored field would not)."""
    tpl = nb.load(TPL_2009C)
    mask = np.asarray(nb.load(MASK_2009C).dataobj) > 0
    aff = tpl.affine.copy()
    aff[:3, :3] *= 2.0  # a 2 mm grid over the same box
    shape = tuple(int(np.ceil(s / 2)) for s in tpl.shape)
    ref = resample_to_grid(tpl, NLIN2009C, NLIN2009C, aff, shape)
    m = resample_to_grid(nb.Nifti1Image(mask.astype(np.float32), tpl.affine), NLIN2009C,
                         NLIN2009C, aff, shape, "nearest") > 0
    src = nb.load(NLIN6_T1W)
    warped = resample_to_grid(src, NLIN6, NLIN2009C, aff, shape)
    plain = resample_to_grid(src, NLIN2009C, NLIN2009C, aff, shape)  # as if the same space
    inverse = resample_to_grid(src, NLIN2009C, NLIN6, aff, shape)  # the wrong direction
    cc = {k: float(np.corrcoef(v[m], ref[m])[0, 1])
          for k, v in (("warped", warped), ("plain", plain), ("inverse", inverse))}
    assert cc["warped"] > cc["plain"] + 0.02 and cc["warped"] > cc["inverse"] + 0.02, cc
    assert cc["warped"] > 0.85, cc


def test_provenance_is_shipped_and_consistent():
    prov = provenance()
    acc = prov["Accuracy"]
    assert acc["brain_correlation_after"] > acc["brain_correlation_before"]
    assert acc["round_trip_max_mm"] < 0.5
    for c in acc["image_warp_vs_point_map"]:
        assert c["difference_mm"] < 1.0, c
    for name, info in prov["Inputs"].items():
        assert len(info["sha256"]) == 64, name


def test_detect_space_any_storage_order():
    img6 = nb.load(NLIN6_T1W)
    assert detect_space(img6) == NLIN6
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = img6.shape[0] - 1
    las = nb.Nifti1Image(np.asarray(img6.dataobj)[::-1], img6.affine @ flip)
    assert detect_space(las) == NLIN6
    assert detect_space(nb.load(TPL_2009C)) == NLIN2009C
    odd = nb.Nifti1Image(np.zeros((10, 10, 10)), np.eye(4))
    assert detect_space(odd) is None
    with pytest.raises(InputError, match="cannot be recognised"):
        resolve_image_space(odd, None, "x.nii.gz", "seed.space")
    with pytest.raises(InputError, match="says MNI152NLin2009cAsym, but the image is on"):
        resolve_image_space(img6, NLIN2009C, "x.nii.gz", "seed.space")
    assert resolve_image_space(odd, NLIN6, "x.nii.gz", "seed.space") == (NLIN6, "declared")


def test_seed_sphere_and_file_in_their_published_space(tmp_path):
    tpl = nb.load(data_file("tpl-MNI152NLin2009cAsym_res-02_desc-brain_mask.nii.gz"))
    shape, aff = tpl.shape[:3], tpl.affine
    w, desc = seed_weights({"kind": "sphere", "center_mm": [6, 16, -10], "radius_mm": 10},
                           shape, aff)
    from tmstarget.regions import sphere_mask

    exact = convert_points([PUBLISHED["sgACC"].xyz], NLIN6, NLIN2009C)[0]
    np.testing.assert_array_equal(w > 0, sphere_mask(shape, aff, exact, 10))
    assert "MNI152NLin6Asym" in desc and "template correction" in desc
    w2, _ = seed_weights({"kind": "sphere", "center_mm": list(exact),
                          "radius_mm": 10, "space": NLIN2009C}, shape, aff)
    np.testing.assert_array_equal(w2, w)
    # a 6 mm ball drawn on FSL's 2 mm grid at the published coordinate lands at the converted one
    img6 = nb.load(NLIN6_T1W)
    from tmstarget.regions import voxel_centers_mm

    xyz6 = voxel_centers_mm(img6.shape, img6.affine)
    ball = (np.linalg.norm(xyz6 - np.array(PUBLISHED["BA46"].xyz), axis=-1) <= 6).astype(np.uint8)
    f = tmp_path / "ba46_fsl.nii.gz"
    nb.save(nb.Nifti1Image(ball, img6.affine), f)
    wf, desc = seed_weights({"kind": "file", "file": str(f)}, shape, aff)
    assert "recognised from the grid" in desc and "template transform" in desc
    cen = voxel_centers_mm(shape, aff)[wf > 0].mean(axis=0)
    assert np.linalg.norm(cen - np.array(REFERENCE_TARGETS_MM["BA46"])) < 1.5
    with pytest.raises(InputError, match="seed.space says"):
        seed_weights({"kind": "file", "file": str(f), "space": NLIN2009C}, shape, aff)
