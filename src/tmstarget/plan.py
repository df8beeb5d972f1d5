"""Turn a validated config into the list of jobs: what the Snakefile builds.

Kept out of the Snakefile so that it is importable and unit-tested (hostile names, output
inside input, sessions/runs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import MNI_SPACE
from .spaces import TEMPLATE_SPACES as SUPPORTED_SPACES
from .discover import AnatInputs, RunInputs, Skipped, discover, discover_anat
from .errors import ConfigError
from .io import ENTITY_ORDER, bids_name

#: Only these characters may appear in a BIDS label used in an output path.
_SAFE_LABEL = re.compile(r"^[A-Za-z0-9]+$")
#: Labels longer than this are shortened in file and folder names (:func:`file_label`), so that
#: every output name stays well under the 255-byte limit of common file systems.
MAX_LABEL_CHARS = 32
#: A work-file name longer than this has its run entities replaced by a digest.
_MAX_RUN_NAME_CHARS = 160


@dataclass(frozen=True)
class Unit:
    """One participant (and session): one set of targets."""

    participant: str
    session: str | None
    task: str
    prefix: str  # output path prefix relative to output_dir, e.g. sub-01/ses-1/func/sub-01_ses-1_task-rest

    def entities(self) -> dict[str, str | None]:
        return {"sub": self.participant, "ses": self.session, "task": self.task}


@dataclass
class Plan:
    """Everything the workflow needs to know about the inputs."""

    output_dir: Path
    fmriprep_dir: Path
    runs: dict[str, RunInputs] = field(default_factory=dict)  # runprefix -> inputs
    units: dict[str, Unit] = field(default_factory=dict)  # prefix -> unit
    unit_runs: dict[str, list[str]] = field(default_factory=dict)  # prefix -> runprefixes
    skipped: list[Skipped] = field(default_factory=list)
    # native (T1w) step: anat prefix -> unit prefix, anat prefix -> inputs, units without anat
    anat_units: dict[str, str] = field(default_factory=dict)
    anat: dict[str, AnatInputs] = field(default_factory=dict)
    native_skipped: list[Skipped] = field(default_factory=list)


def _check_label(label: str | None, what: str, path: str) -> None:
    if label is not None and not _SAFE_LABEL.match(label):
        raise ConfigError(path, f"the {what} label '{label}' is not a valid BIDS label (only "
                          "letters and digits are allowed).", "Rename the file/folder to a "
                          "valid BIDS label.")


def file_label(label: str | None) -> str | None:
    """The label as written in output file and folder names.

    Labels of at most :data:`MAX_LABEL_CHARS` characters are kept as they are. A longer label
    (a 185-character participant label made every output name longer than the file system
    allows) becomes its first 20 characters and 12 hex digits of its SHA-256: still a valid BIDS
    label, recognisable and unique. The full label is kept inside the files
    (``participant_id``/``session_id`` in every JSON and TSV).
    """
    if label is None or len(label) <= MAX_LABEL_CHARS:
        return label
    import hashlib

    return label[:20] + hashlib.sha256(label.encode("utf-8")).hexdigest()[:12]


def unit_stem(participant: str, session: str | None) -> str:
    """``sub-X/[ses-Y/]sub-X[_ses-Y]``: where a participant/session's reports go."""
    sub, ses = file_label(participant), file_label(session)
    d = f"sub-{sub}" + (f"/ses-{ses}" if ses else "")
    return f"{d}/sub-{sub}" + (f"_ses-{ses}" if ses else "")


def unit_prefix(participant: str, session: str | None, task: str) -> str:
    """Output prefix ``sub-X/[ses-Y/]func/sub-X[_ses-Y]_task-T`` for a participant/session."""
    sub, ses = file_label(participant), file_label(session)
    folder = f"sub-{sub}" + (f"/ses-{ses}" if ses else "")
    name = bids_name({"sub": sub, "ses": ses, "task": file_label(task)}, "x", "")[:-2]
    return f"{folder}/func/{name}"


def anat_prefix(unit_prefix_: str) -> str:
    """Native-space output prefix: the unit prefix with its ``func/`` folder replaced by ``anat/``."""
    folder, name = unit_prefix_.rsplit("/", 1)
    return f"{folder.rsplit('/', 1)[0]}/anat/{name}"


def run_prefix(run: RunInputs) -> str:
    """Work-file prefix of one run: the unit prefix plus every entity that identifies the run.

    ``acq``, ``dir``, ``run``, ... are written in BIDS order (unknown entities after them, in
    file-name order), so ``dir-AP`` and ``dir-PA`` runs of one participant never share a work
    file. A name that would be too long has its run entities replaced by ``acq-h<digest>``.
    """
    unit = unit_prefix(run.participant, run.session, run.task)
    ents = list(run.entities) or [(k, v) for k, v in (("acq", run.acq), ("run", run.run)) if v]
    known = [k for k in ENTITY_ORDER if k not in ("sub", "ses", "task")]
    ents.sort(key=lambda kv: known.index(kv[0]) if kv[0] in known else len(known))
    extra = "".join(f"_{k}-{file_label(v)}" for k, v in ents)
    if len(unit.rsplit("/", 1)[1] + extra) > _MAX_RUN_NAME_CHARS:
        import hashlib

        extra = "_acq-h" + hashlib.sha256(extra.encode("utf-8")).hexdigest()[:16]
    return unit + extra


