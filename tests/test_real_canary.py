"""Real-data canary: the built-in preprocessing cannot depend on how a real scan is stored.

A small excerpt of the real participant in ``data_real/`` (Philips, stored LAS and oblique: the
T1w at every third voxel, ~2 mm, and the first 24 BOLD volumes) is re-stored with plain numpy
in another voxel order of the same world (slice and phase axes flipped, axes permuted),
and each copy runs through the whole built-in stage in a fresh process, as the rule
runs it. Same world, same values: every output must agree (motion estimates, the T1w -> MNI
transform, coregistration, the MNI BOLD series, the confounds).

Before the inputs were conformed to RAS this failed on real data: ANTs' regular metric
sampling and the coarse resampling grids follow the storage order, and on the whole real
participant re-stored RAS that moved single-volume framewise displacements by up to 0.5 mm
(28 volumes censored instead of 3) and the seed map correlated 0.80 with the original.
The whole-participant check is ``tests/test_e2e_real.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import needs_ants

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "data_real" / "sub-02"
STEM = "sub-02_task-oneback_run-1"
SPACE = "MNI152NLin2009cAsym"
FAST = {"registration_resolution_mm": 4.0, "syn_iterations": [20, 10],
        "motion_resolution_mm": 6.0}

pytestmark = needs_ants


def _flip(img: nib.Nifti1Image, axis: int) -> nib.Nifti1Image:
    """Same world and values, voxel axis ``axis`` stored the other way round (plain numpy)."""
    aff = img.affine.copy()
    aff[:3, 3] += aff[:3, axis] * (img.shape[axis] - 1)
    aff[:3, axis] *= -1
    return nib.Nifti1Image(np.flip(np.asarray(img.dataobj), axis=axis), aff)


def _permute(img: nib.Nifti1Image, order: tuple[int, int, int]) -> nib.Nifti1Image:
    """Same world and values, voxel axes stored in another order (plain numpy)."""
    aff = img.affine.copy()
    aff[:, :3] = img.affine[:, list(order)]
    data = np.transpose(np.asarray(img.dataobj), (*order, *range(3, img.ndim)))
    return nib.Nifti1Image(data, aff)


#: LAS (as the scanner stored it) -> another storage of the same world: the slice axis and
#: the phase axis flipped, then the axes permuted (slices second). One re-storage with all
#: three kinds of change keeps the canary to two runs of the stage.
RESTORE = {
    "PIL": lambda im: _permute(_flip(_flip(im, 1), 2), (1, 2, 0)),
}


def _restore(img: nib.Nifti1Image, codes: str) -> nib.Nifti1Image:
    out = RESTORE[codes](img)
    assert "".join(nib.aff2axcodes(out.affine)) == codes
    out = nib.Nifti1Image(np.ascontiguousarray(np.asarray(out.dataobj)), out.affine)
    return out


def _excerpt(root: Path, codes: str | None) -> Path:
    """The small real excerpt, stored as the scanner did (None) or in ``codes`` order."""
    (root / "sub-02" / "anat").mkdir(parents=True)
    (root / "sub-02" / "func").mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "excerpt of data_real (REAL DATA)", "BIDSVersion": "1.9.0",
         "DatasetType": "raw"}))
    t1 = nib.load(REAL / "anat" / "sub-02_T1w.nii.gz").slicer[::3, ::3, ::3]
    bold = nib.load(REAL / "func" / f"{STEM}_bold.nii.gz").slicer[..., :24]
    t1 = nib.Nifti1Image(np.asarray(t1.dataobj, dtype=np.float32), t1.affine)
    bold = nib.Nifti1Image(np.asarray(bold.dataobj, dtype=np.float32), bold.affine)
    bold.header.set_zooms((*bold.header.get_zooms()[:3], 2.0))
    if codes is not None:
        t1, bold = _restore(t1, codes), _restore(bold, codes)
        bold.header.set_zooms((*bold.header.get_zooms()[:3], 2.0))
    nib.save(t1, root / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    nib.save(bold, root / "sub-02" / "func" / f"{STEM}_bold.nii.gz")
    (root / "sub-02" / "func" / f"{STEM}_bold.json").write_text(
        (REAL / "func" / f"{STEM}_bold.json").read_text())
    return root


def _run(bids: Path, out: Path, done: Path) -> None:
    code = ("import sys, json; from tmstarget.builtin import preprocess_participant as p; "
            "p(sys.argv[1], sys.argv[2], '02', sys.argv[3], json.loads(sys.argv[4]), "
            "task='oneback', threads=1)")
    res = subprocess.run([sys.executable, "-c", code, str(bids), str(out), str(done),
                          json.dumps(FAST)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def canary_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("real_canary")
    outs = {}
    for codes in (None, "PIL"):
        name = codes or "scanner"
        bids = _excerpt(base / f"in_{name}", codes)
        _run(bids, base / f"out_{name}", base / f"{name}.done")
        outs[name] = base / f"out_{name}" / "sub-02"
    return outs


def test_excerpt_really_is_stored_differently(canary_runs):
    for name, codes in (("scanner", "LAS"), ("PIL", "PIL")):
        src = canary_runs[name].parents[1] / f"in_{name}" / "sub-02" / "func" / f"{STEM}_bold.nii.gz"
        assert "".join(nib.aff2axcodes(nib.load(src).affine)) == codes
        qc = json.loads((canary_runs[name] / "func" / f"{STEM}_desc-builtin_qc.json").read_text())
        assert qc["input_storage"]["orientation"] == codes
        assert qc["input_storage"]["oblique_deg"] > 10  # the real BOLD is oblique (~13 deg)


def test_same_world_same_outputs_whatever_the_storage(canary_runs):
    from tmstarget.itk import load_itk_affine
    from tmstarget.native import load_point_transform

    ref = canary_runs["scanner"]
    mask = nib.load(REPO / "src" / "tmstarget" / "data"
                    / "tpl-MNI152NLin2009cAsym_res-02_desc-brain_mask.nii.gz")
    pts = nib.affines.apply_affine(mask.affine, np.argwhere(np.asarray(mask.dataobj) > 0)[::40])
    xfm_ref = load_point_transform(ref / "anat" / f"sub-02_from-T1w_to-{SPACE}_mode-image_xfm.h5")
    bold_ref = np.asarray(nib.load(ref / "func" / f"{STEM}_space-{SPACE}_res-2_desc-preproc_bold"
                                   ".nii.gz").dataobj)
    mot_ref = pd.read_csv(ref / "func" / f"{STEM}_desc-hmc_motion.tsv", sep="\t")
    conf_ref = pd.read_csv(ref / "func" / f"{STEM}_desc-confounds_timeseries.tsv", sep="\t")
    co_ref = load_itk_affine(ref / "func" / f"{STEM}_from-boldref_to-T1w_mode-image_desc-coreg_xfm.txt")
    for name in ("PIL",):
        d = canary_runs[name]
        mot = pd.read_csv(d / "func" / f"{STEM}_desc-hmc_motion.tsv", sep="\t")
        diff = (mot - mot_ref).abs().max()
        assert diff[["trans_x", "trans_y", "trans_z"]].max() < 1e-3, (name, diff.to_dict())
        assert diff[["rot_x", "rot_y", "rot_z"]].max() < 1e-5, (name, diff.to_dict())
        xfm = load_point_transform(d / "anat" / f"sub-02_from-T1w_to-{SPACE}_mode-image_xfm.h5")
        moved = np.linalg.norm(xfm.map(pts, edge_margin=False)
                               - xfm_ref.map(pts, edge_margin=False), axis=1).max()
        assert moved < 1e-2, f"{name}: T1w -> MNI differs by up to {moved:.3f} mm"
        co = load_itk_affine(d / "func" / f"{STEM}_from-boldref_to-T1w_mode-image_desc-coreg_xfm.txt")
        assert np.abs(co - co_ref).max() < 1e-3, name
        bold = np.asarray(nib.load(d / "func" / f"{STEM}_space-{SPACE}_res-2_desc-preproc_bold"
                                   ".nii.gz").dataobj)
        assert np.abs(bold - bold_ref).max() <= 1e-4 * np.abs(bold_ref).max(), name
        conf = pd.read_csv(d / "func" / f"{STEM}_desc-confounds_timeseries.tsv", sep="\t")
        num = conf_ref.select_dtypes("number").columns
        np.testing.assert_allclose(conf[num].to_numpy(float), conf_ref[num].to_numpy(float),
                                   rtol=1e-3, atol=1e-3, err_msg=name)
