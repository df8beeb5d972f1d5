"""Where does a built-in-path target error come from? Replace estimated steps by the truth.

The raw sample (``data_sample_raw``) knows the head motion, the BOLD-to-T1w alignment
(identity: the simulated BOLD and T1w share the scanner world at zero motion) and what the
data would be without motion. This script takes a finished run of the built-in path, keeps
its anatomical outputs (N4, SyN to the template, tissue classes), and re-runs the functional
part (:func:`tmstarget.builtin.functional_workflow`: resampling, brain mask and confounds,
then denoising and targets unchanged) with:

``estimated``  the run's own motion and coregistration estimates (should reproduce the run),
``true``       the applied motion and the true coregistration instead of the estimates,
``no_motion``  a twin of the participant simulated without motion (same signal), true
               coregistration,
``no_motion_unsmoothed``  as ``no_motion``, with the denoising's spatial smoothing off.
``simulation_grid``  no simulated acquisition at all: the participant's simulated signal on the
               2 mm simulation grid, placed in the T1w world by the known affine and read as if
               it were the native BOLD (identity motion and coregistration); the built-in
               resampling, brain mask and confounds still run.

It prints each target's distance to the planted truth (``truth.tsv``, Colin27 world) and to
where the planted anatomy lies in the template (``truth/landmarks.tsv``).

Usage (about 1-2 minutes per variant on 2 cores)::

    tmstarget data_sample_raw /tmp/run participant
    python benchmarks/ablate_raw_target.py /tmp/run --participant 02 --out /tmp/ablation
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def _anat(run_builtin: Path, label: str):
    from tmstarget.builtin import AnatResult

    return AnatResult.in_folder(run_builtin / f"sub-{label}" / "anat", label)


def _no_motion_twin(out: Path, label: str) -> tuple[Path, Path]:
    """The raw sample re-simulated with zero motion (same seeds, same signal).

    Returns the twin's folder and the participant's simulated signal on the 2 mm simulation
    grid written as a 4D image in its T1w world (the ``simulation_grid`` variant's BOLD).
    """
    from raw_target_realisations import captured_signals, simulation_grid_bold

    import tmstarget.simulate_raw as sr

    original_motion = sr._raw_motion
    sr._raw_motion = lambda *a, **k: 0.0 * original_motion(*a, **k)
    try:
        with captured_signals() as signals:
            sr.make_raw_dataset(out, clean=True)
    finally:
        sr._raw_motion = original_motion
    index = [s.label for s in sr.RAW_SUBJECTS].index(label)
    grid, data, _ = signals[index]
    meta, _ = sr.read_truth(out, label)
    grid_bold = simulation_grid_bold(grid, data, meta["t1w_from_mni"],
                                     out / f"sub-{label}_simulation-grid_bold.nii.gz")
    return out, grid_bold


def _variant(name: str, raw: Path, run_builtin: Path, label: str, work: Path,
             smoothing: float | None, bold: Path | None = None) -> pd.DataFrame:
    """Functional workflow with parts replaced by the truth, then the unchanged downstream."""
    import tmstarget.builtin as bi
    from tmstarget.simulate_raw import motion_matrices, read_truth

    func_src = run_builtin / f"sub-{label}" / "func"
    stem = f"sub-{label}_task-rest"
    tree = work / name / "builtin"
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copytree(run_builtin / f"sub-{label}" / "anat", tree / f"sub-{label}" / "anat")
    shutil.copy(run_builtin / "dataset_description.json", tree)
    est = pd.read_csv(func_src / f"{stem}_desc-hmc_motion.tsv", sep="\t").iloc[:, :6]
    qc = json.loads((func_src / f"{stem}_desc-builtin_qc.json").read_text())
    from tmstarget.itk import load_itk_affine

    if name == "estimated":
        mats = motion_matrices(est.to_numpy(), qc["motion_centre_mm"])
        coreg = load_itk_affine(func_src / f"{stem}_from-boldref_to-T1w_mode-image_desc-coreg_xfm.txt")
    elif bold is not None:  # no acquisition: identity motion and coregistration
        mats = np.tile(np.eye(4), (len(est), 1, 1))
        coreg = np.eye(4)
    else:
        meta, applied = read_truth(raw, label)
        mats = motion_matrices(applied.to_numpy(), meta["motion_centre_mm"])
        coreg = np.eye(4)
    saved = bi._motion_correct, bi._coregister
    bi._motion_correct = lambda *a, **k: mats
    bi._coregister = lambda *a, **k: coreg
    try:
        bi.functional_workflow(bold or raw / f"sub-{label}" / "func" / f"{stem}_bold.nii.gz",
                               _anat(tree, label), tree / f"sub-{label}" / "func", stem,
                               work / name, bi.settings_from_config(None), 2.0)
    finally:
        bi._motion_correct, bi._coregister = saved
    cfg = work / name / "config.yaml"
    lines = ["native:\n  enabled: false\n", "reproducibility:\n  enabled: false\n"]
    if smoothing is not None:
        lines.append(f"denoise:\n  smoothing_fwhm: {smoothing}\n")
    cfg.write_text("".join(lines))
    out = work / name / "out"
    res = subprocess.run([sys.executable, "-m", "tmstarget.cli", str(tree), str(out),
                          "participant", "--configfile", str(cfg), "--cores", "2"],
                         capture_output=True, text=True, check=False, cwd=REPO)
    if res.returncode != 0:
        raise SystemExit(f"{name}: pipeline failed\n{res.stderr[-3000:]}")
    t = pd.read_csv(out / "targets.tsv", sep="\t")
    return t[t.participant_id == f"sub-{label}"].assign(variant=name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="output folder of a built-in-path run")
    ap.add_argument("--raw", type=Path, default=REPO / "data_sample_raw",
                    help="the raw sample the run used (the motion-free twin is re-simulated "
                         "from tmstarget.simulate_raw's defaults, i.e. data_sample_raw)")
    ap.add_argument("--participant", default="02")
    ap.add_argument("--out", type=Path, default=Path("ablation"))
    args = ap.parse_args(argv)
    label = args.participant.removeprefix("sub-")
    run_builtin = args.run / "sourcedata" / "builtin"
    args.out.mkdir(parents=True, exist_ok=True)
    nm, grid_bold = _no_motion_twin(args.out / "raw_no_motion", label)
    rows = [_variant("estimated", args.raw, run_builtin, label, args.out, None),
            _variant("true", args.raw, run_builtin, label, args.out, None),
            _variant("no_motion", nm, run_builtin, label, args.out, None),
            _variant("no_motion_unsmoothed", nm, run_builtin, label, args.out, 0),
            _variant("simulation_grid", nm, run_builtin, label, args.out, None, grid_bold)]
    table = pd.concat(rows, ignore_index=True)
    truth = pd.read_csv(args.raw / "truth.tsv", sep="\t").set_index("participant_id")
    lm = pd.read_csv(args.raw / "truth" / "landmarks.tsv", sep="\t").set_index("name")
    pid = f"sub-{label}"
    planted = truth.loc[pid, ["x", "y", "z"]].to_numpy(float)
    key = f"target_{pid}"
    tpl = lm.loc[key, ["x_template", "y_template", "z_template"]].to_numpy(float) \
        if key in lm.index else None
    xyz = table[["x", "y", "z"]].to_numpy(float)
    table["mm_to_truth"] = np.linalg.norm(xyz - planted, axis=1).round(1)
    if tpl is not None:
        table["mm_to_template_position"] = np.linalg.norm(xyz - tpl, axis=1).round(1)
    cols = ["variant", "method", "x", "y", "z", "r", "mm_to_truth"] + \
        (["mm_to_template_position"] if tpl is not None else [])
    print(table[cols].to_string(index=False))
    table[cols].to_csv(args.out / "ablation.tsv", sep="\t", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
