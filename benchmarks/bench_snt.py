#!/usr/bin/env python3
"""Benchmark: the SNT-style method (:mod:`tmstarget.snt`) on a 2 mm search region, 1,200 volumes.

Data (simulated, seeded): ``--voxels`` search-region voxels (default 10,000, the size issue 18
asks for; tmstarget's default left-DLPFC region has ~5,500 voxels in the 2 mm MNI152NLin2009cAsym
brain mask) on a 2 mm grid block, and a 10 mm sgACC sphere (~515 voxels), 1,200 volumes. Voxels
carry smooth parcel signals (so the dendrogram has realistic structure) plus noise, and one
parcel is anticorrelated with the sgACC signal.

Measured, each in a fresh child process (peak RSS of that process from
``resource.getrusage(RUSAGE_SELF)`` at its end: it includes Python, NumPy and the data):

* ``clusters``: :func:`tmstarget.snt.snt_clusters` (both clusterings, scores, ranking);
* ``bootstrap``: :func:`tmstarget.snt.snt_bootstrap`, 200 circular-block resamples re-scoring
  the fixed clusters (after one ``snt_clusters``, timed separately);
* ``split_half``: :func:`tmstarget.snt.snt_split_half` (two clusterings of 600 volumes).

Only one parcel is planted anticorrelated; the other 59 have random small net correlations, so
the rank product (size x concentration x net correlation) need not pick the planted one: the
bootstrap radius and split-half distance printed are properties of this synthetic data, not
accuracy figures (tests/test_snt.py holds the known-answer checks).

Run by hand: ``python benchmarks/bench_snt.py [--voxels N] [--out FILE]``; results go to
``benchmarks/results/bench_snt.json``.
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
BLOCK_VOLS = 20


def _data(n_vox: int, n_t: int = N_VOLS, seed: int = 20261124):
    rng = np.random.default_rng(seed)
    side = int(np.ceil(n_vox ** (1 / 3))) + 1
    ijk = np.argwhere(np.ones((side, side, side), bool))[:n_vox]
    xyz = ijk * 2.0 + np.array([-60.0, 10.0, 20.0])
    # 60 parcels (nearest of 60 random centres), each with its own smooth signal
    cent = xyz[rng.choice(n_vox, 60, replace=False)]
    lab = np.argmin(((xyz[:, None, :] - cent[None]) ** 2).sum(-1), axis=1)
    k = np.ones(5) / 5
    sm = lambda: np.convolve(rng.standard_normal(n_t + 8), k, "same")[4:n_t + 4]
    s = sm()
    sig = np.stack([sm() for _ in range(60)], 1)
    sig[:, 0] = -0.6 * s + 0.8 * sig[:, 0]
    x = (sig[:, lab] + 0.35 * rng.standard_normal((n_t, n_vox))).astype(np.float32)
    g = np.argwhere(np.ones((11, 11, 11), bool)) - 5
    g = g[(g ** 2).sum(1) <= 25]  # 10 mm sphere at 2 mm
    xs = (s[:, None] + 0.35 * rng.standard_normal((n_t, len(g)))).astype(np.float32)
    return x, xyz, xs, g * 2.0 + np.array([6.0, 16.0, -10.0])


def _run(what: str, n_vox: int, q) -> None:
    from tmstarget.reproducibility import circular_block_bootstrap
    from tmstarget.snt import SNTParams, snt_bootstrap, snt_clusters, snt_split_half

    x, xyz, xs, xyzs = _data(n_vox)
    out: dict = {"what": what}
    t0 = time.perf_counter()
    if what == "clusters":
        res = snt_clusters(x, xyz, xs, xyzs, SNTParams())
        out["seconds"] = time.perf_counter() - t0
        out["n_region_clusters"] = len(res.region_clusters)
        out["n_sgacc_clusters"] = len(res.sgacc_clusters)
        out["n_eligible"] = int(res.eligible.sum())
    elif what == "bootstrap":
        res = snt_clusters(x, xyz, xs, xyzs, SNTParams())
        out["clusters_seconds"] = time.perf_counter() - t0
        counts = circular_block_bootstrap(N_VOLS, BLOCK_VOLS, N_RESAMPLES, 1)
        t1 = time.perf_counter()
        bs = snt_bootstrap(res, counts)
        out["seconds"] = time.perf_counter() - t1
        out["radius95_mm"] = bs["radius95_mm"]
    else:
        half = N_VOLS // 2
        sh = snt_split_half(x, xyz, xs, xyzs, np.arange(half), np.arange(half, N_VOLS))
        out["seconds"] = time.perf_counter() - t0
        out["distance_mm"] = sh["distance_mm"]
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    q.put(out)


def _child(what: str, n_vox: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(what, n_vox, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--voxels", type=int, default=10_000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_snt.json"))
    args = ap.parse_args(argv)
    res = {"voxels": args.voxels, "volumes": N_VOLS, "bootstrap_resamples": N_RESAMPLES,
           "machine": {"python": platform.python_version(), "processor": platform.processor(),
                       "cpus": mp.cpu_count()},
           "runs": [_child(w, args.voxels) for w in ("clusters", "bootstrap", "split_half")]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
