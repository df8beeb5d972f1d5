#!/usr/bin/env python
"""Decompression benchmark (issue 21): stdlib ``gzip`` vs ISA-L ``igzip`` vs ``rapidgzip``.

Not a test. Decompresses one ``.nii.gz`` BOLD run from start to end in 16 MiB reads and
discards the bytes, each method in its own subprocess (wall time, CPU time and peak RSS of that
process from ``os.wait4``), ``--repeat`` times, and checks that every method produced the same
bytes (SHA-256 of the stream). This is the floor of every reading path: the streamed reader in
``tmstarget.denoise`` decompresses the file once, sequentially, in a background thread.

Methods:

``gzip``          the standard library (zlib), one core
``isal``          ``isal.igzip`` (ISA-L inflate), one core
``rapidgzip-1``   ``rapidgzip.open(parallelization=1)``
``rapidgzip-2``   ``rapidgzip.open(parallelization=2)``
``rapidgzip-N``   ``rapidgzip.open(parallelization=os.cpu_count())`` when that is more than 2

Usage::

    python benchmarks/bench_gzip.py FILE.nii.gz [--repeat 3]
    python benchmarks/bench_gzip.py            # the 1,200-volume run of bench_long_scan.py
                                               # (generated there, cached in /tmp/tmstarget-bench)

Results go to ``benchmarks/results/gzip_<UTC>.json`` and ``.md`` with the machine's facts and
the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHUNK = 16 << 20


def _open(method: str, path: str):
    if method == "gzip":
        import gzip

        return gzip.open(path, "rb")
    if method == "isal":
        from isal import igzip

        return igzip.open(path, "rb")
    if method.startswith("rapidgzip-"):
        import rapidgzip

        n = int(method.split("-", 1)[1])
        return rapidgzip.open(path, parallelization=n)
    raise ValueError(method)


def child(method: str, path: str, digest: bool) -> None:
    """Decompress ``path`` with ``method``; print the byte count (and SHA-256) as JSON.

    The timed runs do not hash: hashing would add ~2 s/GB of one core.
    """
    h = hashlib.sha256() if digest else None
    n = 0
    with _open(method, path) as fh:
        while buf := fh.read(CHUNK):
            if h is not None:
                h.update(buf)
            n += len(buf)
    print(json.dumps({"bytes": n, **({"sha256": h.hexdigest()} if h is not None else {})}))


def measure(method: str, path: str, mode: str = "--time") -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, mode, method, path],
                            stdout=subprocess.PIPE, text=True)
    _pid, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read() if proc.stdout else ""
    if status != 0:
        raise RuntimeError(f"{method} failed on {path}")
    rec = json.loads(out.strip().splitlines()[-1])
    rec.update(method=method, wall_s=round(wall, 3), cpu_s=round(ru.ru_utime + ru.ru_stime, 3),
               peak_rss_mb=round(ru.ru_maxrss / 1024, 1))
    return rec


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                info["cpu"] = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("isal", "rapidgzip"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            versions[mod] = None
    info["versions"] = versions
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", nargs="?", default="/tmp/tmstarget-bench/n1200/"
                    "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--hash", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--time", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.hash or a.time:
        child(*(a.hash or a.time), digest=bool(a.hash))
        return 0
    path = str(Path(a.file))
    if not Path(path).is_file():
        print(f"{path} not found: give a .nii.gz, or run benchmarks/bench_long_scan.py once "
              "to generate the 1,200-volume run", file=sys.stderr)
        return 2
    methods = ["gzip", "isal", "rapidgzip-1", "rapidgzip-2"]
    if (os.cpu_count() or 1) > 2:
        methods.append(f"rapidgzip-{os.cpu_count()}")
    available = []
    for m in methods:
        try:
            _open(m, path).close()
            available.append(m)
        except ImportError:
            print(f"{m}: not installed, skipped", file=sys.stderr)
    load0 = os.getloadavg()
    digests = {m: measure(m, path, "--hash")["sha256"] for m in available}
    same = len(set(digests.values())) == 1
    recs = []
    for r in range(a.repeat):
        for m in available:
            rec = measure(m, path)
            rec["repeat"] = r
            recs.append(rec)
            print(f"{m:12s} wall {rec['wall_s']:7.2f} s  cpu {rec['cpu_s']:7.2f} s  "
                  f"rss {rec['peak_rss_mb']:7.1f} MB", flush=True)
    load1 = os.getloadavg()
    best = {m: min(r["wall_s"] for r in recs if r["method"] == m) for m in available}
    cpu = {m: min(r["cpu_s"] for r in recs if r["method"] == m) for m in available}
    size = Path(path).stat().st_size
    raw = recs[0]["bytes"]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%MZ")
    summary = {"file": path, "compressed_bytes": size, "decompressed_bytes": raw,
               "identical_output": same, "sha256": digests, "best_wall_s": best,
               "best_cpu_s": cpu, "runs": recs, "machine": machine(),
               "loadavg_before": load0, "loadavg_after": load1, "utc": stamp}
    res = Path(a.results)
    res.mkdir(parents=True, exist_ok=True)
    (res / f"gzip_{stamp}.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# Decompression, {Path(path).name} ({size / 1e9:.2f} GB compressed, "
             f"{raw / 1e9:.2f} GB raw), best of {a.repeat}", "",
             "| method | wall s | CPU s | GB/s (raw) | × gzip |", "|---|---|---|---|---|"]
    for m in available:
        lines.append(f"| {m} | {best[m]:.2f} | {cpu[m]:.2f} | {raw / best[m] / 1e9:.2f} | "
                     f"{best['gzip'] / best[m]:.2f} |" if "gzip" in best else "")
    lines += ["", f"identical output: {same}; load average before {load0[0]:.2f}, after "
              f"{load1[0]:.2f}; {summary['machine']}"]
    (res / f"gzip_{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
