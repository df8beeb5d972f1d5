#!/usr/bin/env python
"""Make the small per-head fixtures the scalp-model tests use (needs ANTsPy; ~5 min per head).

For each real head (the pycortex S1 head in ``tests/data/heads/`` and the studyforrest sub-02
T1w in ``data_real/``), run tmstarget's own built-in anatomical workflow (N4, whole-head
affine to the MNI152NLin2009cAsym whole-head template, SyN to the brain template, brain mask =
template mask pulled back) and keep, in ``tests/data/heads/``:

* ``<head>_desc-brain_mask.nii.gz``: the brain mask on the T1w grid (uint8);
* ``<head>_from-T1w_to-MNI152NLin2009cAsym_desc-affine_xfm.txt``: the whole-head affine as an
  ITK affine, as a point map MNI -> T1w (the direction of fMRIPrep's file of that name);
* ``<head>_from-MNI152NLin2009cAsym_to-T1w_desc-affine_xfm.txt``: its inverse (T1w -> MNI).

Only the affine is kept (a displacement field would be megabytes): the tests use it to map
template fiducials and reference targets, with tolerances that allow for an affine's error.
``--keep-syn DIR`` also copies the SyN composites there (for a one-off validation run).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import nibabel as nb
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tmstarget import itk
from tmstarget.builtin import DEFAULTS, anatomical_workflow
from tmstarget.native import load_point_transform

HEADS = {
    "pycortex-S1": REPO / "tests" / "data" / "heads" / "pycortex-S1_T1w.nii.gz",
    "studyforrest-sub-02": REPO / "data_real" / "sub-02" / "anat" / "sub-02_T1w.nii.gz",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", nargs="*", default=list(HEADS))
    ap.add_argument("--keep-syn", type=Path, default=None)
    args = ap.parse_args()
    out = REPO / "tests" / "data" / "heads"
    for name in args.heads:
        with tempfile.TemporaryDirectory() as tmp:
            work, anat = Path(tmp) / "work", Path(tmp) / "anat"
            work.mkdir()
            res = anatomical_workflow(HEADS[name], anat, "x", work, dict(DEFAULTS), threads=2)
            mask = nb.load(str(res.brain_mask))
            t1 = nb.load(str(HEADS[name]))
            data = (np.asarray(mask.dataobj) > 0.5).astype(np.uint8)
            img = nb.Nifti1Image(data, t1.affine)
            img.set_qform(t1.affine, code=1)
            img.set_sform(t1.affine, code=1)
            nb.save(img, str(out / f"{name}_desc-brain_mask.nii.gz"))
            fwd = load_point_transform(work / "t1w_head_0GenericAffine.mat")
            m = np.asarray(fwd.xfm.matrix, dtype=float)  # RAS point map MNI -> T1w
            itk.write_itk_txt_affine(
                out / f"{name}_from-T1w_to-MNI152NLin2009cAsym_desc-affine_xfm.txt", m)
            itk.write_itk_txt_affine(
                out / f"{name}_from-MNI152NLin2009cAsym_to-T1w_desc-affine_xfm.txt",
                np.linalg.inv(m))
            if args.keep_syn:
                args.keep_syn.mkdir(parents=True, exist_ok=True)
                shutil.copy(res.to_mni, args.keep_syn / f"{name}_{res.to_mni.name[6:]}")
                shutil.copy(res.from_mni, args.keep_syn / f"{name}_{res.from_mni.name[6:]}")
                shutil.copy(res.t1w, args.keep_syn / f"{name}_desc-preproc_T1w.nii.gz")
            print(f"{name}: brain mask {int(data.sum())} voxels; affine\n{np.round(m, 4)}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
