#!/usr/bin/env python3
"""Benchmark: the built-in (ANTsPy) preprocessing of one participant, per stage.

Data: one raw-BIDS participant made by :mod:`tmstarget.simulate_raw` (SIMULATED BOLD on the
real Colin27 anatomy): T1w 1 mm (Colin27, 181x217x181), ``--volumes`` BOLD volumes (default
300) at ``--voxel`` mm (default 2.5) in the participant's scanner space, with known motion.

Reported per stage: wall time (``time.perf_counter``) and peak resident memory of the process
while the stage ran (``/proc/self/status`` VmRSS sampled every 50 ms by a thread that reads
:data:`tmstarget.builtin.CURRENT_STAGE`), plus the whole run's peak (``ru_maxrss``). The
run happens in a child process so that the generator's memory does not count.

It also times head-motion correction of ``--mc-volumes`` volumes three ways, to justify the
default: ANTsPy's plain ``Rigid`` on the full-resolution volume (the starting point measured
in the issue), the built-in settings on the full-resolution volume, and the built-in
settings on the 4 mm registration grid (the default ``motion_resolution_mm``).

This is a benchmark, not a test: ``python benchmarks/bench_builtin.py [--threads 2]``.
``--threads 1`` (default) is the default, deterministic mode; more threads run with
``deterministic: false`` (ITK multi-threaded, outputs not bit-identical between runs).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _child(bids: str, out: str, threads: int, queue: mp.Queue) -> None:
    from tmstarget import builtin

    peaks: dict[str, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            stage = builtin.CURRENT_STAGE or "other"
            peaks[stage] = max(peaks.get(stage, 0.0), _rss_mb())
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    report = builtin.preprocess_participant(bids, Path(out) / "sourcedata" / "builtin", "01",
                                            Path(out) / "done.json",
                                            {"deterministic": threads == 1}, threads=threads)
    total = time.perf_counter() - t0
    stop.set()
    th.join()
    queue.put({"report": report, "peaks_mb": peaks, "total_s": total,
               "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0})


def _mc_variants(bids: Path, n: int) -> dict[str, float]:
    """Seconds per volume of three head-motion-correction settings on the first n volumes."""
    import ants
    import nibabel as nib
    import numpy as np

    from tmstarget.builtin import _bold_reference, _motion_correct, _to_ants

    img = nib.load(str(bids / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"))
    data = np.asarray(img.dataobj, dtype=np.float32)[..., : n + 2]
    ref = _bold_reference(data, 2)
    out = {}
    t0 = time.perf_counter()
    _motion_correct(img, data[..., 2:2 + n], ref, 4.0, "gauss-newton")
    out["gauss_newton_4mm_s_per_volume"] = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    _motion_correct(img, data[..., 2:2 + n], ref, 4.0, "ants")
    out["ants_builtin_4mm_grid_s_per_volume"] = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    fixed = _to_ants(img.slicer[..., 0], ref)
    for t in range(2, 2 + min(n, 5)):
        with tempfile.TemporaryDirectory() as tmp:
            ants.registration(fixed, _to_ants(img.slicer[..., 0], data[..., t]),
                              type_of_transform="Rigid", outprefix=tmp + "/r_")
    out["ants_rigid_default_full_res_s_per_volume"] = (time.perf_counter() - t0) / min(n, 5)
    return out


def _accuracy(bids: Path, out: Path) -> dict[str, object]:
    """The issue's accuracy checks against the simulation's truth: correlation of each
    estimated motion parameter with the applied motion, and how far the T1w landmarks land
    from where Colin27's anatomy lies in the template after the estimated normalisation."""
    import numpy as np
    import pandas as pd

    from tmstarget.builtin import MOTION_COLUMNS, SPACE
    from tmstarget.native import load_point_transform
    from tmstarget.simulate_raw import read_truth

    meta, applied = read_truth(bids, "01")
    est = pd.read_csv(next((out / "sub-01" / "func").glob("*_desc-hmc_motion.tsv")), sep="\t")
    res: dict[str, object] = {"motion_r": {c: round(float(np.corrcoef(est[c], applied[c])[0, 1]),
                                                    4) for c in MOTION_COLUMNS}}
    lm_path = bids / "truth" / "landmarks.tsv"
    if lm_path.is_file():
        lm = pd.read_csv(lm_path, sep="\t")
        sim = lm[["x", "y", "z"]].to_numpy(float)
        tpl = lm[["x_template", "y_template", "z_template"]].to_numpy(float)
        a = np.asarray(meta["t1w_from_mni"])
        xfm = load_point_transform(out / "sub-01" / "anat"
                                   / f"sub-01_from-{SPACE}_to-T1w_mode-image_xfm.h5")
        err = np.linalg.norm(xfm.map(sim @ a[:3, :3].T + a[:3, 3]) - tpl, axis=1)
        res["landmark_error_mm"] = {"max": round(float(err.max()), 2),
                                    "mean": round(float(err.mean()), 2)}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=300)
    ap.add_argument("--voxel", type=float, default=2.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mc-volumes", type=int, default=20)
    ap.add_argument("--scratch", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results")
                    / "bench_builtin.json")
    args = ap.parse_args(argv)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)

    import dataclasses

    from tmstarget.simulate_raw import RAW_SUBJECTS, make_raw_dataset

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench-builtin-"))
    bids = scratch / "raw"
    spec = dataclasses.replace(RAW_SUBJECTS[0], bold_voxel_mm=args.voxel)
    t0 = time.perf_counter()
    make_raw_dataset(bids, subjects=[spec], n_volumes=args.volumes, clean=True)
    print(f"[bench] simulated 1 participant, {args.volumes} volumes at {args.voxel} mm in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(str(bids), str(scratch / "out"), args.threads, queue))
    proc.start()
    res = queue.get()
    proc.join()
    acc = _accuracy(bids, scratch / "out" / "sourcedata" / "builtin")
    mc = _mc_variants(bids, args.mc_volumes)

    rep = res["report"]
    stages = {**rep["anat_timings_s"], **next(iter(rep["runs"].values()))["timings_s"],
              "figures_s": rep["figures_s"]}
    rows = []
    for key, secs in stages.items():
        name = key[:-2]
        rows.append({"stage": name, "wall_s": round(secs, 2),
                     "peak_rss_mb": round(res["peaks_mb"].get(name, float("nan")), 0)})
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "threads": args.threads,
                    "deterministic": args.threads == 1},
        "data": {"t1w": "Colin27 1 mm 181x217x181", "bold_volumes": args.volumes,
                 "bold_voxel_mm": args.voxel, "simulated": True},
        "stages": rows, "total_s": round(res["total_s"], 1),
        "peak_rss_mb": round(res["ru_maxrss_mb"], 0),
        "motion_correction_variants": {k: round(v, 3) for k, v in mc.items()},
        "accuracy": acc,
        "qc": next(iter(rep["runs"].values()))["qc"],
    }
    print(f"{'stage':<22}{'wall (s)':>10}{'peak RSS (MB)':>15}")
    for r in rows:
        print(f"{r['stage']:<22}{r['wall_s']:>10.1f}{r['peak_rss_mb']:>15.0f}")
    print(f"{'total':<22}{result['total_s']:>10.1f}{result['peak_rss_mb']:>15.0f}")
    for k, v in result["motion_correction_variants"].items():
        print(f"{k}: {v:.3f}")
    print(f"accuracy: {json.dumps(acc)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[bench] written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
