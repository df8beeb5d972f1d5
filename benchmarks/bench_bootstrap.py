#!/usr/bin/env python3
"""Benchmark: bootstrap target uncertainty (200 resamples) on a 2 mm, 1,200-volume run.

Compares, on the same denoised data (simulated, seeded; MNI152NLin2009cAsym 2 mm brain mask):

* ``tmstarget`` — :func:`tmstarget.reproducibility.bootstrap`: the circular-block resamples are
  integer weight vectors, and every resample's seed correlations inside the search region are
  matrix products (no voxel loop, no copies of the data);
* ``straightforward`` — what a notebook does: for each resample, index the time points
  (``data[idx]``), recompute the seed series and the whole-brain correlation map
  (``nilearn.signal.clean`` z-scoring + a dot product), then pick the targets. It is timed on
  ``--naive-resamples`` resamples (default 10) and extrapolated linearly to 200 (each resample
  costs the same); the extrapolation is stated in the output.

Wall time is measured in-process with ``time.perf_counter``; peak RSS of each path is measured in
a separate child process (``resource.getrusage(RUSAGE_CHILDREN)``). This is a benchmark, not a
test: run it by hand, e.g. ``python benchmarks/bench_bootstrap.py``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

N_VOLS = 1200
N_RESAMPLES = 200
BLOCK_VOLS = 20  # 40 s at TR 2 s (the default bootstrap_block_seconds)
METHODS = ["classic", "cluster", "weighted"]


def make_data(n_vols: int, seed: int = 7):
    """Denoised-like data: z-scored noise with a seed signal and a planted anticorrelated focus."""
    import nibabel as nb

    from tmstarget.regions import SGACC_CENTER_MM, default_search_region, sphere_mask
    from tmstarget.seedmap import CombinedData

    mimg = nb.load(Path(__file__).resolve().parents[1] / "src" / "tmstarget" / "data"
                   / "tpl-MNI152NLin2009cAsym_res-02_desc-brain_mask.nii.gz")
    brain = np.asarray(mimg.dataobj) > 0
    aff = mimg.affine
    rng = np.random.default_rng(seed)
    voxels = np.argwhere(brain).astype(np.int32)
    data = rng.standard_normal((n_vols, len(voxels)), dtype=np.float32)
    sig = rng.standard_normal(n_vols).astype(np.float32)
    seed_m = sphere_mask(brain.shape, aff, SGACC_CENTER_MM, 10)[tuple(voxels.T)]
    focus = sphere_mask(brain.shape, aff, (-40, 36, 24), 8)[tuple(voxels.T)]
    data[:, seed_m] += sig[:, None]
    data[:, focus] -= 0.5 * sig[:, None]
    data -= data.mean(axis=0)
    data /= data.std(axis=0, ddof=1)
    comb = CombinedData(data, voxels, aff, brain.shape, [n_vols])
    region = default_search_region(brain, aff)
    return comb, seed_m, np.asarray(region, bool)


def run_ours(n_vols: int, out: dict) -> None:
    from tmstarget.reproducibility import bootstrap, circular_block_bootstrap, region_data
    from tmstarget.seedmap import correlation_map, to_volume
    from tmstarget.target import find_targets

    comb, seed_m, region = make_data(n_vols)
    t0 = time.perf_counter()
    seed = comb.data[:, seed_m].mean(axis=1)
    full = find_targets(to_volume(correlation_map(comb.data, seed), comb), region, comb.affine,
                        methods=METHODS)
    counts = circular_block_bootstrap(n_vols, BLOCK_VOLS, N_RESAMPLES, seed=20261124)
    rd = region_data(comb, seed, region)
    cloud, summary = bootstrap(rd, counts, full, {})
    out["wall_s"] = time.perf_counter() - t0
    out["resamples"] = N_RESAMPLES
    out["summary"] = summary


def run_naive(n_vols: int, n_naive: int, out: dict) -> None:
    import warnings

    from nilearn import signal

    from tmstarget.reproducibility import circular_block_bootstrap
    from tmstarget.seedmap import to_volume
    from tmstarget.target import find_targets

    comb, seed_m, region = make_data(n_vols)
    counts = circular_block_bootstrap(n_vols, BLOCK_VOLS, N_RESAMPLES, seed=20261124)
    t0 = time.perf_counter()
    for b in range(n_naive):
        idx = np.repeat(np.arange(n_vols), counts[b])
        x = comb.data[idx]
        s = x[:, seed_m].mean(axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xz = signal.clean(x, detrend=False, standardize="zscore_sample", filter=False)
            sz = signal.clean(s[:, None], detrend=False, standardize="zscore_sample",
                              filter=False)[:, 0]
        r = (sz @ xz) / (len(idx) - 1)
        find_targets(to_volume(r, comb), region, comb.affine, methods=METHODS)
    wall = time.perf_counter() - t0
    out["wall_s_measured"] = wall
    out["resamples_measured"] = n_naive
    out["wall_s"] = wall / n_naive * N_RESAMPLES
    out["extrapolated"] = True


def _child(kind: str, n_vols: int, n_naive: int, q) -> None:
    out: dict = {}
    if kind == "ours":
        run_ours(n_vols, out)
    else:
        run_naive(n_vols, n_naive, out)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put(out)


def measure(kind: str, n_vols: int, n_naive: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(kind, n_vols, n_naive, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--volumes", type=int, default=N_VOLS)
    ap.add_argument("--naive-resamples", type=int, default=10)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parent / "results" / "bootstrap.json")
    a = ap.parse_args(argv)
    ours = measure("ours", a.volumes, a.naive_resamples)
    naive = measure("naive", a.volumes, a.naive_resamples)
    res = {
        "benchmark": "bootstrap of 200 circular-block resamples, targets classic+cluster+weighted",
        "volumes": a.volumes, "grid": "MNI152NLin2009cAsym 2 mm brain mask",
        "tmstarget": ours, "straightforward": naive,
        "speedup": naive["wall_s"] / ours["wall_s"],
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": mp.cpu_count(), "numpy": np.__version__},
        "date": time.strftime("%Y-%m-%d"),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2, default=float))
    print(f"tmstarget bootstrap: {ours['wall_s']:.1f} s for {N_RESAMPLES} resamples, "
          f"peak RSS {ours['peak_rss_mb']:.0f} MB")
    print(f"straightforward: {naive['wall_s']:.1f} s for {N_RESAMPLES} resamples (extrapolated "
          f"from {naive['resamples_measured']}: {naive['wall_s_measured']:.1f} s), peak RSS "
          f"{naive['peak_rss_mb']:.0f} MB")
    print(f"speed-up: {res['speedup']:.1f}x  (written to {a.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