#: A label as written in output names (:func:`file_label` of a label :func:`build_plan` accepts).
_LABEL_RE = "[A-Za-z0-9]+"
_UNIT_NAME_RE = rf"sub-{_LABEL_RE}(?:_ses-{_LABEL_RE})?_task-{_LABEL_RE}"
_UNIT_FOLDER_RE = rf"sub-{_LABEL_RE}(?:/ses-{_LABEL_RE})?"
#: Regular expressions matching exactly the *forms* of the names :func:`unit_prefix`,
#: :func:`run_prefix`, :func:`anat_prefix` and :func:`unit_stem` make (the workflow's wildcard
#: constraints). They replace a constraint listing every planned value, which Snakemake copies
#: into every output pattern, compiles and scans for each job: planning 1,000 participants
#: spent most of its time there (benchmarks/bench_dryrun_cohort.py). Which values exist is
#: decided by the plan: every input function of the workflow looks its wildcard up in it.
UNIT_PREFIX_PATTERN = rf"{_UNIT_FOLDER_RE}/func/{_UNIT_NAME_RE}"
#: A run prefix: the unit prefix and the run's other entities (``_key-label``, any key a
#: file name can hold: no ``_ - . /``), or the ``_acq-h<digest>`` that replaces them.
RUN_PREFIX_PATTERN = rf"{UNIT_PREFIX_PATTERN}(?:_[^/_.-]*-{_LABEL_RE})*"
ANAT_PREFIX_PATTERN = rf"{_UNIT_FOLDER_RE}/anat/{_UNIT_NAME_RE}"
UNIT_STEM_PATTERN = rf"{_UNIT_FOLDER_RE}/sub-{_LABEL_RE}(?:_ses-{_LABEL_RE})?"


def check_paths(fmriprep_dir: str | Path, output_dir: str | Path) -> tuple[Path, Path]:
    """Resolve the two folders; refuse an output folder inside (or equal to) the input, and
    paths with ``{ } < >`` (Snakemake wildcards and path variables)."""
    src = Path(fmriprep_dir).expanduser().resolve()
    out = Path(output_dir).expanduser().resolve()
    for what, p in (("output folder", out), ("input folder", src)):
        bad = sorted(set("{}<>") & set(str(p)))
        if bad:
            raise ConfigError(p, f"the {what} path contains {' '.join(bad)}, which Snakemake "
                              "reads as a placeholder in file names.", "Choose (or rename it "
                              "to) a path without { } < > characters.")
    if out == src or src in out.parents:
        raise ConfigError(out, f"the output folder is inside the input dataset {src}; tmstarget "
                          "never writes into its input.", "Choose an output folder outside "
                          "the fMRIPrep derivatives (e.g. a sibling folder).")
    # the one exception: stage 1 run by tmstarget itself from raw BIDS (fMRIPrep or the
    # built-in path) writes OUTPUT_DIR/sourcedata/{fmriprep,builtin}, which the main workflow
    # then reads (never writes)
    if out in src.parents and src not in (out / "sourcedata" / "fmriprep",
                                          out / "sourcedata" / "builtin"):
        raise ConfigError(out, f"the input dataset {src} is inside the output folder.",
                          "Choose an output folder that does not contain the input.")
    return src, out


def build_plan(config: Mapping[str, Any]) -> Plan:
    """Discover inputs and derive the jobs.

    Parameters
    ----------
    config : mapping
        Validated configuration (defaults filled in).

    Returns
    -------
    Plan
    """
    space = config.get("space") or MNI_SPACE
    if space not in SUPPORTED_SPACES:
        raise ConfigError(None, f"space {space} is not supported.",
                          f"Use fMRIPrep's {' or '.join(SUPPORTED_SPACES)} output.")
    src, out = check_paths(config["fmriprep_dir"], config["output_dir"])
    runs, skipped = discover(src, task=config["task"], space=space, res=config.get("res"),
                             participant_label=config.get("participant_label") or None,
                             exclude=config.get("exclude_participants") or None)
    plan = Plan(output_dir=out, fmriprep_dir=src, skipped=list(skipped))
    _check_label(config["task"], "task", "config: task")
    for r in runs:
        try:
            for what, lab in (("participant", r.participant), ("session", r.session),
                              *((k, v) for k, v in r.entities)):
                _check_label(lab, what, r.bold)
        except ConfigError as exc:  # this run only: the others go on
            plan.skipped.append(Skipped(r.participant, r.session, r.run, str(exc)))
            continue
        rp = run_prefix(r)
        up = unit_prefix(r.participant, r.session, r.task)
        plan.runs[rp] = r
        plan.units.setdefault(up, Unit(r.participant, r.session, r.task, up))
        plan.unit_runs.setdefault(up, []).append(rp)
    if (config.get("native") or {}).get("enabled", True):
        for up, u in sorted(plan.units.items()):
            anat, reason = discover_anat(src, u.participant, u.session, space)
            if anat is None:
                plan.native_skipped.append(Skipped(u.participant, u.session, None, str(reason)))
                continue
            ap = anat_prefix(up)
            plan.anat_units[ap] = up
            plan.anat[ap] = anat
    return plan
