"""How far does the built-in path put the target from the truth, over many simulated participants?

One simulated realisation is one draw. ``data_sample_raw`` has two participants; whether their
``classic`` targets land within 6 mm of the planted truth says little about the built-in path on
its own (see ``ablate_raw_target.py``: most of sub-02's 7.7 mm miss is already in that
realisation's simulated map). This script re-draws the raw twin with other master seeds (signal,
noise **and** head motion change; anatomy, placement, acquisition and planted targets stay those
of ``data_sample_raw``) and runs each draw through the **unmodified** built-in functional path
(:func:`tmstarget.builtin.functional_workflow`: dummy detection, motion correction,
coregistration, one-step resampling, masks, confounds) and then the unchanged downstream pipeline
(denoise, seed, search, targets). The anatomical step is reused from a finished run of
``data_sample_raw``: the T1w is the same in every draw and that step is deterministic, so
re-running it would give the same files.

Seed ``20241124`` (the first draw) is the sample itself, so the first row reproduces the run.

As a reference, the same master seeds drive the *derivative* simulator
(:func:`tmstarget.simulate.make_dataset`, the fMRIPrep-like sample on the 4 mm MNI grid, one
150-volume run per participant, no acquisition or registration step): the spread of that column is
what the signal model alone gives; the two columns are different draws, not pairs.

Prints the distances and writes ``realisations.tsv`` and ``summary.json`` under ``--out``, and
the summary with the machine's facts to ``benchmarks/results/raw_target_realisations.json``
(+ ``.tsv``).

Usage (about 3-4 min per draw for both participants, single-threaded; ``--jobs`` draws at
once)::

    tmstarget data_sample_raw /tmp/run participant
    python benchmarks/raw_target_realisations.py /tmp/run --draws 10 --jobs 2 --out /tmp/real
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SEED = 20241124
METHODS = ("classic", "cluster")


def _run_cli(tree: Path, out: Path, cfg_text: str) -> pd.DataFrame:
    cfg = out.parent / f"{out.name}_config.yaml"
    cfg.write_text(cfg_text)
    res = subprocess.run([sys.executable, "-m", "tmstarget.cli", str(tree), str(out),
                          "participant", "--configfile", str(cfg), "--cores", "1"],
                         capture_output=True, text=True, check=False, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"pipeline failed on {tree}\n{res.stderr[-3000:]}")
    return pd.read_csv(out / "targets.tsv", sep="\t")


def _builtin_draw(seed: int, run_builtin: Path, work: Path) -> pd.DataFrame:
    """One draw of the raw twin through the built-in functional path + downstream."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    import tmstarget.builtin as bi
    from tmstarget.simulate_raw import RAW_SUBJECTS, make_raw_dataset

    raw = work / "raw"
    make_raw_dataset(raw, seed=seed, clean=True)
    tree = work / "builtin"
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copy(run_builtin / "dataset_description.json", tree.mkdir(parents=True) or tree)
    scratch = work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    for spec in RAW_SUBJECTS:
        label = spec.label
        shutil.copytree(run_builtin / f"sub-{label}" / "anat", tree / f"sub-{label}" / "anat")
        stem = f"sub-{label}_task-rest"
        bold = raw / f"sub-{label}" / "func" / f"{stem}_bold.nii.gz"
        tr = json.loads(bold.with_name(f"{stem}_bold.json").read_text())["RepetitionTime"]
        bi.functional_workflow(bold, bi.AnatResult.in_folder(tree / f"sub-{label}" / "anat",
                                                             label),
                               tree / f"sub-{label}" / "func", stem, scratch,
                               bi.settings_from_config(None), tr)
    targets = _run_cli(tree, work / "out",
                       "native:\n  enabled: false\nreproducibility:\n  enabled: false\n")
    return targets.assign(path="builtin", seed=seed)


def _derivative_draw(seed: int, work: Path) -> pd.DataFrame:
    """The same master seed through the derivative simulator (one run each) + pipeline."""
    from dataclasses import replace

    from tmstarget.simulate import DEFAULT_SUBJECTS, make_dataset

    subjects = [replace(s, runs=(None,), sessions=(None,)) for s in DEFAULT_SUBJECTS[:2]]
    make_dataset(work / "deriv", subjects=subjects, seed=seed, with_anat=False, clean=True)
    targets = _run_cli(work / "deriv", work / "deriv_out",
                       "native:\n  enabled: false\nreproducibility:\n  enabled: false\n")
    return targets.assign(path="derivative", seed=seed)


