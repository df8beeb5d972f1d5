"""Check a tmstarget run through SLURM (called by .ci/slurm/run).

1. Every job snakemake submitted (``sbatch call: ... --mem M -t T``) appears in ``sacct``
   as COMPLETED with exactly that memory and time limit; the aggregation rule ran locally.
2. The outputs equal those of a local run byte for byte (except the run's own config copy,
   which names its output folder, logs and intermediates).
Prints ``slurm: N passed, M failed``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

SKIP = ("logs/", "work/", ".snakemake/", "tmstarget_config.yaml")


def digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        # reports carry a labelled generation date and the output folder's name: left out
        if p.name.endswith(("_report.html", "_report.json")):
            continue
        if p.is_file() and not any(rel.startswith(s) or rel == s for s in SKIP):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--snakemake-log", type=Path, required=True)
    ap.add_argument("--sacct", type=Path, required=True)
    ap.add_argument("--slurm-out", type=Path, required=True)
    ap.add_argument("--local-out", type=Path, required=True)
    ap.add_argument("--exit-code", type=int, default=0)
    a = ap.parse_args()
    passed = failed = 0

    def check(ok: bool, what: str) -> None:
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"ok: {what}")
        else:
            failed += 1
            print(f"FAILED: {what}", file=sys.stderr)

    check(a.exit_code == 0, "the SLURM run exited 0")
    log = a.snakemake_log.read_text(errors="replace")
    calls = re.findall(r"sbatch call: (.*)", log)
    asked = []
    for c in calls:
        mem = re.search(r"--mem (\d+)", c)
        time = re.search(r" -t '?(\d+)'?", c)
        comment = re.search(r"--comment '?([^' ]+)'?", c)
        asked.append((comment.group(1) if comment else "?", int(mem.group(1)) if mem else None,
                      int(time.group(1)) if time else None))
    ids = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    sacct = {}
    for line in a.sacct.read_text().splitlines():
        f = line.split("|")
        if len(f) >= 10:
            sacct[f[0]] = {"name": f[1], "reqmem": f[5], "timelimit": f[6], "state": f[7],
                           "comment": f[9]}
    check(len(calls) > 0 and len(calls) == len(ids), f"{len(calls)} jobs submitted with sbatch")
    n_units = len(list(a.local_out.rglob("*_space-MNI152NLin2009cAsym_desc-target_coords.json")))
    groups = [c for c, _, _ in asked if c.startswith("rule_participant")]
    reports = [c for c, _, _ in asked if c.startswith("rule_report")]
    check(len(groups) == n_units, f"one SLURM job per participant/session group ({len(groups)} "
          f"for {n_units})")
    # the report step reads the cohort table (aggregate), so it cannot join the group
    check(len(reports) == n_units, f"one SLURM report job per participant/session "
          f"({len(reports)} for {n_units})")
    check(len(calls) == len(groups) + len(reports), "no other SLURM jobs (cohort steps local)")
    for jid, (comment, mem, minutes) in zip(ids, asked, strict=False):
        s = sacct.get(jid)
        check(s is not None, f"job {jid} ({comment}) is in sacct")
        if s is None:
            continue
        check(s["state"] == "COMPLETED", f"job {jid} ({comment}) COMPLETED (got {s['state']})")
        got_mem = int(re.match(r"(\d+)", s["reqmem"]).group(1)) if s["reqmem"] else -1
        unit = s["reqmem"][len(str(got_mem)):][:1].upper()
        got_mb = got_mem * (1024 if unit == "G" else 1)
        check(mem is not None and got_mb == mem, f"job {jid} memory: asked {mem} MB, sacct {s['reqmem']}")
        hms = s["timelimit"].split("-")[-1].split(":")
        got_min = int(hms[0]) * 60 + int(hms[1]) if len(hms) == 3 else int(hms[0])
        check(minutes is not None and got_min == minutes,
              f"job {jid} time: asked {minutes} min, sacct {s['timelimit']}")
    check(not any("aggregate" in c for c, _, _ in asked), "aggregate ran locally (localrules)")
    ds, dl = digest(a.slurm_out), digest(a.local_out)
    check(len(dl) > 0 and ds.keys() == dl.keys(), f"same output files ({len(dl)})")
    diff = [k for k in dl if ds.get(k) != dl[k]]
    check(not diff, "outputs byte-identical to the local run" + (f"; differ: {diff[:5]}" if diff else ""))
    print(f"slurm: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
