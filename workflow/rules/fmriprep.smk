# Stage 1 (raw BIDS input): the fmriprep rule (container) or the builtin_preproc rule (ANTsPy),
# chosen by preprocessing.method; see workflow/fmriprep.smk, tmstarget.preproc, tmstarget.builtin.
import os
import re
import sys

from snakemake.utils import validate

_REPO = os.path.dirname(os.path.dirname(workflow.basedir)) if os.path.basename(
    workflow.basedir) == "rules" else os.path.dirname(workflow.basedir)
sys.path.insert(0, os.path.join(_REPO, "src"))

from tmstarget.errors import TmsTargetError  # noqa: E402
from tmstarget.preproc import FMRIPREP_SUBDIR, FMRIPREP_WORK_SUBDIR  # noqa: E402
from tmstarget.preproc import BUILTIN_SUBDIR, BUILTIN_WORK_SUBDIR  # noqa: E402
from tmstarget.preproc import raw_bids_participants, resolve_method  # noqa: E402
from tmstarget.builtin import itk_threads  # noqa: E402
from tmstarget.inputcheck import image_shape  # noqa: E402
from tmstarget.provenance import Stamps, rule_config  # noqa: E402

validate(config, os.path.join(_REPO, "workflow", "schemas", "config.schema.yaml"))


