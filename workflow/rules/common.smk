# Helpers for the rules: config validation, input discovery, input functions.
import os
import re
import sys

from snakemake.utils import validate

sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from tmstarget.configcheck import config_problems  # noqa: E402
from tmstarget.errors import TmsTargetError  # noqa: E402
from tmstarget.inputcheck import image_shape, tsv_cell  # noqa: E402
from tmstarget.plan import RUN_PREFIX_PATTERN, UNIT_PREFIX_PATTERN, build_plan  # noqa: E402
from tmstarget.provenance import Stamps, rule_config  # noqa: E402


def _fail(message):
    """Stop with one clean line (no traceback): the user needs the problem, not our code."""
    print(f"tmstarget ERROR: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


# one line per problem (key path, "did you mean", cross-key rules) before Snakemake's own
# validation, which would print the whole jsonschema dump
_problems = config_problems(config)
if _problems:
    for _p in _problems:
        print(f"tmstarget ERROR: {_p}", file=sys.stderr, flush=True)
    raise SystemExit(2)
validate(config, os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"))


try:
    PLAN = build_plan(config)
except TmsTargetError as _exc:
    _fail(_exc)

OUT = str(PLAN.output_dir)
# Template space of the BOLD (config space): every template-space output is named with it.
SPACE = config.get("space") or "MNI152NLin2009cAsym"

for _s in PLAN.skipped:
    _where = f"sub-{_s.participant}" + (f" ses-{_s.session}" if _s.session else "") + (
        f" run-{_s.run}" if _s.run else ""
    )
    print(tsv_cell(f"[tmstarget] skipped {_where}: {_s.reason}"), file=sys.stderr)
if not PLAN.units:
    _fail(
        f"no usable run found in {PLAN.fmriprep_dir} (task '{config['task']}', space "
        f"{config['space']}). See the 'skipped' lines above."
    )


def _alternatives(values):
    """Wildcard constraint that matches exactly the known values (escaped)."""
    return "|".join(re.escape(v) for v in sorted(values))


# The forms of the names (tmstarget.plan): a list of every planned value here would be copied
# into every output pattern and scanned for each job (most of the planning time of a large
# cohort). Which values exist is the plan's: every input function looks its wildcard up in it.
wildcard_constraints:
    prefix=UNIT_PREFIX_PATTERN,
    runprefix=RUN_PREFIX_PATTERN,


def get_run(wildcards):
    """Input files of one run, as a dict."""
    return PLAN.runs[wildcards.runprefix].to_dict()


def get_run_files(wildcards):
    r = PLAN.runs[wildcards.runprefix]
    return {
        "bold": r.bold,
        "mask": r.mask,
        "confounds": r.confounds,
        "confounds_json": r.confounds_json,
        "bold_json": r.bold_json,
    }


def get_unit(wildcards):
    """(participant, session) of an output prefix."""
    u = PLAN.units[wildcards.prefix]
    return {"participant": u.participant, "session": u.session}


def get_denoised_runs(wildcards):
    return [
        f"{OUT}/work/{rp}_desc-denoised_timeseries.npz"
        for rp in PLAN.unit_runs[wildcards.prefix]
    ]


def get_user_files(section):
    """A user-supplied seed/search file as an input (so edits trigger reruns)."""
    f = config[section].get("file")
    return [f] if config[section].get("kind") == "file" and f else []


def get_target_jsons():
    return [
        f"{OUT}/{p}_space-{SPACE}_desc-target_coords.json"
        for p in sorted(PLAN.units)
    ]


def get_repro_jsons():
    if not config["reproducibility"]["enabled"]:
        return []
    return [
        f"{OUT}/{p}_space-{SPACE}_desc-reproducibility_stats.json"
        for p in sorted(PLAN.units)
    ]


def get_skipped():
    """Rows of skipped.tsv (control characters escaped: a newline in a folder name stays inside
    its cell)."""
    return [
        {
            "participant_id": tsv_cell(f"sub-{s.participant}"),
            "session_id": tsv_cell(f"ses-{s.session}") if s.session else None,
            "run": tsv_cell(s.run),
            "reason": tsv_cell(s.reason),
        }
        for s in [*PLAN.skipped, *PLAN.native_skipped]
    ]


def get_final_outputs():
    return [
        f"{OUT}/targets.tsv",
        f"{OUT}/dataset_description.json",
    ] + get_native_jsons() + get_report_outputs()  # get_report_outputs: workflow/rules/report.smk


def get_native_jsons():
    """Native-space (T1w) target JSONs of every unit with anatomy (native.enabled)."""
    if not config["native"]["enabled"]:
        return []
    return [f"{OUT}/{ap}_space-T1w_desc-target_coords.json" for ap in sorted(PLAN.anat_units)]


def _bold_size(bold):
    """(voxels per volume, volumes) of a BOLD file from its header (0, 0 if unreadable).

    Only the header bytes are read (tmstarget.inputcheck): planning never opens image data,
    which could take the whole run down on one broken file."""
    shape = image_shape(bold)
    if not shape or len(shape) < 3:
        return 0, 0
    return int(shape[0] * shape[1] * shape[2]), int(shape[3] if len(shape) > 3 else 1)


def mem_for_bold(wildcards, attempt):
    """Memory (MB) to denoise one run, from its voxel x volume count; grows with retries."""
    vox, vols = _bold_size(PLAN.runs[wildcards.runprefix].bold)
    # tmstarget.denoise streams the file: it holds the cleaned float32 brain x volume matrix
    # (brain <= ~30 % of an MNI grid) plus a few 50-volume chunk buffers (~12 B per grid voxel
    # and chunk volume) and ~0.8 GB of libraries. Measured (benchmarks/bench_long_scan.py):
    # 2 mm MNI, 1,200 volumes -> 2.2 GB peak (this gives 3.0 GB); 300 volumes -> 1.4 GB (1.8).
    return int(min(max(1000, 800 + vox * (vols * 0.3 * 4 + 50 * 12) / 1e6), 128000) * attempt)


def mem_for_unit(wildcards, attempt):
    """Memory (MB) for a participant's seed map / reproducibility: its denoised data."""
    total = 0
    for rp in PLAN.unit_runs[wildcards.prefix]:
        vox, vols = _bold_size(PLAN.runs[rp].bold)
        total += vox * vols
    # the runs' denoised float32 data (brain <= ~30 % of the grid) and, with several runs,
    # their concatenation; the seed map and the search-region copies work in small blocks
    return int(min(max(1000, 600 + total * 0.3 * 4 * 2 / 1e6), 128000) * attempt)


def runtime_for_bold(wildcards, attempt):
    """Minutes for one run: generous, scaled by data size and attempt."""
    vox, vols = _bold_size(PLAN.runs[wildcards.runprefix].bold)
    return int((10 + vox * vols / 2e7) * attempt)


def mem_scaled(mb):
    """A fixed memory request that grows with each retry."""

    def _mem(wildcards, attempt):
        return mb * attempt

    return _mem


# ---------------------------------------------------------------------------- stamps
# Every job reads its stamp (tmstarget.provenance): its configuration values, the tmstarget
# version and the SHA-256 of its external inputs. A stamp is rewritten only when that changes,
# which reruns exactly that job and what depends on it.
_LOCKS = os.path.join(OUT, ".snakemake", "locks")
STAMPS = Stamps(OUT, config, update=not (os.path.isdir(_LOCKS) and os.listdir(_LOCKS)))


def _run_files(r):
    return [r.bold, r.mask, r.confounds, r.confounds_json, r.bold_json]


def _report_files(unit):
    """External files a report reads: the input's dataset_description.json and, for the
    built-in preprocessing, its QC JSONs and figures of this participant/session."""
    root = str(PLAN.fmriprep_dir)
    sub = os.path.join(root, f"sub-{unit.participant}")
    func = os.path.join(sub, f"ses-{unit.session}", "func") if unit.session else os.path.join(
        sub, "func")
    files = [os.path.join(root, "dataset_description.json")]
    for d, suffix in ((func, "_desc-builtin_qc.json"), (os.path.join(sub, "figures"), ".png")):
        if os.path.isdir(d):
            files += [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(suffix)]
    return [f for f in files if os.path.isfile(f)]


for _rp, _r in PLAN.runs.items():
    STAMPS.stamp("denoise_run", _rp, _run_files(_r))
for _up, _u in PLAN.units.items():
    STAMPS.stamp("seed_map", _up, get_user_files("seed"))
    STAMPS.stamp("target", _up, get_user_files("search"))
    if config["reproducibility"]["enabled"]:
        STAMPS.stamp("reproducibility", _up, get_user_files("seed"))
STAMPS.stamp("aggregate", "cohort")


def stamp_input(rule, key):
    """Input function: the stamp of a job (`key`: the name of its wildcard)."""

    def _stamp(wildcards):
        return STAMPS.path(rule, wildcards[key])

    return _stamp


def finish_stamps():
    """After the last rule file has written its stamps (report.smk): keep the checksum cache;
    say when changed settings wait for another run to finish."""
    STAMPS.save()
    if STAMPS.deferred:
        print(f"[tmstarget] {len(STAMPS.deferred)} job(s) have changed settings or inputs, but "
              "another run holds this folder: the next run reruns them", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# targeting methods that need the time series (snt, seedmap; tmstarget.datamethods)
_TCFG = config["target"]
_NEEDS_DATA = any(m in ("snt", "seedmap") for m in _TCFG["methods"])
_SEEDMAP = "seedmap" in _TCFG["methods"]
_SEEDMAP_COHORT = _SEEDMAP and (_TCFG.get("seedmap") or {}).get("source", "cohort") == "cohort"
#: the seedmap method's own correlation map (an output of rule target when seedmap is asked for)
SEEDMAP_OUTPUTS = ({"seedmap": f"{OUT}/{{prefix}}_space-{SPACE}_desc-seedmap_stat-r_boldmap.nii.gz"}
                   if _SEEDMAP else {})


def get_data_method_runs(wildcards):
    """The denoised runs, for snt/seedmap only (the map methods need the map alone)."""
    return get_denoised_runs(wildcards) if _NEEDS_DATA else []


def get_group_map_input(wildcards):
    """The unit's leave-one-out group map (seedmap, source cohort) or the given group map."""
    if not _SEEDMAP:
        return []
    if _SEEDMAP_COHORT:
        return [f"{OUT}/{wildcards.prefix}_space-{SPACE}_desc-groupsgacc_stat-r_boldmap.nii.gz"]
    f = (_TCFG.get("seedmap") or {}).get("file")
    return [f] if f else []


def get_group_map_source_dict(wildcards):
    """Unit prefix -> sgACC map of every unit (the step leaves the participant's own out)."""
    return {p: f"{OUT}/{p}_space-{SPACE}_desc-sgacc_stat-r_boldmap.nii.gz"
            for p in sorted(PLAN.units)}


def get_group_map_sources(wildcards):
    me = PLAN.units[wildcards.prefix].participant
    return [f for p, f in get_group_map_source_dict(wildcards).items()
            if PLAN.units[p].participant != me]


def get_gm_probseg(wildcards):
    """The participant's fMRIPrep grey-matter probability map in the BOLD's space, if any."""
    if not config["search"].get("grey_matter", True):
        return []
    from tmstarget.greymatter import find_gm_probseg

    u = PLAN.units[wildcards.prefix]
    f = find_gm_probseg(PLAN.fmriprep_dir, u.participant, u.session, config["space"],
                        config.get("res"))
    return [str(f)] if f else []


def get_target_anat(wildcards):
    """The unit's anatomy (native step on): voxels too deep below the scalp are left out of
    the search region before choosing."""
    if not config["native"]["enabled"]:
        return {}
    ap = ANAT_OF_UNIT.get(wildcards.prefix)
    if ap is None:
        return {}
    a = PLAN.anat[ap]
    return {"t1w": a.t1w, "anat_mask": a.mask, "xfm_mni_to_t1w_points": a.xfm_mni_to_t1w_points}


#: unit prefix -> its anat prefix (units with anatomy; PLAN.anat_units the other way round)
ANAT_OF_UNIT = {up: ap for ap, up in PLAN.anat_units.items()}


STAMPS.stamp("group_map", "cohort")
#: group of the target, reproducibility and native jobs: with leave-one-out group maps they
#: depend on the other participants' seed maps, so they cannot share a (cluster) job with
#: this participant's denoising and seed map (that would make a cycle between groups)
TARGETS_GROUP = "participant_targets" if _SEEDMAP_COHORT else "participant"

