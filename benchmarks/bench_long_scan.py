#!/usr/bin/env python
"""Long-scan benchmark (issue 8): reading vs. tmstarget's path vs. the straightforward nilearn path.

Not a test. Generates once (cached) a simulated 2 mm MNI152NLin2009cAsym run of 1,200 volumes
(TR 2.0 s = 40 min, like the trial's 41-minute scans) and one of 300 volumes, with fMRIPrep-style
confounds, then measures, each in its own subprocess (wall time and peak RSS of that process,
from ``os.wait4``):

``gunzip``   decompress the ``.nii.gz`` stream and discard it (zlib floor; no NIfTI parsing)
``read``     read the file with nibabel in 50-volume chunks and mask it (as in the notes)
``ours``     ``tmstarget.denoise.denoise_run`` + seed time series + seed map + targets
``nilearn``  ``NiftiMasker(smoothing, zscore_sample, detrend, band-pass, t_r).fit_transform``
             with ``load_confounds`` + the same seed map + targets

and prints a side-by-side table with ratios; the results go to ``benchmarks/results/`` as JSON
and Markdown with the machine's facts. The chosen target voxels of ``ours`` and ``nilearn`` are
compared, as is the maximum |Δr| of the two seed maps inside the brain.

Usage::

    python benchmarks/bench_long_scan.py                       # everything
    python benchmarks/bench_long_scan.py --skip-nilearn-long   # skip the 5-minute, ~24 GB case
    python benchmarks/bench_long_scan.py --lengths 300 --repeat 2

The data are SIMULATED (tmstarget.simulate's signal model on the real MNI 2 mm brain mask),
stored float32 (zeros outside the brain mask), gzip level 1 (nibabel's default).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))

TR = 2.0
N_NSS = 2
TARGET_MM = (-39.5, 36.5, 22.5)  # planted target of the sample's sub-01
STRATEGY = "fox2012"
GEN_VERSION = "1"


# --------------------------------------------------------------------------- generation
def _paths(root: Path, n_vols: int) -> dict[str, Path]:
    func = root / f"vols-{n_vols}" / "sub-01" / "func"
    stem = "sub-01_task-rest"
    sp = "space-MNI152NLin2009cAsym"
    return {
        "bold": func / f"{stem}_{sp}_desc-preproc_bold.nii.gz",
        "bold_json": func / f"{stem}_{sp}_desc-preproc_bold.json",
        "mask": func / f"{stem}_{sp}_desc-brain_mask.nii.gz",
        "confounds": func / f"{stem}_desc-confounds_timeseries.tsv",
        "confounds_json": func / f"{stem}_desc-confounds_timeseries.json",
        "done": func.parent.parent / f"complete-v{GEN_VERSION}.json",
    }


def generate(root: Path, n_vols: int, seed: int = 20261125, block: int = 8192) -> dict[str, Path]:
    """Write the run (cached: skipped when ``complete-v*.json`` exists)."""
    import nibabel as nb

    from tmstarget import simulate as sim

    p = _paths(root, n_vols)
    if p["done"].is_file():
        return p
    t0 = time.perf_counter()
    p["bold"].parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence([seed, n_vols]))
    grid = sim._make_grid(2.0)
    params = sim.SignalParams()
    n_t, n_v = n_vols, grid.xyz.shape[0]
    band = dict(f_lo=0.01, f_hi=0.1)
    s = sim.colored_noise(rng, n_t, TR, **band)[0]
    g_t = sim.colored_noise(rng, n_t, TR, **band)[0]
    w_t = sim.colored_noise(rng, n_t, TR, f_lo=0.005, f_hi=0.15)[0]
    c_t = sim.colored_noise(rng, n_t, TR, f_lo=0.01, f_hi=None, exponent=0.3)[0]
    w_tis = grid.tissue @ np.array([1.0, 0.4, 0.2])
    nets = np.stack([sim._smooth_field(rng, grid.mask, 10.0 / 2.0)[grid.mask]
                     for _ in range(params.n_networks)]) * w_tis
    net_t = sim.colored_noise(rng, n_t, TR, size=params.n_networks, **band).T
    spatial_src = (params.sgacc_amp * grid.sgacc
                   - params.focus_amp * sim._focus_weight(grid.xyz, TARGET_MM, params))
    q = np.ones(n_t)
    q[:N_NSS] = sim.NSS_FACTORS[:N_NSS]
    motion, spikes = sim.simulate_motion(rng, n_t, N_NSS)
    r = grid.xyz - np.array([0.0, -18.0, 18.0])
    beta_t = -params.motion_gain * grid.grad
    beta_r = -params.motion_gain * np.cross(r, grid.grad)
    drop = 0.5 + 0.5 * (grid.xyz[:, 2] - grid.xyz[:, 2].min()) / np.ptp(grid.xyz[:, 2])

    data = np.empty((n_t, n_v), dtype=np.float32)  # stored values, time x brain voxels
    for a in range(0, n_v, block):  # voxel blocks: never the full float64 matrix
        b = min(n_v, a + block)
        sl = slice(a, b)
        pb = np.outer(s, spatial_src[sl])
        pb += params.global_amp * np.outer(g_t, w_tis[sl])
        pb += params.network_amp * (net_t @ nets[:, sl])
        pb += params.wm_amp * np.outer(w_t, grid.tissue[sl, 1])
        pb += params.csf_amp * np.outer(c_t, grid.tissue[sl, 2])
        pb += params.pink_amp * sim.colored_noise(rng, n_t, TR, size=b - a, f_lo=0.002).T
        pb += params.white_amp * rng.standard_normal((n_t, b - a))
        d = grid.baseline[None, sl] * (1.0 + pb / 100.0) * q[:, None]
        d += motion[:, :3] @ beta_t[sl].T + motion[:, 3:] @ beta_r[sl].T
        for t in spikes:
            d[t] -= params.spike_drop * grid.baseline[sl] * drop[sl]
            if t + 1 < n_t:
                d[t + 1] -= 0.4 * params.spike_drop * grid.baseline[sl] * drop[sl]
        data[:, sl] = d
    t_sim = time.perf_counter() - t0

    # confounds from every 4th brain voxel (global/WM/CSF means, CompCor, DVARS): a cheaper
    # but fMRIPrep-shaped table; FD and motion columns are exact
    sub = np.arange(0, n_v, 4)
    df, meta = sim.compute_confounds(data[:, sub].astype(np.float64), grid.wm[sub],
                                     grid.csf[sub], motion, TR, N_NSS)
    sim.write_confounds(df, meta, p["confounds"])
    p["bold_json"].write_text(json.dumps({"RepetitionTime": TR, "TaskName": "rest",
                                          "Description": "SIMULATED (bench_long_scan.py)"}))
    aff = grid.affine
    mimg = nb.Nifti1Image(grid.mask.astype(np.uint8), aff)
    mimg.header.set_xyzt_units("mm", "sec")
    mimg.set_qform(aff, 4)
    mimg.set_sform(aff, 4)
    nb.save(mimg, p["mask"])

    # BOLD: header + volumes streamed through gzip (NIfTI is x-fastest: a C array (z, y, x))
    hdr = nb.Nifti1Header()
    hdr.set_data_shape((*grid.mask.shape, n_t))
    hdr.set_data_dtype(np.float32)
    hdr.set_zooms((2.0, 2.0, 2.0, TR))
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_qform(aff, 4)
    hdr.set_sform(aff, 4)
    hdr.set_data_offset(352)
    vox = np.argwhere(grid.mask)
    zyx = (vox[:, 2], vox[:, 1], vox[:, 0])
    nx, ny, nz = grid.mask.shape
    tmp = p["bold"].with_suffix(".tmp")
    with gzip.GzipFile(tmp, "wb", compresslevel=1, mtime=0) as fh:
        fh.write(hdr.binaryblock + b"\x00" * 4)
        buf = np.zeros((50, nz, ny, nx), np.float32)
        for a in range(0, n_t, 50):
            b = min(n_t, a + 50)
            buf[:] = 0
            buf[(slice(0, b - a), *zyx)] = data[a:b]
            fh.write(buf[: b - a].tobytes())
    os.replace(tmp, p["bold"])
    info = {"n_volumes": n_t, "tr": TR, "shape": list(grid.mask.shape),
            "brain_voxels": int(n_v), "dtype": "float32", "gzip_level": 1,
            "bytes": p["bold"].stat().st_size, "target_mm": TARGET_MM,
            "n_fd_above_0.5": int(np.nansum(df["framewise_displacement"] > 0.5)),
            "seconds_simulate": round(t_sim, 1),
            "seconds_total": round(time.perf_counter() - t0, 1)}
    p["done"].write_text(json.dumps(info, indent=1))
    return p


# --------------------------------------------------------------------------- children
def _config() -> dict:
    import yaml

    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _targets(data: np.ndarray, voxels: np.ndarray, affine: np.ndarray, shape, cfg: dict,
             timings: dict) -> dict:
    """Seed time series, seed map and targets exactly as the pipeline's seedmap/target steps."""
    from types import SimpleNamespace

    from tmstarget.seedmap import (
        combine_runs,
        correlation_map,
        seed_timeseries,
        seed_weights,
        to_volume,
    )
    from tmstarget.target import find_targets, load_search_region

    t0 = time.perf_counter()
    run = SimpleNamespace(data=data, voxels=voxels, affine=affine, shape=tuple(shape))
    combined = combine_runs([run])
    del run
    weights, _ = seed_weights(cfg["seed"], combined.shape, combined.affine)
    ts, _ = seed_timeseries(combined, weights)
    r = correlation_map(combined.data, ts)
    rvol = to_volume(r.astype(np.float32), combined)
    timings["seedmap"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    region, _ = load_search_region(cfg["search"], combined.mask(), combined.affine)
    tg = find_targets(rvol.astype(np.float64), region, combined.affine,
                      methods=cfg["target"]["methods"],
                      cluster_percent=float(cfg["target"]["cluster_percent"]),
                      weighted_n_voxels=int(cfg["target"]["weighted_n_voxels"]))
    timings["target"] = time.perf_counter() - t0
    return {"rmap": rvol, "targets": {k: {"voxel": list(v.voxel), "xyz": [v.x, v.y, v.z],
                                          "r": v.r} for k, v in tg.items()}}


def child(mode: str, root: Path, n_vols: int, out_json: Path) -> None:
    import nibabel as nb

    p = _paths(root, n_vols)
    timings: dict[str, float] = {}
    res: dict = {"mode": mode, "n_volumes": n_vols}
    t_all = time.perf_counter()
    if mode == "gunzip":
        d = zlib.decompressobj(31)
        n = 0
        with open(p["bold"], "rb") as fh:
            while block := fh.read(1 << 22):
                n += len(d.decompress(block))
        res["bytes_out"] = n
    elif mode == "read":
        img = nb.load(p["bold"], keep_file_open=True)
        mask = np.asarray(nb.load(p["mask"]).dataobj) > 0
        idx = np.nonzero(mask)
        acc = 0.0
        for a in range(0, n_vols, 50):
            chunk = np.asarray(img.dataobj[..., a:min(n_vols, a + 50)], dtype=np.float32)
            acc += float(chunk[idx].sum(dtype=np.float64))
        res["checksum"] = acc
    elif mode == "ours":
        from tmstarget.denoise import denoise_run, resolve_strategy

        cfg = _config()
        d = cfg["denoise"]
        strategy = resolve_strategy(d["strategy"], {k: d.get(k) for k in
                                                    ("smoothing_fwhm", "high_pass", "low_pass")})
        t0 = time.perf_counter()
        run = denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"], strategy,
                          fd_threshold=float(d["fd_threshold"]),
                          std_dvars_threshold=d.get("std_dvars_threshold"),
                          min_segment=int(d["min_segment"]))
        timings["denoise"] = time.perf_counter() - t0
        from tmstarget.denoise import LAST_TIMINGS

        timings.update({f"denoise.{k}": v for k, v in LAST_TIMINGS.items()})
        out = _targets(run.data, run.voxels, run.affine, run.shape, cfg, timings)
        res["targets"] = out["targets"]
        res["kept"] = int(run.data.shape[0])
        np.save(out_json.with_suffix(".rmap.npy"), out["rmap"])
    elif mode == "nilearn":
        import warnings

        from nilearn.interfaces.fmriprep import load_confounds
        from nilearn.maskers import NiftiMasker

        from tmstarget.denoise import resolve_strategy

        cfg = _config()
        d = cfg["denoise"]
        s = resolve_strategy(d["strategy"])
        t0 = time.perf_counter()
        kw = {"strategy": s.confounds, "motion": s.motion, "wm_csf": s.wm_csf,
              "global_signal": s.global_signal, "scrub": int(d["min_segment"]),
              "fd_threshold": float(d["fd_threshold"]), "std_dvars_threshold": np.inf}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conf, sm = load_confounds(str(p["bold"]), **kw)
            masker = NiftiMasker(mask_img=str(p["mask"]), smoothing_fwhm=s.smoothing_fwhm,
                                 standardize="zscore_sample", detrend=True,
                                 low_pass=s.low_pass, high_pass=s.high_pass, t_r=TR)
            data = masker.fit_transform(str(p["bold"]), confounds=conf, sample_mask=sm)
        timings["denoise"] = time.perf_counter() - t0
        mimg = nb.load(p["mask"])
        mask = np.asarray(mimg.dataobj) > 0
        voxels = np.argwhere(mask).astype(np.int32)
        out = _targets(np.asarray(data, np.float32), voxels, mimg.affine, mask.shape, cfg,
                       timings)
        res["targets"] = out["targets"]
        res["kept"] = int(data.shape[0])
        np.save(out_json.with_suffix(".rmap.npy"), out["rmap"])
    timings["total_in_process"] = time.perf_counter() - t_all
    res["timings"] = {k: round(v, 2) for k, v in timings.items()}
    out_json.write_text(json.dumps(res, indent=1))


