"""Make the shipped template grey-matter probability map (run once by a developer; not a rule).

TemplateFlow's MNI152NLin2009cAsym ``label-GM_probseg`` is not among the files tmstarget ships,
so tmstarget derives its own from the template it does ship:

1. ``tpl-MNI152NLin2009cAsym_res-01_desc-brain_T1w.nii.gz`` (brain-extracted 1 mm T1w) inside
   ``tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz``;
2. ANTs Atropos, three classes (CSF, GM, WM), k-means initialisation, MRF smoothing
   ``[0.1,1x1x1]``, 5 iterations, fixed random seed (``r=0``), so reruns give the same map;
3. the GM posterior (the middle-intensity class) averaged onto the fMRIPrep ``res-2`` grid
   (97 x 115 x 97, 2 mm; the grid of ``tpl-MNI152NLin2009cAsym_res-02_desc-brain_mask``) by
   2 x 2 x 2 block averaging of the 1 mm posterior: each 2 mm voxel with centre ``c`` averages
   the eight 1 mm voxels with centres ``c +/- 0.5 mm`` (the 1 mm grid starts at -96, -132, -78,
   the 2 mm grid at -96.5, -132.5, -78.5), i.e. the partial-volume GM fraction of the voxel;
4. written as ``src/tmstarget/data/tpl-MNI152NLin2009cAsym_res-02_label-GM_probseg.nii.gz``
   (float32 probabilities 0-1, gzip mtime 0).

Usage::

    python scripts/make_template_gm_probseg.py [--out PATH]

Needs ANTsPy (``pip install 'tmstarget[preproc]'``). Provenance is in
``src/tmstarget/data/NOTICE.md``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tmstarget.io import data_file

OUT_NAME = "tpl-MNI152NLin2009cAsym_res-02_label-GM_probseg.nii.gz"


def _block_mean_to_grid(prob_1mm: nb.Nifti1Image, ref_2mm: nb.Nifti1Image) -> np.ndarray:
    """Average 2x2x2 blocks of the 1 mm image onto the 2 mm reference grid (world-aligned)."""
    a1, a2 = prob_1mm.affine, ref_2mm.affine
    data = np.asarray(prob_1mm.dataobj, dtype=np.float64)
    out = np.zeros(ref_2mm.shape[:3], dtype=np.float64)
    cnt = np.zeros_like(out)
    # world of each 1 mm voxel centre -> fractional 2 mm index; floor(+0.5 boundary) per axis
    ijk1 = np.indices(data.shape).reshape(3, -1).T.astype(float)
    xyz = ijk1 @ a1[:3, :3].T + a1[:3, 3]
    ijk2 = (xyz - a2[:3, 3]) @ np.linalg.inv(a2[:3, :3]).T
    idx = np.floor(ijk2 + 0.5).astype(int)  # nearest 2 mm voxel centre (ties: +0.5 mm side)
    ok = np.all((idx >= 0) & (idx < np.array(out.shape)), axis=1)
    flat = np.ravel_multi_index(tuple(idx[ok].T), out.shape)
    np.add.at(out.ravel(), flat, data.ravel()[ok])
    np.add.at(cnt.ravel(), flat, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, out / cnt, 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "src" / "tmstarget" / "data" / OUT_NAME))
    args = ap.parse_args(argv)
    import ants

    t0 = time.perf_counter()
    t1 = ants.image_read(str(data_file("tpl-MNI152NLin2009cAsym_res-01_desc-brain_T1w.nii.gz")))
    mask = ants.image_read(str(data_file("tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz")))
    mask = mask.threshold_image(0.5, 1e9)
    seg = ants.atropos(a=ants.iMath(t1 * mask, "Normalize"), x=mask, i="kmeans[3]",
                       m="[0.1,1x1x1]", c="[5,0]", r=0)
    probs = list(seg["probabilityimages"])  # darkest first: CSF, GM, WM
    t1a = t1.numpy()
    means = [float(t1a[probs[k].numpy() > 0.5].mean()) for k in range(3)]
    if not means[0] < means[1] < means[2]:
        raise RuntimeError(f"Atropos classes not ordered CSF < GM < WM: means {means}")
    gm = probs[1]
    tmp = Path(args.out).with_suffix(".tmp1mm.nii.gz")
    ants.image_write(gm, str(tmp))
    gm1 = nb.load(tmp)
    gm1 = nb.Nifti1Image(np.asarray(gm1.dataobj, np.float32), gm1.affine)
    ref = nb.load(data_file("tpl-MNI152NLin2009cAsym_res-02_desc-brain_mask.nii.gz"))
    gm2 = _block_mean_to_grid(gm1, ref).astype(np.float32)
    gm2 = np.clip(gm2, 0.0, 1.0)
    tmp.unlink()
    hdr = nb.Nifti1Header()
    hdr.set_xyzt_units("mm")
    img = nb.Nifti1Image(gm2, ref.affine, hdr)
    img.set_qform(ref.affine, 1)
    img.set_sform(ref.affine, 4)
    img.header["descrip"] = b"tmstarget GM probseg (Atropos 3-class, 2mm block mean)"
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(img.to_bytes())
    Path(args.out).write_bytes(buf.getvalue())
    brain2 = np.asarray(ref.dataobj) > 0
    print(json.dumps({"out": args.out, "seconds": round(time.perf_counter() - t0, 1),
                      "class_means_T1w": [round(m, 2) for m in means],
                      "gm_voxels_ge_0.5": int((gm2 >= 0.5).sum()),
                      "gm_fraction_of_brain_ge_0.5": round(float((gm2[brain2] >= 0.5).mean()), 3)},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
