"""What the ``tmstarget`` command prints: a filtered Snakemake output, a plan and a closing summary.

Snakemake's own output (job blocks, reasons, resources) goes in full to a log file inside the
output folder; the terminal gets the lines a person reads:

* ``[tmstarget]`` notes and progress of our own steps, and each ``tmstarget ERROR`` line once;
* Snakemake's progress lines (``12 of 28 steps (43%) done``) and "Nothing to be done";
* one line per failed step naming its log file;
* after a dry run, a plan summary (participants, sessions, runs, steps by rule);
* after a run, a closing summary read from the output files (:func:`closing_summary`).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_PROGRESS = re.compile(r"^\d+ of \d+ steps \(\d+%\) done")
_ERROR_RULE = re.compile(r"^Error in rule (\w+):")
_RULE = re.compile(r"^\s*(?:local)?rule (\w+):")
_FIELD = re.compile(r"^\s+(\w+): (.*)$")
_ENTITY = re.compile(r"(sub|ses|run)-([A-Za-z0-9]+)")


class LogFilter:
    """Turns Snakemake's output, line by line, into the lines worth printing.

    Feed every line with :meth:`feed` (it returns what to print now); :meth:`closing` gives the
    last lines (failed steps, where the full log is, the dry-run plan).
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.failed: list[tuple[str, str, str]] = []  # rule, wildcards, log
        self._in_error: str | None = None
        self._err_fields: dict[str, str] = {}
        self._rule: str | None = None
        self.jobs: Counter[str] = Counter()  # first "Job stats" table: jobs by rule
        self._stats: int = 0  # 0 not seen, 1 reading, 2 done
        self.units: set[tuple[str, str, str]] = set()  # (sub, ses, run) of planned runs
        self.dry_run = False
        self.nothing_to_do = False
        self.seen_error = False
        self.preproc: set[str] = set()  # participants stage 1 would preprocess
        self.tail: deque[str] = deque(maxlen=25)  # last lines, shown for an unknown failure

    def _once(self, line: str) -> list[str]:
        if line in self.seen:
            return []
        self.seen.add(line)
        return [line]

    def _close_error(self) -> None:
        if self._in_error is not None:
            self.failed.append((self._in_error, self._err_fields.get("wildcards", ""),
                                self._err_fields.get("log", "").split(" (check")[0]))
        self._in_error = None
        self._err_fields = {}

    def feed(self, raw: str) -> list[str]:
        """One line of Snakemake's output; the lines to print now."""
        line = raw.rstrip("\n")
        text = line.strip()
        if text:
            self.tail.append(line)
        # job-stats table (the first one: the whole plan)
        if text == "Job stats:" and self._stats == 0:
            self._stats = 1
            return []
        if self._stats == 1:
            parts = text.split()
            if text.startswith("total") or not text:
                self._stats = 2 if text.startswith("total") else self._stats
            elif len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("job", "all"):
                self.jobs[parts[0]] = int(parts[1])
            return []
        if self._in_error is not None:
            m = _FIELD.match(line)
            if m and line.startswith("    "):
                self._err_fields[m.group(1)] = m.group(2).strip()
                return []
            self._close_error()
        m = _ERROR_RULE.match(text)
        if m:
            self._in_error = m.group(1)
            return []
        m = _RULE.match(line)
        if m:
            self._rule = m.group(1)
        fm = _FIELD.match(line)
        if fm and fm.group(1) == "wildcards" and self._rule in ("denoise_run", "builtin_preproc",
                                                                "fmriprep"):
            ents = dict(_ENTITY.findall(fm.group(2)))
            pm = re.search(r"\bparticipant=([A-Za-z0-9]+)", fm.group(2))
            if pm:  # stage 1 (preprocessing): one job per participant
                self.preproc.add(pm.group(1))
            elif "sub" in ents:
                self.units.add((ents["sub"], ents.get("ses", ""), ents.get("run", "")))
        if text.startswith("This was a dry-run"):
            self.dry_run = True
            return []
        if text.startswith("Nothing to be done"):
            self.nothing_to_do = True
            return self._once(text)
        if text.startswith("tmstarget ERROR"):
            self.seen_error = True
        if text.startswith(("tmstarget ERROR", "[tmstarget]", "tmstarget WARNING")):
            return self._once(text)
        if _PROGRESS.match(text):
            return [text]
        return []

    def closing(self, log_file: str | Path | None, rc: int) -> list[str]:
        """The last lines: failed steps, the plan of a dry run, where the full log is."""
        self._close_error()
        out: list[str] = []
        for rule, wildcards, log in self.failed:
            where = f" ({wildcards})" if wildcards else ""
            out += self._once(f"[tmstarget] step {rule}{where} failed"
                              + (f"; its log: {log}" if log else ""))
        if self.dry_run:
            out += plan_summary(self.units, self.jobs, self.preproc)
        if log_file is not None and (rc != 0 or self.failed or self.dry_run):
            out.append(f"[tmstarget] full Snakemake output: {log_file}")
        return out