def measure(mode: str, root: Path, n_vols: int, mem_limit_gb: float | None) -> dict:
    """Run one child; wall time and peak RSS of that child alone (os.wait4)."""
    out = root / "results" / f"{mode}-{n_vols}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for f in (out, out.with_suffix(".rmap.npy")):
        f.unlink(missing_ok=True)

    def limit() -> None:
        if mem_limit_gb:
            b = int(mem_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (b, b))

    cmd = [sys.executable, __file__, "--child", mode, "--cache", str(root),
           "--n", str(n_vols), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, preexec_fn=limit, stderr=subprocess.PIPE, text=True)
    err_text = ""
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if proc.stderr is not None:
        err_text = proc.stderr.read()
        proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    rec: dict = {"mode": mode, "n_volumes": n_vols, "wall_s": round(wall, 2),
                 "peak_rss_gb": round(ru.ru_maxrss * 1024 / 1e9, 3),
                 "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
                 "exit": proc.returncode, "mem_limit_gb": mem_limit_gb}
    if proc.returncode == 0 and out.is_file():
        rec.update(json.loads(out.read_text()))
    else:
        tail = [ln for ln in err_text.strip().splitlines() if ln.strip()][-3:]
        rec["error"] = " | ".join(tail) or f"exit status {proc.returncode}"
    print(f"  {mode:8s} {n_vols:5d} vols: {wall:7.1f} s  {rec['cpu_s']:7.1f} CPU s  "
          f"{rec['peak_rss_gb']:6.2f} GB"
          + ("" if proc.returncode == 0 else f"  FAILED ({rec['error'][:200]})"), flush=True)
    return rec