def _fail_stage1(message):
    """Stop with one clean line (no traceback)."""
    print(f"tmstarget ERROR: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


if not config.get("bids_dir"):
    _fail_stage1("bids_dir is not set: the fMRIPrep stage needs the raw BIDS dataset. What to "
                 "do: set bids_dir in your config (or use the tmstarget command).")
try:
    METHOD = resolve_method(config["preprocessing"])
except TmsTargetError as _exc:
    _fail_stage1(_exc)

BIDS_DIR = os.path.abspath(os.path.expanduser(config["bids_dir"]))
STAGE1_OUT = os.path.abspath(os.path.expanduser(config["output_dir"]))
FMRIPREP_OUT = os.path.join(STAGE1_OUT, str(FMRIPREP_SUBDIR))
FMRIPREP_WORK = os.path.join(STAGE1_OUT, str(FMRIPREP_WORK_SUBDIR))
BUILTIN_OUT = os.path.join(STAGE1_OUT, str(BUILTIN_SUBDIR))
BUILTIN_WORK = os.path.join(STAGE1_OUT, str(BUILTIN_WORK_SUBDIR))

try:
    FMRIPREP_PARTICIPANTS, _fmriprep_skipped = raw_bids_participants(
        BIDS_DIR, task=config["task"], participant_label=config.get("participant_label"),
        exclude=config.get("exclude_participants"))
except TmsTargetError as _exc:
    _fail_stage1(_exc)
for _lab, _why in _fmriprep_skipped:
    print(f"[tmstarget] skipped sub-{_lab}: {_why}", file=sys.stderr)
if not FMRIPREP_PARTICIPANTS:
    _fail_stage1(f"no participant in {BIDS_DIR} has both a T1w and a task-{config['task']} "
                 "BOLD image. See the 'skipped' lines above.")


def get_fmriprep_outputs():
    """Stage 1's per-participant completion markers (fMRIPrep or built-in)."""
    work = BUILTIN_WORK if METHOD == "builtin" else FMRIPREP_WORK
    return [f"{work}/sub-{p}.done" for p in FMRIPREP_PARTICIPANTS]


def _raw_bold_volumes(participant):
    """Total volumes x voxels of a participant's raw task BOLD runs (from the headers)."""
    import glob

    total_vols = 0
    pattern = f"sub-{participant}*_task-{config['task']}_*bold.nii*"
    for f in glob.glob(os.path.join(BIDS_DIR, f"sub-{participant}", "**", pattern),
                       recursive=True):
        shape = image_shape(f)  # the header only: planning never opens image data
        if shape:
            total_vols = max(total_vols, int(shape[3]) if len(shape) > 3 else 1)
    return total_vols


def builtin_inputs(wildcards):
    """The participant's raw T1w and task BOLD files (+ sidecars): a change re-runs stage 1."""
    import glob

    sub = os.path.join(BIDS_DIR, f"sub-{wildcards.participant}")
    pats = ["anat/*_T1w.nii*", "ses-*/anat/*_T1w.nii*",
            f"func/*_task-{config['task']}_*bold.*", f"ses-*/func/*_task-{config['task']}_*bold.*"]
    return sorted(f for pat in pats for f in glob.glob(os.path.join(sub, pat)))


# stamps (tmstarget.provenance): a changed setting or input content reruns the participant
_LOCKS = os.path.join(STAGE1_OUT, ".snakemake", "locks")
STAMPS = Stamps(STAGE1_OUT, config, update=not (os.path.isdir(_LOCKS) and os.listdir(_LOCKS)))
for _p in FMRIPREP_PARTICIPANTS:
    if METHOD == "builtin":
        STAMPS.stamp("builtin_preproc", f"sub-{_p}",
                     builtin_inputs(type("W", (), {"participant": _p})()))
    else:
        STAMPS.stamp("fmriprep", f"sub-{_p}", [config["preprocessing"]["fmriprep_image"]])
STAMPS.save()


def stamp_input(rule):
    return lambda wc: STAMPS.path(rule, f"sub-{wc.participant}")


#: preprocessing.builtin (its deterministic flag sets the rule's threads, via itk_threads)
BUILTIN_CFG = dict(config["preprocessing"].get("builtin") or {})


def builtin_mem(wildcards, attempt):
    """MB for one participant, from its longest run's volume count; grows with retries.

    Measured (benchmarks/bench_builtin.py, 300 volumes, 2 mm MNI output): 4.3-4.8 GB peak, in
    the confounds step (the run's brain x volume float64 matrix and its copies) and the write
    of the 2 mm MNI series; registration stays under 1 GB. 2,000 MB + 11 MB per volume asks
    5.3 GB for 300 volumes."""
    vols = _raw_bold_volumes(wildcards.participant)
    return int(min(max(3000, 2000 + vols * 11), 128000) * attempt)


def builtin_runtime(wildcards, attempt):
    """Minutes, generous: measured 3.6 min for 300 volumes single-threaded (the default,
    deterministic mode; 8.3 min before 2026-12); asks 20 min + 3 s per volume, and more with
    each retry."""
    vols = _raw_bold_volumes(wildcards.participant)
    return int((20 + vols * 3 / 60) * attempt)


def fmriprep_runtime(wildcards, attempt):
    """Minutes: ~2-4 h without FreeSurfer, up to ~12 h with recon-all; grows with retries."""
    return (480 if config["preprocessing"]["fs_no_reconall"] else 1440) * attempt


if METHOD == "fmriprep":

    rule fmriprep:
        input:
            image=config["preprocessing"]["fmriprep_image"],
            stamp=stamp_input("fmriprep"),
        output:
            done=f"{FMRIPREP_WORK}/sub-{{participant}}.done",
            subject=directory(f"{FMRIPREP_OUT}/sub-{{participant}}"),
        params:
            bids_dir=BIDS_DIR,
            output_dir=FMRIPREP_OUT,
            work_dir=lambda wc: f"{FMRIPREP_WORK}/sub-{wc.participant}",
            cfg=rule_config("fmriprep", config),
        wildcard_constraints:
            participant="|".join(re.escape(p) for p in FMRIPREP_PARTICIPANTS),
        log:
            f"{STAGE1_OUT}/logs/fmriprep/sub-{{participant}}.log",
        threads: 8
        resources:
            mem_mb=lambda wc, attempt: 16000 * attempt,
            runtime=fmriprep_runtime,
        script:
            os.path.join(_REPO, "scripts", "fmriprep.py")


if METHOD == "builtin":

    rule builtin_preproc:
        input:
            builtin_inputs,
            stamp=stamp_input("builtin_preproc"),
        output:
            done=f"{BUILTIN_WORK}/sub-{{participant}}.done",
            subject=directory(f"{BUILTIN_OUT}/sub-{{participant}}"),
        params:
            bids_dir=BIDS_DIR,
            output_dir=BUILTIN_OUT,
            cfg=rule_config("builtin_preproc", config),
        wildcard_constraints:
            participant="|".join(re.escape(p) for p in FMRIPREP_PARTICIPANTS),
        log:
            f"{STAGE1_OUT}/logs/builtin/sub-{{participant}}.log",
        threads: itk_threads(BUILTIN_CFG, 4)
        resources:
            mem_mb=builtin_mem,
            runtime=builtin_runtime,
        script:
            os.path.join(_REPO, "scripts", "builtin_preproc.py")
