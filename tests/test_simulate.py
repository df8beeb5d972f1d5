"""Tests of the simulator (tmstarget.simulate) and the ITK transform writer (tmstarget.itk)."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from tmstarget import itk
from tmstarget.regions import default_search_region, voxel_centers_mm
from tmstarget.simulate import (
    DEFAULT_SUBJECTS,
    SPACE,
    SubjectSpec,
    bold_grid,
    make_dataset,
    reorient_storage,
    rigid_matrix,
)

TINY = {"voxel_size": 8.0, "n_volumes": 40, "with_anat": False}
TINY_SUBJECTS = [
    SubjectSpec("01", DEFAULT_SUBJECTS[0].target_mm),
    SubjectSpec("02", DEFAULT_SUBJECTS[1].target_mm, runs=(1, 2), bold_orientation="LAS"),
    SubjectSpec("03", DEFAULT_SUBJECTS[2].target_mm, sessions=("1", "2")),
]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("tiny")
    return root, make_dataset(root, TINY_SUBJECTS, seed=7, **TINY)


# ----------------------------------------------------------------------------- ITK
@pytest.fixture
def rigid() -> np.ndarray:
    return rigid_matrix((8.0, -6.0, 10.0), (12.0, -20.0, 25.0))


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:3, :3].T + m[:3, 3]


@pytest.fixture
def points() -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.vstack([[[-39.5, 36.5, 22.5], [6.0, 16.0, -10.0], [0.0, 0.0, 0.0]],
                      rng.uniform([-80, -110, -60], [80, 80, 90], size=(50, 3))])


def test_itk_h5_maps_points_with_nitransforms(tmp_path, rigid, points):
    from nitransforms.manip import load

    # from-T1w_to-MNI resamples T1w into MNI: as a point map, MNI point p -> T1w point A p
    fwd = itk.write_itk_h5_composite(tmp_path / "from-T1w_to-MNI.h5", rigid,
                                     center_ras=(1.0, -17.0, 18.0))
    inv_box = tuple(_apply(rigid, np.array(itk.MNI_HEAD_BBOX_RAS)))
    inv = itk.write_itk_h5_composite(tmp_path / "from-MNI_to-T1w.h5", np.linalg.inv(rigid),
                                     warp_bbox_ras=inv_box)
    chain = load(fwd, fmt="itk")
    assert len(chain.transforms) == 2  # displacement field + affine, like fMRIPrep's files
    np.testing.assert_allclose(chain.map(points), _apply(rigid, points), atol=1e-3)
    t1_points = _apply(rigid, points)
    np.testing.assert_allclose(load(inv, fmt="itk").map(t1_points), points, atol=1e-3)


def test_itk_h5_layout(tmp_path, rigid):
    import h5py

    path = itk.write_itk_h5_composite(tmp_path / "x.h5", rigid)
    with h5py.File(path, "r") as f:
        types = [f["TransformGroup"][k]["TransformType"][0] for k in ("0", "1", "2")]
        assert types == [b"CompositeTransform_double_3_3", b"AffineTransform_double_3_3",
                         b"DisplacementFieldTransform_float_3_3"]
        assert f["TransformGroup/1/TransformParameters"].shape == (12,)
        assert not np.any(f["TransformGroup/2/TransformParameters"][()])
    # LPS storage: RAS x/y translation components are negated
    np.testing.assert_allclose(itk.load_itk_affine(path), rigid, atol=1e-12)


def test_itk_txt_roundtrip_nitransforms(tmp_path, rigid, points):
    from nitransforms.linear import load

    path = itk.write_itk_txt_affine(tmp_path / "x.txt", rigid, center_ras=(5.0, 5.0, 5.0))
    np.testing.assert_allclose(load(path, fmt="itk").map(points), _apply(rigid, points),
                               atol=1e-3)
    np.testing.assert_allclose(itk.load_itk_affine(path), rigid, atol=1e-9)


# ----------------------------------------------------------------------------- geometry
def test_reorient_storage_keeps_world_positions():
    data = np.arange(24).reshape(2, 3, 4)
    aff = np.diag([2.0, 3.0, 4.0, 1.0])
    aff[:3, 3] = (-5, 7, 1)
    for code in ("LAS", "LPS", "RPI"):
        out, a2 = reorient_storage(data, aff, code)
        assert "".join(nib.aff2axcodes(a2)) == code
        for ijk in np.ndindex(data.shape):
            world = aff @ np.array([*ijk, 1.0])
            ijk2 = np.round(np.linalg.solve(a2, world)[:3]).astype(int)
            assert out[tuple(ijk2)] == data[ijk]


def test_truth_inside_default_search_region_in_grey_matter():
    """Planted targets are where a real one could be: in the (grey-matter) search region."""
    from tmstarget.greymatter import grey_matter_mask
    from tmstarget.simulate import tissue_fractions

    mask, aff = bold_grid(4.0)
    region = default_search_region(mask, aff)
    dist = ndi.distance_transform_edt(region, sampling=4.0)
    xyz = voxel_centers_mm(mask.shape, aff)
    gm_tpl, _ = grey_matter_mask(mask.shape, aff, threshold=0.5)
    gm_colin = tissue_fractions(mask.shape, aff)[..., 0] >= 0.5
    targets = [np.array(s.target_mm) for s in DEFAULT_SUBJECTS]
    for t in targets:
        ijk = tuple(np.round(np.linalg.solve(aff, np.append(t, 1.0))[:3]).astype(int))
        np.testing.assert_allclose(xyz[ijk], t)  # a 4 mm voxel centre
        assert region[ijk] and dist[ijk] >= 8.0
        assert gm_tpl[ijk] and gm_colin[ijk], t
    for i, a in enumerate(targets):
        for b in targets[i + 1:]:
            assert np.linalg.norm(a - b) >= 14.0


# ----------------------------------------------------------------------------- dataset
def test_names_follow_fmriprep(tiny):
    root, truth = tiny
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    sp = f"space-{SPACE}"
    expected = {
        f"sub-01/func/sub-01_task-rest_{sp}_desc-preproc_bold.nii.gz",
        f"sub-01/func/sub-01_task-rest_{sp}_desc-preproc_bold.json",
        f"sub-01/func/sub-01_task-rest_{sp}_desc-brain_mask.nii.gz",
        "sub-01/func/sub-01_task-rest_desc-confounds_timeseries.tsv",
        "sub-01/func/sub-01_task-rest_desc-confounds_timeseries.json",
        f"sub-02/func/sub-02_task-rest_run-2_{sp}_desc-preproc_bold.nii.gz",
        "sub-02/func/sub-02_task-rest_run-1_desc-confounds_timeseries.tsv",
        f"sub-03/ses-2/func/sub-03_ses-2_task-rest_{sp}_desc-brain_mask.nii.gz",
        "dataset_description.json", "truth.tsv",
    }
    assert expected <= files
    pattern = re.compile(r"^sub-\d+(/ses-\d+)?/func/sub-\d+(_ses-\d+)?_task-rest(_run-\d+)?"
                         r"(_space-MNI152NLin2009cAsym)?_desc-(preproc|brain|confounds)_"
                         r"(bold|mask|timeseries)\.(nii\.gz|json|tsv)$")
    for f in files - {"dataset_description.json", "truth.tsv"}:
        assert pattern.match(f), f
    dd = json.loads((root / "dataset_description.json").read_text())
    assert dd["DatasetType"] == "derivative" and "SIMULATED" in dd["GeneratedBy"][0]["Description"]
    assert list(truth.columns[:5]) == ["participant_id", "session_id", "x", "y", "z"]
    assert list(truth.session_id) == ["n/a", "n/a", "ses-1", "ses-2"]


def test_bold_header_and_orientation(tiny):
    root, _ = tiny
    img = nib.load(next((root / "sub-01/func").glob("*_bold.nii.gz")))
    las = nib.load(next((root / "sub-02/func").glob("*run-1*_bold.nii.gz")))
    assert img.get_data_dtype() == np.int16 and img.dataobj.slope != 1.0
    assert img.header.get_zooms()[3] == pytest.approx(2.0)
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert nib.aff2axcodes(las.affine) == ("L", "A", "S")
    mask, aff = bold_grid(8.0)
    np.testing.assert_allclose(img.affine, aff)
    data = np.asarray(img.dataobj)
    assert np.all(data[~mask] == 0) and np.all(data[mask].std(axis=-1) > 0)
    # first two volumes are brighter (non-steady state)
    means = data[mask].mean(axis=0)
    assert means[0] > means[1] > means[2:].max()


def test_confounds_load_with_nilearn(tiny):
    from nilearn.interfaces.fmriprep import load_confounds

    root, _ = tiny
    bold = next((root / "sub-02/func").glob("*run-1*_bold.nii.gz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conf, sample_mask = load_confounds(
            str(bold), strategy=("motion", "wm_csf", "global_signal", "compcor", "high_pass",
                                 "scrub",
                                 "non_steady_state"),
            compcor="anat_combined", n_compcor=5)
    assert {"trans_x", "rot_z", "white_matter", "csf", "global_signal",
            "a_comp_cor_04"} <= set(conf.columns)
    assert sample_mask is not None and 0 not in sample_mask and 1 not in sample_mask
    df = pd.read_csv(str(bold).replace(f"_space-{SPACE}_desc-preproc_bold.nii.gz",
                                       "_desc-confounds_timeseries.tsv"), sep="\t")
    assert df.loc[0, "framewise_displacement"] != df.loc[0, "framewise_displacement"]  # n/a
    assert df["non_steady_state_outlier00"].tolist()[:3] == [1.0, 0.0, 0.0]


def test_generation_is_deterministic(tiny, tmp_path):
    root, _ = tiny
    make_dataset(tmp_path, TINY_SUBJECTS, seed=7, **TINY)
    assert _digest(tmp_path) == _digest(root)


def test_anat_and_transforms(tmp_path):
    from nitransforms.manip import load

    spec = SubjectSpec("09", DEFAULT_SUBJECTS[0].target_mm, anat_orientation="LPS",
                       rotation_deg=(6.0, 14.0, -9.0), translation_mm=(20.0, 28.0, -12.0))
    truth = make_dataset(tmp_path, [spec], voxel_size=8.0, n_volumes=20, with_anat=True)
    anat = tmp_path / "sub-09" / "anat"
    t1 = nib.load(anat / "sub-09_desc-preproc_T1w.nii.gz")
    assert nib.aff2axcodes(t1.affine) == ("L", "P", "S")
    assert int(t1.header["qform_code"]) == int(t1.header["sform_code"]) == 1
    a = spec.t1w_from_mni
    mni = np.array([list(spec.target_mm)])
    t1w = np.array([truth.loc[0, ["t1w_x", "t1w_y", "t1w_z"]].to_numpy(float)])
    np.testing.assert_allclose(_apply(a, mni), t1w, atol=1e-3)
    fwd = load(anat / f"sub-09_from-T1w_to-{SPACE}_mode-image_xfm.h5", fmt="itk")
    inv = load(anat / f"sub-09_from-{SPACE}_to-T1w_mode-image_xfm.h5", fmt="itk")
    np.testing.assert_allclose(fwd.map(mni), t1w, atol=1e-3)
    np.testing.assert_allclose(inv.map(t1w), mni, atol=1e-3)
    mask = nib.load(anat / "sub-09_desc-brain_mask.nii.gz")
    ijk = np.round(np.linalg.solve(mask.affine, np.append(t1w[0], 1.0))[:3]).astype(int)
    assert np.asarray(mask.dataobj)[tuple(ijk)] == 1  # the target is in the brain