def _draw(seed: int, run_builtin: Path, out: Path, derivative: bool,
          reuse: bool = False) -> pd.DataFrame:
    work = out / f"seed-{seed}"
    if reuse and (work / "targets.tsv").is_file():
        return pd.read_csv(work / "targets.tsv", sep="\t")
    work.mkdir(parents=True, exist_ok=True)
    frames = [_builtin_draw(seed, run_builtin, work)]
    if derivative:
        frames.append(_derivative_draw(seed, work))
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(work / "targets.tsv", sep="\t", index=False)
    for sub in ("raw", "scratch", "deriv"):  # keep targets and the pipeline outputs only
        shutil.rmtree(work / sub, ignore_errors=True)
    return table


def summarise(table: pd.DataFrame, raw: Path, limit_mm: float = 6.0) -> dict:
    """Distances to the planted truth (and template position) and pass counts per path/method."""
    truth = pd.read_csv(raw / "truth.tsv", sep="\t").set_index("participant_id")
    lm = pd.read_csv(raw / "truth" / "landmarks.tsv", sep="\t").set_index("name")
    xyz = table[["x", "y", "z"]].to_numpy(float)
    planted = truth.loc[table.participant_id, ["x", "y", "z"]].to_numpy(float)
    tpl = lm.loc[[f"target_{p}" for p in table.participant_id],
                 ["x_template", "y_template", "z_template"]].to_numpy(float)
    table["mm_to_truth"] = np.linalg.norm(xyz - planted, axis=1).round(2)
    table["mm_to_template_position"] = np.linalg.norm(xyz - tpl, axis=1).round(2)
    summary: dict = {"limit_mm": limit_mm, "seeds": sorted(set(table.seed.tolist()))}
    for (path, method, pid), g in table.groupby(["path", "method", "participant_id"]):
        d = g.mm_to_truth.to_numpy()
        summary.setdefault(path, {}).setdefault(method, {})[pid] = {
            "n": int(d.size), "within_limit": int((d <= limit_mm).sum()),
            "median_mm": round(float(np.median(d)), 2), "max_mm": round(float(d.max()), 2),
            "mm_to_truth": [round(float(x), 2) for x in d]}
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="output folder of a built-in-path run of "
                                           "data_sample_raw (its anatomical outputs are reused)")
    ap.add_argument("--draws", type=int, default=10,
                    help="number of master seeds, from the sample's own (20241124) upwards")
    ap.add_argument("--jobs", type=int, default=2, help="draws run at once (1 thread each)")
    ap.add_argument("--no-derivative", action="store_true",
                    help="skip the derivative-simulator reference column")
    ap.add_argument("--out", type=Path, default=Path("realisations"),
                    help="work folder (one seed-N/ per draw, kept: targets and pipeline outputs)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse draws already finished in --out (seed-N/targets.tsv)")
    ap.add_argument("--results", type=Path,
                    default=REPO / "benchmarks" / "results" / "raw_target_realisations.json",
                    help="summary with the machine's facts (default: benchmarks/results/)")
    args = ap.parse_args(argv)
    run_builtin = args.run / "sourcedata" / "builtin"
    if not (run_builtin / "sub-01" / "anat").is_dir():
        raise SystemExit(f"{run_builtin} has no built-in anatomical outputs: run "
                         "`tmstarget data_sample_raw RUN participant` first")
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [SAMPLE_SEED + k for k in range(args.draws)]
    frames = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(_draw, s, run_builtin, args.out, not args.no_derivative,
                               args.reuse): s
                   for s in seeds}
        for fut in as_completed(futures):
            frames.append(fut.result())  # a failed draw stops the script with its error
            print(f"seed {futures[fut]} done ({len(frames)}/{len(seeds)})", flush=True)
    table = pd.concat(frames, ignore_index=True)
    summary = summarise(table, REPO / "data_sample_raw")
    cols = ["path", "seed", "participant_id", "method", "x", "y", "z", "r", "mm_to_truth",
            "mm_to_template_position"]
    table = table[[c for c in cols if c in table.columns]].sort_values(
        ["path", "participant_id", "method", "seed"])
    table.to_csv(args.out / "realisations.tsv", sep="\t", index=False)
    summary["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform(), "itk_threads": 1,
                          "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())}
    summary["data"] = {"sample": "data_sample_raw (SIMULATED BOLD on real Colin27 anatomy)",
                       "draws": len(seeds), "master_seeds": seeds,
                       "anatomy_from": "a finished built-in run of data_sample_raw"}
    for path in (args.out / "summary.json", args.results):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1) + "\n")
    table.to_csv(args.results.with_suffix(".tsv"), sep="\t", index=False)
    print(table.to_string(index=False))
    for path in ("builtin", "derivative"):
        for method in METHODS:
            for pid, s in summary.get(path, {}).get(method, {}).items():
                print(f"{path:10s} {method:8s} {pid}: {s['within_limit']}/{s['n']} within "
                      f"{summary['limit_mm']} mm, median {s['median_mm']} mm, max {s['max_mm']} mm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
