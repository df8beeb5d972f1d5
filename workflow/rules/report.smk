# Reports: one self-contained HTML (+ JSON twin) per participant/session, and a cohort report.
#
# `report` reads only its participant's own files (the verdict is in the reproducibility
# stats JSON, tmstarget.verdict), never the cohort targets.tsv, so adding a participant to the
# output folder does not rerun or change it. The cohort comparison is in the cohort report.

localrules:
    cohort_report,


from tmstarget.plan import UNIT_STEM_PATTERN, unit_stem as _unit_stem  # noqa: E402

#: report path stem (sub-X/[ses-Y/]sub-X[_ses-Y]) -> unit prefix
REPORT_UNITS = {_unit_stem(u.participant, u.session): p for p, u in PLAN.units.items()}
for _stem, _p in REPORT_UNITS.items():
    STAMPS.stamp("report", _stem, _report_files(PLAN.units[_p]))


def get_report_native_json(prefix):
    """The unit's native-space target JSON if the native step runs for it, else None."""
    if not hasattr(rules, "native") or not config.get("native", {}).get("enabled", False):
        return None
    ap = ANAT_OF_UNIT.get(prefix)  # workflow/rules/common.smk
    return None if ap is None else f"{OUT}/{ap}_space-T1w_desc-target_coords.json"


def get_report_native_note(wildcards):
    """Why the native section is empty for this unit (None when the native step runs)."""
    p = REPORT_UNITS[wildcards.reportstem]
    if get_report_native_json(p):
        return None
    if not hasattr(rules, "native") or not config.get("native", {}).get("enabled", False):
        return "native-space step not run (native.enabled is false or the step is not installed)."
    u = PLAN.units[p]
    for s in getattr(PLAN, "native_skipped", []):
        if s.participant == u.participant and s.session == u.session:
            return f"native-space step not run: {s.reason}"
    return "native-space step not run."


def get_report_inputs(wildcards):
    p = REPORT_UNITS[wildcards.reportstem]
    base = f"{OUT}/{p}_space-{SPACE}_desc-"
    files = {
        "coords": f"{base}target_coords.json",
        "rmap": f"{base}sgacc_stat-r_boldmap.nii.gz",
        "region": f"{base}searchregion_mask.nii.gz",
        "qc": f"{OUT}/work/{p}_desc-seedmap_qc.json",
        "seed_tsv": f"{OUT}/{p}_desc-sgacc_timeseries.tsv",
    }
    if config["reproducibility"]["enabled"]:
        files["repro"] = f"{base}reproducibility_stats.json"
        files["cloud"] = f"{base}bootstrap_targets.tsv"
    native = get_report_native_json(p)
    if native:
        files["native"] = native
        if config["native"].get("scalp_rules", {}).get("enabled", True):
            # the scalp-model and landmark QC figures the native step wrote (embedded)
            base = native[: -len("_desc-target_coords.json")]
            files["scalp_figures"] = [f"{base}_desc-scalpmodel_qc.png",
                                      f"{base}_desc-landmarks_qc.png"]
    return files


rule report:
    input:
        unpack(get_report_inputs),
        stamp=stamp_input("report", "reportstem"),
    output:
        html=f"{OUT}/{{reportstem}}_report.html",
        json=f"{OUT}/{{reportstem}}_report.json",
    params:
        output_root=OUT,
        native_note=get_report_native_note,
        cfg=rule_config("report", config),
    wildcard_constraints:
        reportstem=UNIT_STEM_PATTERN,  # its form (tmstarget.plan); the values: REPORT_UNITS
    log:
        f"{OUT}/logs/report/{{reportstem}}.log",
    threads: 1
    resources:
        mem_mb=mem_scaled(1500),
        runtime=10,
    script:
        "../../scripts/report.py"


rule cohort_report:
    input:
        jsons=[f"{OUT}/{s}_report.json" for s in sorted(REPORT_UNITS)],
        htmls=[f"{OUT}/{s}_report.html" for s in sorted(REPORT_UNITS)],
        targets_tsv=f"{OUT}/targets.tsv",
    output:
        html=f"{OUT}/cohort_report.html",
    params:
        output_root=OUT,
        summary=f"{OUT}/reproducibility_summary.json",
    log:
        f"{OUT}/logs/cohort_report.log",
    threads: 1
    resources:
        mem_mb=mem_scaled(1000),
        runtime=10,
    script:
        "../../scripts/cohort_report.py"


def get_report_outputs():
    """Per-subject reports and the cohort report (targets of `rule all`)."""
    return [f"{OUT}/{s}_report.html" for s in sorted(REPORT_UNITS)] + [
        f"{OUT}/cohort_report.html"
    ]


finish_stamps()  # the last rule file: every stamp is written (workflow/rules/common.smk)
