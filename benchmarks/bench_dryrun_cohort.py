#!/usr/bin/env python
"""Cohort dry-run benchmark (issues 6, 21): plan a 100- (1,000-) participant fMRIPrep tree in < 10 s.

Not a test. Builds (once, cached) an fMRIPrep-like derivatives tree of N participants whose
files are tiny: each BOLD/mask/T1w ``.nii.gz`` is a valid gzipped NIfTI *header only* (so
``nibabel.load(...).shape`` works — the workflow's memory requests read it — and reports a
97×115×97×1,200 BOLD), sidecars are small valid JSON, confounds TSVs hold a header line and the
transforms are empty files. Besides the files tmstarget uses, each participant gets the other
files fMRIPrep writes (T1w-space BOLD, boldref, dseg/probseg, surfaces, figures, ...) so that
indexing sees a realistic number of files.

It then times, each in a fresh process:

``discover``  ``tmstarget.plan.build_plan`` (file index + pairing), in-process timer
``dry-run``   ``tmstarget FMRIPREP OUT participant -n`` (the CLI → ``snakemake -n``), wall time
              and CPU time (user + system of the whole process tree: the machine may be shared)

Usage::

    python benchmarks/bench_dryrun_cohort.py                 # 100 participants
    python benchmarks/bench_dryrun_cohort.py -n 1000 --repeat 3 --cores 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SPACE = "MNI152NLin2009cAsym"


def _header(shape: tuple[int, ...], zooms: tuple[float, ...], dtype: str = "float32") -> bytes:
    import nibabel as nb
    import numpy as np

    hdr = nb.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.dtype(dtype))
    hdr.set_zooms(zooms)
    hdr.set_xyzt_units("mm", "sec")
    aff = np.array([[2.0, 0, 0, -96.5], [0, 2.0, 0, -132.5], [0, 0, 2.0, -78.5], [0, 0, 0, 1]])
    hdr.set_qform(aff, 4)
    hdr.set_sform(aff, 4)
    hdr.set_data_offset(352)
    return gzip.compress(hdr.binaryblock + b"\x00" * 4, mtime=0)


def build_tree(root: Path, n: int) -> Path:
    """Write (or reuse) the tree; returns its root."""
    tree = root / f"fmriprep-{n}"
    done = tree / ".complete"
    if done.is_file():
        return tree
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    (tree / "dataset_description.json").write_text(json.dumps({
        "Name": "tmstarget dry-run benchmark (tiny files)", "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.1"}]}))
    bold_h = _header((97, 115, 97, 1200), (2.0, 2.0, 2.0, 2.0))
    mask_h = _header((97, 115, 97), (2.0, 2.0, 2.0), "uint8")
    t1_h = _header((176, 256, 256), (1.0, 1.0, 1.0), "int16")
    side = json.dumps({"RepetitionTime": 2.0, "TaskName": "rest", "SkullStripped": False})
    conf_cols = ["global_signal", "csf", "white_matter", "framewise_displacement"] + [
        f"{m}{s}" for m in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
        for s in ("", "_derivative1", "_power2", "_derivative1_power2")]
    for i in range(1, n + 1):
        sub = f"sub-{i:03d}"
        anat, func, figs = tree / sub / "anat", tree / sub / "func", tree / sub / "figures"
        for d in (anat, func, figs):
            d.mkdir(parents=True)
        a = f"{sub}_"
        files: dict[Path, bytes] = {
            anat / f"{a}desc-preproc_T1w.nii.gz": t1_h,
            anat / f"{a}desc-preproc_T1w.json": b"{}",
            anat / f"{a}desc-brain_mask.nii.gz": t1_h,
            anat / f"{a}from-T1w_to-{SPACE}_mode-image_xfm.h5": b"",
            anat / f"{a}from-{SPACE}_to-T1w_mode-image_xfm.h5": b"",
            anat / f"{a}from-fsnative_to-T1w_mode-image_xfm.txt": b"",
            anat / f"{a}space-{SPACE}_desc-preproc_T1w.nii.gz": t1_h,
            anat / f"{a}space-{SPACE}_desc-brain_mask.nii.gz": t1_h,
            anat / f"{a}dseg.nii.gz": t1_h,
            anat / f"{a}space-{SPACE}_dseg.nii.gz": t1_h,
        }
        for lab in ("CSF", "GM", "WM"):
            files[anat / f"{a}label-{lab}_probseg.nii.gz"] = t1_h
            files[anat / f"{a}space-{SPACE}_label-{lab}_probseg.nii.gz"] = t1_h
        for hemi in ("L", "R"):
            for surf in ("white", "pial", "midthickness", "inflated"):
                files[anat / f"{a}hemi-{hemi}_{surf}.surf.gii"] = b""
        f = f"{sub}_task-rest_"
        files.update({
            func / f"{f}space-{SPACE}_desc-preproc_bold.nii.gz": bold_h,
            func / f"{f}space-{SPACE}_desc-preproc_bold.json": side.encode(),
            func / f"{f}space-{SPACE}_desc-brain_mask.nii.gz": mask_h,
            func / f"{f}space-{SPACE}_desc-brain_mask.json": b"{}",
            func / f"{f}space-{SPACE}_boldref.nii.gz": mask_h,
            func / f"{f}space-T1w_desc-preproc_bold.nii.gz": bold_h,
            func / f"{f}space-T1w_desc-preproc_bold.json": side.encode(),
            func / f"{f}space-T1w_desc-brain_mask.nii.gz": mask_h,
            func / f"{f}space-T1w_boldref.nii.gz": mask_h,
            func / f"{f}desc-confounds_timeseries.tsv": ("\t".join(conf_cols) + "\n").encode(),
            func / f"{f}desc-confounds_timeseries.json": b"{}",
            func / f"{f}from-scanner_to-T1w_mode-image_xfm.txt": b"",
            func / f"{f}from-T1w_to-scanner_mode-image_xfm.txt": b"",
        })
        for fig in ("dseg", "t1_2_mni", "reconall", "about", "summary"):
            files[figs / f"{sub}_desc-{fig}_T1w.svg"] = b""
        for fig in ("carpetplot", "rois", "compcorvar", "confoundcorr", "bbregister"):
            files[figs / f"{sub}_task-rest_desc-{fig}_bold.svg"] = b""
        for p, data in files.items():
            p.write_bytes(data)
        (tree / f"{sub}.html").write_text("<html></html>")
    done.write_text(str(n))
    return tree


def _discover_child(tree: str, out: str) -> None:
    sys.path.insert(0, str(REPO / "src"))
    import yaml

    t0 = time.perf_counter()
    from tmstarget.plan import build_plan

    t_import = time.perf_counter() - t0
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg.update(fmriprep_dir=tree, output_dir=out)
    t0 = time.perf_counter()
    plan = build_plan(cfg)
    dt_ = time.perf_counter() - t0
    print(json.dumps({"import_s": round(t_import, 2), "build_plan_s": round(dt_, 2),
                      "units": len(plan.units), "runs": len(plan.runs),
                      "skipped": len(plan.skipped)}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--participants", type=int, default=100)
    ap.add_argument("--cache", default="/tmp/tmstarget-bench", help="where the tree is built")
    ap.add_argument("--repeat", type=int, default=2, help="dry-runs to time (default 2)")
    ap.add_argument("--profile", default=None, help="also pass --profile to the CLI")
    ap.add_argument("--cores", default="2", help="--cores for the CLI (a dry run uses none)")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--_discover", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._discover:
        _discover_child(*a._discover)
        return 0
    root = Path(a.cache)
    t0 = time.perf_counter()
    tree = build_tree(root, a.participants)
    n_files = sum(1 for _ in tree.rglob("*") if _.is_file())
    print(f"tree: {tree} ({a.participants} participants, {n_files} files, "
          f"{time.perf_counter() - t0:.1f} s to build or reuse)", flush=True)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    recs = []
    for i in range(a.repeat):
        out = root / f"dryrun-out-{a.participants}"
        if out.exists():
            shutil.rmtree(out)
        # discovery alone (fresh process)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, __file__, "--_discover", str(tree), str(out)],
                           env=env, capture_output=True, text=True)
        disc = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {
            "error": r.stderr[-500:]}
        disc["wall_s"] = round(time.perf_counter() - t0, 2)
        if out.exists():
            shutil.rmtree(out)
        cmd = [sys.executable, "-c", "import sys; from tmstarget.cli import main; "
               "sys.exit(main())", str(tree), str(out), "participant", "--cores", str(a.cores)]
        if a.profile:
            cmd += ["--profile", a.profile]
        cmd += ["-n", "--quiet"]
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(root))
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        rec = {"repeat": i + 1, "discover": disc, "dry_run_wall_s": round(wall, 2),
               "dry_run_cpu_s": round(cpu, 2), "load_avg_before": os.getloadavg(),
               "exit": r.returncode}
        if r.returncode != 0:
            rec["error"] = (r.stdout + r.stderr)[-1500:]
        recs.append(rec)
        print(f"  run {i + 1}: discovery (build_plan) {disc.get('build_plan_s')} s in a "
              f"{disc['wall_s']} s process; dry-run (CLI → snakemake -n) {wall:.1f} s wall, "
              f"{cpu:.1f} s CPU"
              + ("" if r.returncode == 0 else f"  FAILED:\n{rec['error']}"), flush=True)
    import importlib.metadata as md

    mach = {"cpu": next((ln.split(":", 1)[1].strip() for ln in
                         Path("/proc/cpuinfo").read_text().splitlines()
                         if ln.startswith("model name")), "unknown"),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "snakemake": md.version("snakemake"), "pybids": md.version("pybids"),
            "load_avg": os.getloadavg(),
            "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}
    ok = [r["dry_run_wall_s"] for r in recs if r["exit"] == 0]
    cpus = [r["dry_run_cpu_s"] for r in recs if r["exit"] == 0]
    best = min(ok) if ok else None
    text = (f"{a.participants} participants ({n_files} files): dry-run "
            + (f"best {best:.1f} s, all {ok} s wall ({cpus} s CPU)" if ok else "FAILED")
            + f" (target < 10 s: {'met' if best is not None and best < 10 else 'NOT met'}); "
            f"discovery alone {[r['discover'].get('build_plan_s') for r in recs]} s. "
            f"{mach['cpu']}, {mach['cores']} cores, Python {mach['python']}, snakemake "
            f"{mach['snakemake']}, pybids {mach['pybids']}, load average "
            f"{tuple(round(x, 2) for x in mach['load_avg'])}, {mach['date_utc']}.")
    print(text)
    res = Path(a.results)
    res.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%MZ")
    (res / f"dryrun_cohort_{stamp}.json").write_text(json.dumps(
        {"machine": mach, "participants": a.participants, "files": n_files, "runs": recs},
        indent=1))
    (res / f"dryrun_cohort_{stamp}.md").write_text(f"# Cohort dry-run {stamp}\n\n{text}\n")
    return 0 if best is not None and best < 10 else 1


if __name__ == "__main__":
    sys.exit(main())
