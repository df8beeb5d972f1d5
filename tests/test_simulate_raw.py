"""The raw-BIDS twin generator: geometry and truth files (small, fast)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from tmstarget.simulate_raw import RAW_SUBJECTS, make_raw_dataset, motion_matrices, read_truth


def test_raw_twin_geometry_and_truth(tmp_path):
    spec = RAW_SUBJECTS[1]  # LPS storage, scaled, oblique slab
    truth = make_raw_dataset(tmp_path, subjects=[spec], n_volumes=14, sim_voxel_mm=4.0)
    assert truth.loc[0, "participant_id"] == "sub-02"
    desc = json.loads((tmp_path / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "raw" and "SIMULATED" in desc["Name"]
    t1 = nib.load(tmp_path / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    assert nib.aff2axcodes(t1.affine) == ("L", "P", "S")
    meta, motion = read_truth(tmp_path, "02")
    a = np.asarray(meta["t1w_from_mni"])
    np.testing.assert_allclose(np.linalg.svd(a[:3, :3])[1], sorted(spec.scale, reverse=True),
                               atol=1e-9)
    # the T1w voxel that holds Colin27's MNI point p sits at world a @ p: the anterior
    # commissure region of Colin27 (bright WM) must be found at a @ (0, 2, -4)
    p = a @ np.array([0.0, 2.0, -4.0, 1.0])
    ijk = np.round(np.linalg.inv(t1.affine) @ p)[:3].astype(int)
    assert np.asarray(t1.dataobj)[tuple(ijk)] > 0
    bold = nib.load(tmp_path / "sub-02" / "func" / "sub-02_task-rest_bold.nii.gz")
    assert bold.shape[-1] == 14 and nib.aff2axcodes(bold.affine) == ("L", "P", "S")
    data = np.asarray(bold.dataobj, dtype=np.float32)
    assert data[..., 0].mean() > 1.3 * data[..., 5].mean()  # brighter non-steady-state volume
    assert len(motion) == 14 and np.allclose(motion.iloc[0], 0)
    # motion matrices are rigid, about the recorded centre
    mats = motion_matrices(motion.to_numpy(), meta["motion_centre_mm"])
    for m in mats:
        np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-12)


def test_left_target_stays_left_in_scanner_storage(tmp_path):
    """Laterality canary for the twin: the planted (left) target, mapped by the truth affine,
    is on the T1w's left of the brain centre whatever the storage order."""
    for spec in RAW_SUBJECTS:
        a = spec.t1w_from_mni
        left = a @ np.array([*spec.target_mm, 1.0])
        right = a @ np.array([-spec.target_mm[0], *spec.target_mm[1:], 1.0])
        # in the T1w world the left point is further along -x of the head's own x axis
        head_x = a[:3, 0] / np.linalg.norm(a[:3, 0])
        assert (left[:3] - right[:3]) @ head_x < 0
