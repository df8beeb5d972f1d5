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

Paths (``--paths``, default ``builtin,derivative``):

``builtin``           the raw twin through the unmodified built-in functional path;
``derivative``        reference: the derivative simulator (:func:`tmstarget.simulate.make_dataset`,
                      the fMRIPrep-like sample, one 150-volume run per participant) with the same
                      master seed; a *different* draw, simulated on the 4 mm MNI analysis grid
                      whose voxel centres are the planted targets, with no acquisition or
                      registration: an optimistic floor, not a pair;
``simulation_grid``   the draw's own signal on the 2 mm simulation grid (no acquisition) placed in
                      the T1w world by the known affine, through the built-in functional path
                      with identity motion and coregistration (resampling through the SyN to the
                      template still runs);
``simulation_frame``  the draw's own 2 mm signal written as an MNI-space derivative in the
                      simulation frame: no acquisition and no normalisation.

``simulation_frame`` -> ``simulation_grid`` is the cost of normalising Colin27's anatomy to the
template; ``simulation_grid`` -> ``builtin`` that of the 4 mm oblique acquisition with head
motion and of the estimated motion and coregistration.

Prints the distances and writes ``realisations.tsv`` and ``summary.json`` under ``--out``, and
the summary with the machine's facts to ``benchmarks/results/raw_target_realisations.json``
(+ ``.tsv``).

Usage (about 6.5 min per draw for both participants along the two default paths,
+4 min for the two simulation paths, single-threaded; ``--jobs`` draws at once)::

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
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
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


#: Paths a draw can take (``--paths``); the first two are the default.
PATHS = {
    "builtin": "the raw twin (4 mm oblique acquisition, head motion) through the unmodified "
               "built-in functional path",
    "derivative": "the derivative simulator with the same master seed (a different draw, "
                  "on the 4 mm analysis grid)",
    "simulation_grid": "the draw's own signal on the 2 mm simulation grid, no acquisition, "
                       "through the built-in functional path with identity motion and "
                       "coregistration (resampling through the SyN to the template still runs)",
    "simulation_frame": "the draw's own 2 mm signal written as an MNI-space derivative in the "
                        "simulation frame: no acquisition and no normalisation",
}
_CONFIG = "native:\n  enabled: false\nreproducibility:\n  enabled: false\n"


@contextmanager
def captured_signals() -> Iterator[list]:
    """While active, every :func:`tmstarget.simulate_raw.make_raw_dataset` call appends each
    participant's ``(grid, data, motion)`` from ``simulate_run`` (in ``RAW_SUBJECTS`` order)."""
    import tmstarget.simulate_raw as sr

    signals: list = []
    original = sr.simulate_run

    def keep(rng, grid, *a, **k):
        data, motion = original(rng, grid, *a, **k)
        signals.append((grid, data, motion))
        return data, motion

    sr.simulate_run = keep
    try:
        yield signals
    finally:
        sr.simulate_run = original


def simulation_grid_bold(grid, data: np.ndarray, t1w_from_mni, path: Path) -> Path:
    """Write a participant's simulated signal on the 2 mm simulation grid as a 4D image placed
    in its T1w world by the known affine (no acquisition), TR 2 s."""
    vol = np.zeros((*grid.mask.shape, data.shape[0]), dtype=np.float32)
    vol[grid.mask] = data.T
    img = nib.Nifti1Image(vol, np.asarray(t1w_from_mni) @ grid.affine)
    img.header.set_zooms((*img.header.get_zooms()[:3], 2.0))
    nib.save(img, path)
    return path


def _generate(seed: int, work: Path) -> tuple[Path, dict]:
    """Write the raw twin for ``seed``; return it and each participant's simulated signal."""
    from tmstarget.simulate_raw import RAW_SUBJECTS, make_raw_dataset

    with captured_signals() as signals:
        make_raw_dataset(work / "raw", seed=seed, clean=True)
    return work / "raw", {spec.label: sig for spec, sig in zip(RAW_SUBJECTS, signals)}


def _builtin_tree(run_builtin: Path, tree: Path) -> None:
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    shutil.copy(run_builtin / "dataset_description.json", tree)


def _functional(bold: Path, run_builtin: Path, tree: Path, label: str, scratch: Path,
                identity: bool) -> None:
    """Copy the run's anatomy, then the built-in functional workflow (optionally with
    identity motion and coregistration: the image is already in the T1w world)."""
    import tmstarget.builtin as bi

    shutil.copytree(run_builtin / f"sub-{label}" / "anat", tree / f"sub-{label}" / "anat")
    stem = f"sub-{label}_task-rest"
    n = nib.load(str(bold)).shape[-1]
    saved = bi._motion_correct, bi._coregister
    if identity:
        bi._motion_correct = lambda *a, **k: np.tile(np.eye(4), (n, 1, 1))
        bi._coregister = lambda *a, **k: np.eye(4)
    try:
        bi.functional_workflow(bold, bi.AnatResult.in_folder(tree / f"sub-{label}" / "anat",
                                                             label),
                               tree / f"sub-{label}" / "func", stem, scratch,
                               bi.settings_from_config(None), 2.0)
    finally:
        bi._motion_correct, bi._coregister = saved