def plan_summary(units: Iterable[tuple[str, str, str]], jobs: Counter[str],
                 preproc: Iterable[str] = ()) -> list[str]:
    """A dry run's plan in a few lines: participants, sessions, runs, steps by rule.

    ``preproc``: participants the preprocessing stage would run (their sessions and runs are
    planned once it has run).
    """
    units = sorted(set(units))
    subs = sorted({u[0] for u in units})
    sessions = sorted({(u[0], u[1]) for u in units})
    pre = sorted(set(preproc))
    lines = ["[tmstarget] plan (dry run, nothing was run):"]
    if pre:
        lines.append(f"  participants to preprocess: {len(pre)} ("
                     + ", ".join("sub-" + s for s in pre) + "); their sessions and runs are "
                     "planned once preprocessing has run")
    if units:
        lines.append(f"  participants: {len(subs)} ({', '.join('sub-' + s for s in subs)})")
        lines.append(f"  sessions: {len(sessions)} ("
                     + ", ".join(f"sub-{s}" + (f" ses-{e}" if e else "") for s, e in sessions)
                     + ")")
        lines.append(f"  runs: {len(units)}")
    elif not pre:
        lines.append("  participants: none with a step to run (outputs up to date, or only "
                     "later stages planned)")
    total = sum(jobs.values())
    if total:
        lines.append(f"  steps: {total} (" + ", ".join(f"{r} {n}" for r, n in jobs.items()) + ")")
    else:
        lines.append("  steps: none")
    return lines


# --------------------------------------------------------------------------- closing summary
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _fmt(xyz: Any) -> str:
    try:
        return "(" + ", ".join(f"{float(v):.1f}" for v in xyz) + ")"
    except (TypeError, ValueError):
        return "n/a"


def _tsv_reliability(out: Path) -> dict[tuple[str, str, str], str]:
    rel: dict[tuple[str, str, str], str] = {}
    try:
        with open(out / "targets.tsv", encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                ses = row.get("session_id") or "n/a"
                ses = "" if ses == "n/a" else ses[4:] if ses.startswith("ses-") else ses
                rel[(row.get("participant_id", ""), ses,
                     row.get("method", ""))] = row.get("reliability") or "n/a"
    except OSError:
        pass
    return rel


def _verdict(*docs: dict[str, Any] | None) -> str | None:
    for d in docs:
        v = (d or {}).get("verdict")
        if isinstance(v, dict) and v.get("status"):
            return str(v["status"])
        if isinstance(v, str) and v:
            return v
    return None


def closing_summary(out: str | Path, participants: Sequence[str] | None = None) -> list[str]:
    """The run's result per participant and session, read from the output files.

    Parameters
    ----------
    out : path
        The output folder.
    participants : sequence of str, optional
        Bare labels this run covered; None = every ``sub-*`` folder of the output.

    Returns
    -------
    list of str
        Lines to print: per unit the primary target (MNI and T1w mm), method, verdict, number
        of warnings and report path; then the cohort report.
    """
    out = Path(out)
    wanted = None if participants is None else set(participants)
    rel = _tsv_reliability(out)
    lines = ["[tmstarget] summary:"]
    found: set[str] = set()
    for tj in sorted(out.glob("sub-*/**/func/*_desc-target_coords.json")):
        doc = _read_json(tj)
        if doc is None:
            continue
        sub = str(doc.get("participant_id") or tj.name.split("_")[0])
        label = sub[4:] if sub.startswith("sub-") else sub
        if wanted is not None and label not in wanted:
            continue
        found.add(label)
        ses = doc.get("session_id") or ""
        ses = ses[4:] if str(ses).startswith("ses-") else str(ses)
        unit_dir = tj.parent.parent
        stem = tj.name.split("_space-")[0]
        natives = sorted((unit_dir / "anat").glob(f"{stem}_space-T1w_desc-target_coords.json"))
        native = _read_json(natives[0]) if natives else None
        stats = _read_json(tj.with_name(tj.name.replace("desc-target_coords.json",
                                                        "desc-reproducibility_stats.json")))
        targets = doc.get("targets") or {}
        method = (native or {}).get("primary_method") or (
            "cluster" if "cluster" in targets else next(iter(targets), None))
        t = targets.get(method) or {}
        mni = _fmt([t.get("x"), t.get("y"), t.get("z")])
        t1w = _fmt(((native or {}).get("targets") or {}).get(method, {}).get("t1w_mm"))
        verdict = _verdict(native, stats) or rel.get((sub, ses, str(method)), "n/a")
        warn = (native or {}).get("warnings")
        if not isinstance(warn, list):
            warn = list(doc.get("warnings") or [])
            if isinstance((stats or {}).get("warnings"), list):
                warn += [w for w in stats["warnings"] if w not in warn]
        prefix = f"{sub}" + (f"_ses-{ses}" if ses else "")
        report = unit_dir / f"{prefix}_report.html"
        where = sub + (f" ses-{ses}" if ses else "")
        lines.append(f"  {where}: {method} target MNI152NLin2009cAsym {mni} mm, T1w {t1w} mm; "
                     f"verdict {verdict}; {len(warn)} warning{'s' if len(warn) != 1 else ''}; "
                     f"report {report if report.is_file() else 'not written'}")
    for label in sorted((wanted or set()) - found):
        lines.append(f"  sub-{label}: no target written (skipped or failed: see skipped.tsv "
                     "and the lines above)")
    cohort = out / "cohort_report.html"
    if cohort.is_file():
        lines.append(f"  cohort report: {cohort}")
    return lines if len(lines) > 1 else []
