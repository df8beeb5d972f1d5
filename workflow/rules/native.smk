# Native (T1w) space: move each participant/session's MNI targets into fMRIPrep's
# desc-preproc_T1w, find the scalp entry and coil pose, write every neuronavigation export
# (Brainsight, Localite, ANT visor2, 3D Slicer, CSV/JSON, NIfTI sphere) into sub-X/[ses-Y/]anat/.
# Participants without anatomy are listed in skipped.tsv; their MNI outputs are unaffected.
#
# Scalp rules (native.scalp_rules, tmstarget.scalp): landmarks, Beam F3, EEG 10-20 F3 and the
# 5 cm rule on the participant's own scalp, with their own exports (desc-scalpBeamF3, ...),
# a points TSV, the head mask and two QC figures. The 5 cm rule needs the participant's motor
# hotspot, so units with a hotspot are built by rule native_hotspot (same script, five-cm
# exports declared too) and the others by rule native.
from tmstarget.navigation import ALL_FORMATS as _NAV_FORMATS  # noqa: E402
from tmstarget import scalp as _scalp  # noqa: E402
from tmstarget.plan import ANAT_PREFIX_PATTERN  # noqa: E402

for _s in PLAN.native_skipped:
    print(f"[tmstarget] sub-{_s.participant}" + (f" ses-{_s.session}" if _s.session else "")
          + f": {_s.reason}", file=sys.stderr)

_SCALP_CFG = _scalp.settings(config["native"].get("scalp_rules"))


def _unit_of_anat(ap):
    return PLAN.units[PLAN.anat_units[ap]]


#: anat prefixes whose unit has a motor hotspot (the 5 cm rule runs there)
_HOTSPOT_UNITS = sorted(
    ap for ap in PLAN.anat_units
    if _scalp.has_hotspot(_SCALP_CFG, _unit_of_anat(ap).participant, _unit_of_anat(ap).session)
)
_PLAIN_UNITS = sorted(set(PLAN.anat_units) - set(_HOTSPOT_UNITS))
# rule native: the form of an anat prefix (tmstarget.plan), minus the units with a hotspot
# (a lookahead naming only those few: both rules write the same names); rule native_hotspot:
# exactly the hotspot units
_PLAIN_CONSTRAINT = ((f"(?!(?:{_alternatives(_HOTSPOT_UNITS)})_space-T1w_)" if _HOTSPOT_UNITS
                      else "") + ANAT_PREFIX_PATTERN) if _PLAIN_UNITS else "(?!)"


def get_anat_files(wildcards):
    a = PLAN.anat[wildcards.anatprefix]
    return {
        "t1w": a.t1w,
        "mask": a.mask,
        "xfm_mni_to_t1w_points": a.xfm_mni_to_t1w_points,
        "xfm_t1w_to_mni_points": a.xfm_t1w_to_mni_points,
    }


_LANDMARKS_FILE = [_SCALP_CFG["landmarks_file"]] if _SCALP_CFG.get("landmarks_file") else []
for _ap, _a in PLAN.anat.items():
    STAMPS.stamp("native_hotspot" if _ap in _HOTSPOT_UNITS else "native", _ap,
                 [_a.t1w, _a.mask, _a.xfm_mni_to_t1w_points, _a.xfm_t1w_to_mni_points,
                  *_LANDMARKS_FILE])


def get_unit_target_json(wildcards):
    up = PLAN.anat_units[wildcards.anatprefix]
    return f"{OUT}/{up}_space-{SPACE}_desc-target_coords.json"


def get_unit_verdict_inputs(wildcards):
    """The unit's seed-map QC and reproducibility stats (its own verdict, tmstarget.verdict)."""
    up = PLAN.anat_units[wildcards.anatprefix]
    files = {"qc": f"{OUT}/work/{up}_desc-seedmap_qc.json"}
    if config["reproducibility"]["enabled"]:
        files["repro"] = f"{OUT}/{up}_space-{SPACE}_desc-reproducibility_stats.json"
    return files


def get_unit_rmap(wildcards):
    up = PLAN.anat_units[wildcards.anatprefix]
    return f"{OUT}/{up}_space-{SPACE}_desc-sgacc_stat-r_boldmap.nii.gz"


def native_outputs(with_5cm):
    """Output files of rules native / native_hotspot (names relative to the anat prefix)."""
    out = {
        "coords": f"{OUT}/{{anatprefix}}_space-T1w_desc-target_coords.json",
        "exports": [f"{OUT}/{{anatprefix}}_space-T1w_desc-target{_suffix}"
                    for _suffix in _NAV_FORMATS.values()],
    }
    if _SCALP_CFG["enabled"]:
        out["scalp"] = [f"{OUT}/{n}" for n in _scalp.output_names(
            "{anatprefix}_space-T1w", _SCALP_CFG["methods"], with_5cm)]
    return out


rule native:
    input:
        unpack(get_anat_files),
        unpack(get_unit_verdict_inputs),
        coords=get_unit_target_json,
        rmap=get_unit_rmap,
        stamp=stamp_input("native", "anatprefix"),
    output:
        **native_outputs(False),
    params:
        output_root=OUT,
        cfg=rule_config("native", config),
    wildcard_constraints:
        anatprefix=_PLAIN_CONSTRAINT,
    log:
        f"{OUT}/logs/native/{{anatprefix}}.log",
    group:
        TARGETS_GROUP
    threads: 1
    resources:
        mem_mb=mem_scaled(3000),
        runtime=15,
    script:
        "../../scripts/native.py"


rule native_hotspot:
    input:
        unpack(get_anat_files),
        unpack(get_unit_verdict_inputs),
        coords=get_unit_target_json,
        rmap=get_unit_rmap,
        stamp=stamp_input("native_hotspot", "anatprefix"),
    output:
        **native_outputs(True),
    params:
        output_root=OUT,
        cfg=rule_config("native_hotspot", config),
    wildcard_constraints:
        anatprefix=_alternatives(_HOTSPOT_UNITS) or "(?!)",
    log:
        f"{OUT}/logs/native/{{anatprefix}}.log",
    group:
        TARGETS_GROUP
    threads: 1
    resources:
        mem_mb=mem_scaled(3000),
        runtime=15,
    script:
        "../../scripts/native.py"
