#!/usr/bin/env python
"""Check that the planted targets of a simulated dataset are recoverable with plain nilearn.

Independent of the tmstarget pipeline: smooth 6 mm, ``nilearn.signal.clean`` with 6 motion
+ WM + CSF (+ global signal) confounds from ``load_confounds``, FD > 0.5 mm scrubbing,
non-steady-state volumes dropped, Butterworth 0.009-0.08 Hz, detrend, z-score; runs are
cleaned separately and concatenated; the sgACC sphere mean is correlated with every voxel.

Usage: ``python scripts/check_sample_data.py data_sample``
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nilearn import image, signal
from nilearn.interfaces.fmriprep import load_confounds
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tmstarget.regions import default_search_region, sphere_mask, voxel_centers_mm  # noqa: E402
from tmstarget.simulate import SIM_SGACC_CENTER_MM as SGACC_CENTER_MM  # noqa: E402
from tmstarget.simulate import SIM_SGACC_RADIUS_MM as SGACC_RADIUS_MM  # noqa: E402


def clean_run(bold: Path, gsr: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cleaned in-mask time series (time x voxels), mask and affine of one run."""
    mask_path = Path(str(bold).replace("desc-preproc_bold", "desc-brain_mask"))
    mimg = nib.load(mask_path)
    mask = np.asarray(mimg.dataobj) > 0
    strategy = ["motion", "wm_csf"] + (["global_signal"] if gsr else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conf, _ = load_confounds(
            str(bold), strategy=tuple(strategy), motion="basic", wm_csf="basic",
            global_signal="basic")
    # No scrubbing here: nilearn's sample_mask path leaks censored volumes (README, "Known
    # upstream issues"); the leading non-steady-state volumes are dropped by hand.
    raw = pd.read_csv(str(bold).split("_space-")[0] + "_desc-confounds_timeseries.tsv", sep="\t")
    nss = [c for c in raw.columns if c.startswith("non_steady_state_outlier")]
    n0 = int((raw[nss].to_numpy() > 0).any(axis=1).sum()) if nss else 0
    img = image.smooth_img(str(bold), 6.0)
    x = np.asarray(img.dataobj, dtype=np.float64)[mask].T[n0:]
    tr = float(img.header.get_zooms()[3])
    y = signal.clean(x, confounds=conf.values[n0:], detrend=True,
                     standardize="zscore_sample", filter="butterworth", low_pass=0.08,
                     high_pass=0.009, t_r=tr)
    return y, mask, mimg.affine


def targets(rmap: np.ndarray, region: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classic (most negative voxel) and cluster (|r|-weighted CoG) targets, world mm."""
    xyz = voxel_centers_mm(region.shape, affine)
    vals = np.where(region, rmap, np.inf)
    classic = xyz[np.unravel_index(np.argmin(vals), vals.shape)]
    thr = np.percentile(rmap[region], 10)
    sel = region & (rmap <= thr)
    lab, n = ndi.label(sel, structure=np.ones((3, 3, 3)))
    sizes = ndi.sum(sel, lab, index=np.arange(1, n + 1))
    big = lab == (int(np.argmax(sizes)) + 1)
    w = np.abs(rmap[big])
    return classic, (xyz[big] * w[:, None]).sum(0) / w.sum()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    args = ap.parse_args(argv)
    truth = pd.read_csv(args.root / "truth.tsv", sep="\t", keep_default_na=False)
    ok = True
    for _, t in truth.iterrows():
        sub = args.root / t.participant_id
        func = (sub / t.session_id if t.session_id != "n/a" else sub) / "func"
        runs = sorted(func.glob("*_desc-preproc_bold.nii.gz"))
        true = np.array([t.x, t.y, t.z], dtype=float)
        for gsr in (True, False):
            ys, seeds = [], []
            for run in runs:
                y, mask, aff = clean_run(run, gsr)
                seed = sphere_mask(mask.shape, aff, SGACC_CENTER_MM, SGACC_RADIUS_MM)[mask]
                ys.append(y)
                seeds.append(y[:, seed].mean(axis=1))
            y = np.concatenate(ys)
            s = np.concatenate(seeds)
            s = (s - s.mean()) / s.std()
            yz = (y - y.mean(0)) / y.std(0)
            r = yz.T @ s / len(s)
            rmap = np.zeros(mask.shape)
            rmap[mask] = r
            region = default_search_region(mask, aff)
            classic, cluster = targets(rmap, region, aff)
            dc, dk = np.linalg.norm(classic - true), np.linalg.norm(cluster - true)
            r_true = rmap[tuple(np.round(np.linalg.solve(aff, np.append(true, 1))[:3]).astype(int))]
            print(f"{t.participant_id} {t.session_id} gsr={gsr!s:5} runs={len(runs)} "
                  f"r(truth)={r_true:+.2f} min r={rmap[region].min():+.2f} "
                  f"classic={np.round(classic, 1)} d={dc:.1f} mm "
                  f"cluster={np.round(cluster, 1)} d={dk:.1f} mm")
            if gsr:
                ok &= dc <= 4.0 and dk <= 4.0
    print("RECOVERABLE" if ok else "NOT RECOVERABLE")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