# --------------------------------------------------------------------------- report
def machine() -> dict:
    import importlib.metadata as md

    cpu = "unknown"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for ln in Path("/proc/meminfo").read_text().splitlines():
            if ln.startswith("MemTotal"):
                mem = int(ln.split()[1]) * 1024
    except OSError:
        pass
    vers = {"python": platform.python_version()}
    for pkg in ("numpy", "scipy", "nibabel", "nilearn", "indexed_gzip", "isal"):
        try:
            vers[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            vers[pkg] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(mem / 1e9, 1),
            "os": platform.platform(), "load_avg_at_start": os.getloadavg(), **vers,
            "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def report(recs: list[dict], info: dict, mach: dict, outdir: Path) -> str:
    by = {(r["mode"], r["n_volumes"]): r for r in recs}
    lines = [f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram_gb']} GB RAM; "
             f"Python {mach['python']}, numpy {mach['numpy']}, scipy {mach['scipy']}, "
             f"nibabel {mach['nibabel']}, nilearn {mach['nilearn']}; {mach['date_utc']}; "
             f"load average at start {tuple(round(x, 2) for x in mach['load_avg_at_start'])} "
             "(shared machine: timings are noisy).", ""]
    lines += ["| volumes | what | wall (s) | CPU (s) | peak RSS (GB) | wall / read | CPU / read "
              "| wall / ours | RSS / ours |", "|---|---|---|---|---|---|---|---|---|"]
    names = {"gunzip": "gunzip stream only (zlib floor)", "read": "read in 50-vol chunks (nibabel)",
             "ours": "tmstarget: denoise + seed map + targets",
             "nilearn": "nilearn NiftiMasker + seed map + targets"}
    for n in sorted({r["n_volumes"] for r in recs}):
        read = by.get(("read", n))
        ours = by.get(("ours", n))
        for mode in ("gunzip", "read", "ours", "nilearn"):
            r = by.get((mode, n))
            if r is None:
                continue
            ok = r["exit"] == 0
            def ratio(a, b, key, ok=ok):
                return (f"{a[key] / b[key]:.2f}×" if (a and b and b["exit"] == 0 and ok
                                                      and b[key] > 0) else "–")
            wall = f"{r['wall_s']:.1f}" if ok else f"failed after {r['wall_s']:.0f}"
            lines.append(f"| {n} | {names[mode]} | {wall} | {r['cpu_s']:.1f} | "
                         f"{r['peak_rss_gb']:.2f} | {ratio(r, read, 'wall_s')} | "
                         f"{ratio(r, read, 'cpu_s')} | {ratio(r, ours, 'wall_s')} | "
                         f"{ratio(r, ours, 'peak_rss_gb')} |")
    lines.append("")
    for r in recs:
        if r["exit"] != 0:
            lines.append(f"{r['n_volumes']} volumes, {r['mode']}: FAILED after {r['wall_s']:.0f} s "
                         f"at {r['peak_rss_gb']:.1f} GB peak RSS (address-space limit "
                         f"{r.get('mem_limit_gb') or 0:.1f} GB): {r.get('error', '')[-300:]}")
    for n in sorted({r["n_volumes"] for r in recs}):
        o, q = by.get(("ours", n)), by.get(("nilearn", n))
        if o and q and o["exit"] == 0 and q["exit"] == 0:
            same = {m: o["targets"][m]["voxel"] == q["targets"][m]["voxel"]
                    for m in o["targets"]}
            ro = np.load(outdir / f"ours-{n}.rmap.npy")
            rq = np.load(outdir / f"nilearn-{n}.rmap.npy")
            dr = float(np.abs(ro - rq).max())
            lines.append(f"{n} volumes: same target voxel as nilearn: "
                         + ", ".join(f"{m} {'yes' if v else 'NO'}" for m, v in same.items())
                         + f"; max |Δr| over the brain = {dr:.2g}.")
            for rec in (o, q):
                rec["same_targets_as_other"] = same
                rec["max_abs_dr"] = dr
        if o and o["exit"] == 0:
            lines.append(f"{n} volumes, ours: stages (s) " + ", ".join(
                f"{k} {v}" for k, v in o["timings"].items()))
    lines.append("")
    lines.append("Data: " + "; ".join(
        f"{n} vols: {i['shape']} grid, {i['brain_voxels']} brain voxels, TR {i['tr']} s, "
        f"{i['dtype']} .nii.gz (gzip level {i['gzip_level']}) {i['bytes'] / 1e9:.2f} GB"
        for n, i in sorted(info.items())) + ". SIMULATED data (tmstarget.simulate model).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default="/tmp/tmstarget-bench",
                    help="where the generated runs are kept (default %(default)s)")
    ap.add_argument("--lengths", default="1200,300", help="run lengths (volumes)")
    ap.add_argument("--modes", default="gunzip,read,ours,nilearn")
    ap.add_argument("--skip-nilearn-long", action="store_true",
                    help="skip the nilearn path on runs longer than 600 volumes")
    ap.add_argument("--nilearn-mem-limit-gb", type=float, default=None,
                    help="address-space limit for the nilearn child (default: the machine's "
                         "available memory minus 2 GB, so that it fails with MemoryError "
                         "rather than invoking the kernel's OOM killer)")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--tag", default="", help="suffix of the result file names")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    root = Path(a.cache)
    if a.child:
        child(a.child, root, a.n, Path(a.out))
        return 0
    mach = machine()
    lengths = [int(x) for x in a.lengths.split(",") if x]
    modes = [m for m in a.modes.split(",") if m]
    info = {}
    for n in lengths:
        t0 = time.perf_counter()
        p = generate(root, n)
        info[n] = json.loads(p["done"].read_text())
        print(f"data {n} vols ready ({time.perf_counter() - t0:.0f} s): {p['bold']}", flush=True)
    if a.nilearn_mem_limit_gb is None:
        avail = 0
        for ln in Path("/proc/meminfo").read_text().splitlines():
            if ln.startswith("MemAvailable"):
                avail = int(ln.split()[1]) * 1024
        limit = max(1.0, avail / 2**30 - 2.0)
    else:
        limit = a.nilearn_mem_limit_gb or None
    recs = []
    for n in lengths:
        for mode in modes:
            if mode == "nilearn" and a.skip_nilearn_long and n > 600:
                continue
            recs.append(measure(mode, root, n, limit if mode == "nilearn" else None))
    outdir = root / "results"
    text = report(recs, info, mach, outdir)
    print()
    print(text)
    res = Path(a.results)
    res.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%MZ")
    name = f"long_scan_{stamp}{a.tag}"
    for r in recs:
        r.pop("checksum", None)
    (res / f"{name}.json").write_text(json.dumps({"machine": mach, "data": info,
                                                  "results": recs}, indent=1, default=str))
    (res / f"{name}.md").write_text(f"# Long-scan benchmark {stamp}\n\n{text}\n")
    print(f"\nwritten: {res / (name + '.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
