# The fmriprep rule (stage 1, raw BIDS input): see workflow/fmriprep.smk and tmstarget.preproc.
import os
import re
import sys

from snakemake.utils import validate

_REPO = os.path.dirname(os.path.dirname(workflow.basedir)) if os.path.basename(
    workflow.basedir) == "rules" else os.path.dirname(workflow.basedir)
sys.path.insert(0, os.path.join(_REPO, "src"))

from tmstarget.errors import TmsTargetError  # noqa: E402
from tmstarget.preproc import FMRIPREP_SUBDIR, FMRIPREP_WORK_SUBDIR  # noqa: E402
from tmstarget.preproc import raw_bids_participants  # noqa: E402

validate(config, os.path.join(_REPO, "workflow", "schemas", "config.schema.yaml"))


def _fail_stage1(message):
    """Stop with one clean line (no traceback)."""
    print(f"tmstarget ERROR: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


if not config.get("bids_dir"):
    _fail_stage1("bids_dir is not set: the fMRIPrep stage needs the raw BIDS dataset. What to "
                 "do: set bids_dir in your config (or use the tmstarget command).")
if not config["preprocessing"].get("fmriprep_image"):
    _fail_stage1("preprocessing.fmriprep_image is not set. What to do: set it to an fMRIPrep "
                 "Apptainer/Singularity image, or run fMRIPrep yourself and point tmstarget "
                 "at its output folder.")

BIDS_DIR = os.path.abspath(os.path.expanduser(config["bids_dir"]))
STAGE1_OUT = os.path.abspath(os.path.expanduser(config["output_dir"]))
FMRIPREP_OUT = os.path.join(STAGE1_OUT, str(FMRIPREP_SUBDIR))
FMRIPREP_WORK = os.path.join(STAGE1_OUT, str(FMRIPREP_WORK_SUBDIR))

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
    return [f"{FMRIPREP_WORK}/sub-{p}.done" for p in FMRIPREP_PARTICIPANTS]


def fmriprep_runtime(wildcards, attempt):
    """Minutes: ~2-4 h without FreeSurfer, up to ~12 h with recon-all; grows with retries."""
    return (480 if config["preprocessing"]["fs_no_reconall"] else 1440) * attempt


rule fmriprep:
    input:
        image=config["preprocessing"]["fmriprep_image"],
    output:
        done=f"{FMRIPREP_WORK}/sub-{{participant}}.done",
        subject=directory(f"{FMRIPREP_OUT}/sub-{{participant}}"),
    params:
        bids_dir=BIDS_DIR,
        output_dir=FMRIPREP_OUT,
        work_dir=lambda wc: f"{FMRIPREP_WORK}/sub-{wc.participant}",
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
