# Native (T1w) space: move each participant/session's MNI targets into fMRIPrep's
# desc-preproc_T1w, find the scalp entry and coil pose, write every neuronavigation export
# (Brainsight, Localite, ANT visor2, 3D Slicer, CSV/JSON, NIfTI sphere) into sub-X/[ses-Y/]anat/.
# Participants without anatomy are listed in skipped.tsv; their MNI outputs are unaffected.
from tmstarget.navigation import ALL_FORMATS as _NAV_FORMATS  # noqa: E402

for _s in PLAN.native_skipped:
    print(f"[tmstarget] sub-{_s.participant}" + (f" ses-{_s.session}" if _s.session else "")
          + f": {_s.reason}", file=sys.stderr)


def get_anat_files(wildcards):
    a = PLAN.anat[wildcards.anatprefix]
    return {
        "t1w": a.t1w,
        "mask": a.mask,
        "xfm_mni_to_t1w_points": a.xfm_mni_to_t1w_points,
        "xfm_t1w_to_mni_points": a.xfm_t1w_to_mni_points,
    }


for _ap, _a in PLAN.anat.items():
    STAMPS.stamp("native", _ap, [_a.t1w, _a.mask, _a.xfm_mni_to_t1w_points,
                                 _a.xfm_t1w_to_mni_points])


def get_unit_target_json(wildcards):
    up = PLAN.anat_units[wildcards.anatprefix]
    return f"{OUT}/{up}_space-MNI152NLin2009cAsym_desc-target_coords.json"


rule native:
    input:
        unpack(get_anat_files),
        coords=get_unit_target_json,
        stamp=stamp_input("native", "anatprefix"),
    output:
        coords=f"{OUT}/{{anatprefix}}_space-T1w_desc-target_coords.json",
        exports=[f"{OUT}/{{anatprefix}}_space-T1w_desc-target{_suffix}"
                 for _suffix in _NAV_FORMATS.values()],
    params:
        output_root=OUT,
        cfg=rule_config("native", config),
    wildcard_constraints:
        anatprefix=_alternatives(PLAN.anat_units) or "(?!)",
    log:
        f"{OUT}/logs/native/{{anatprefix}}.log",
    group:
        "participant"
    threads: 1
    resources:
        mem_mb=mem_scaled(2000),
        runtime=15,
    script:
        "../../scripts/native.py"