def _path_targets(path: str, seed: int, run_builtin: Path, work: Path, raw: Path | None,
                  signals: dict | None) -> pd.DataFrame:
    """Targets of one draw along one path (both participants)."""
    from dataclasses import replace

    import tmstarget.simulate as sim
    from tmstarget.simulate_raw import RAW_SUBJECTS, read_truth

    scratch = work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    tree = work / path
    if path == "derivative":
        subjects = [replace(s, runs=(None,), sessions=(None,)) for s in sim.DEFAULT_SUBJECTS[:2]]
        sim.make_dataset(tree, subjects=subjects, seed=seed, with_anat=False, clean=True)
    elif path == "simulation_frame":
        if tree.exists():
            shutil.rmtree(tree)
        sim._write_json(tree / "dataset_description.json", {
            "Name": "simulation frame (benchmark)", "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "tmstarget-simulator", "Version": sim.SIMULATOR_VERSION}]})
        for spec in RAW_SUBJECTS:
            grid, data, motion = signals[spec.label]
            dspec = sim.SubjectSpec(spec.label, spec.target_mm)
            sim._write_run(tree / f"sub-{spec.label}" / "func", dspec, None, None, grid, data,
                           motion, 2.0, len(sim.NSS_FACTORS))
    else:
        _builtin_tree(run_builtin, tree)
        for spec in RAW_SUBJECTS:
            label = spec.label
            if path == "builtin":
                bold = raw / f"sub-{label}" / "func" / f"sub-{label}_task-rest_bold.nii.gz"
            else:  # simulation_grid: the 2 mm signal placed in the T1w world by the known affine
                grid, data, _ = signals[label]
                meta, _ = read_truth(raw, label)
                bold = simulation_grid_bold(grid, data, meta["t1w_from_mni"],
                                            scratch / f"sub-{label}_simulation-grid_bold.nii.gz")
            _functional(bold, run_builtin, tree, label, scratch, path == "simulation_grid")
    targets = _run_cli(tree, work / f"{path}_out", _CONFIG)
    return targets.assign(path=path, seed=seed)


def _draw(seed: int, run_builtin: Path, out: Path, paths: tuple[str, ...],
          reuse: bool = False) -> pd.DataFrame:
    """Targets of one draw along each path; ``seed-N/targets_<path>.tsv`` per path."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    work = out / f"seed-{seed}"
    work.mkdir(parents=True, exist_ok=True)
    frames, raw, signals = [], None, None
    for path in paths:
        done = work / f"targets_{path}.tsv"
        if reuse and done.is_file():
            frames.append(pd.read_csv(done, sep="\t"))
            continue
        if path != "derivative" and raw is None:
            raw, signals = _generate(seed, work)
        table = _path_targets(path, seed, run_builtin, work, raw, signals)
        table.to_csv(done, sep="\t", index=False)
        frames.append(table)
    for sub in ("raw", "scratch", "derivative", "simulation_frame"):  # keep targets + outputs
        shutil.rmtree(work / sub, ignore_errors=True)
    return pd.concat(frames, ignore_index=True)


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
    summary: dict = {"limit_mm": limit_mm}
    for (path, method, pid), g in table.groupby(["path", "method", "participant_id"]):
        d = g.mm_to_truth.to_numpy()
        summary.setdefault(path, {}).setdefault(method, {})[pid] = {
            "n": int(d.size), "within_limit": int((d <= limit_mm).sum()),
            "median_mm": round(float(np.median(d)), 2), "max_mm": round(float(d.max()), 2),
            "mm_to_truth_by_seed": {int(k): round(float(x), 2)
                                    for k, x in zip(g.seed, d, strict=True)}}
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="output folder of a built-in-path run of "
                                           "data_sample_raw (its anatomical outputs are reused)")
    ap.add_argument("--draws", type=int, default=10,
                    help="number of master seeds, from the sample's own (20241124) upwards")
    ap.add_argument("--jobs", type=int, default=2, help="draws run at once (1 thread each)")
    ap.add_argument("--paths", default="builtin,derivative",
                    help="comma-separated, of: " + "; ".join(f"{k}: {v}" for k, v in PATHS.items()))
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
    paths = tuple(p.strip() for p in args.paths.split(",") if p.strip())
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        raise SystemExit(f"unknown --paths {unknown}; choose from {sorted(PATHS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [SAMPLE_SEED + k for k in range(args.draws)]
    frames = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(_draw, s, run_builtin, args.out, paths, args.reuse): s
                   for s in seeds}
        for fut in as_completed(futures):
            frames.append(fut.result())  # a failed draw stops the script with its error
            print(f"seed {futures[fut]} done ({len(frames)}/{len(seeds)})", flush=True)
    table = pd.concat(frames, ignore_index=True).sort_values("seed", kind="stable")
    summary = summarise(table, REPO / "data_sample_raw")
    cols = ["path", "seed", "participant_id", "method", "x", "y", "z", "r", "mm_to_truth",
            "mm_to_template_position"]
    table = table[[c for c in cols if c in table.columns]].sort_values(
        ["path", "participant_id", "method", "seed"])
    table.to_csv(args.out / "realisations.tsv", sep="\t", index=False)
    summary["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform(), "itk_threads": 1,
                          "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())}
    summary["paths"] = {p: PATHS[p] for p in paths}
    summary["data"] = {"sample": "data_sample_raw (SIMULATED BOLD on real Colin27 anatomy)",
                       "draws": len(seeds), "master_seeds": seeds,
                       "anatomy_from": "a finished built-in run of data_sample_raw"}
    for path in (args.out / "summary.json", args.results):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1) + "\n")
    table.to_csv(args.results.with_suffix(".tsv"), sep="\t", index=False)
    print(table.to_string(index=False))
    for path in paths:
        for method in METHODS:
            for pid, s in summary.get(path, {}).get(method, {}).items():
                print(f"{path:16s} {method:8s} {pid}: {s['within_limit']}/{s['n']} within "
                      f"{summary['limit_mm']} mm, median {s['median_mm']} mm, max {s['max_mm']} mm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
