# Trial mode (tmstarget.trial; README "Running a trial"): per participant one blinded navigator
# target ("Target", every format, same files in either arm) under OUTPUT_DIR/blinded/sub-X[/ses-Y]/,
# and the unblinding key and per-participant records under OUTPUT_DIR/unblinded/.
#
# The allocation is made here, when the workflow is planned, and not by a rule: Snakemake
# deletes a rule's outputs before rerunning it, and an allocation must never be redrawn. A
# stored key (unblinded/trial_key.tsv) is read; new participants are appended.
from tmstarget import trial as _trial  # noqa: E402

_TRIAL = _trial.settings(config.get("trial"))
_TRIAL_UNITS = {}  # blinded prefix -> (anat prefix, participant, session, code, arm)
TRIAL_KEY = f"{OUT}/unblinded/trial_key.tsv"

if _TRIAL["enabled"]:
    if not config["native"]["enabled"]:
        _fail("trial mode needs the native step: set native.enabled: true (config).")
    _nat_method = config["native"].get("method") or (
        "cluster" if "cluster" in config["target"]["methods"] else config["target"]["methods"][0])
    for _arm, _m in _TRIAL["arms"].items():
        if _m in _scalp.METHODS:
            if not (_SCALP_CFG["enabled"] and _m in _SCALP_CFG["methods"]):
                _fail(f"trial arm {_arm}: scalp rule {_m} is not computed; add it to "
                      "native.scalp_rules.methods (config).")
        elif _m != _nat_method:
            _fail(f"trial arm {_arm}: method {_m} is not the exported connectivity method "
                  f"({_nat_method}); set native.method: {_m} (config).")
    # one blinded target per participant: the pre session when engagement is configured
    _by_sub = {}
    for _ap in sorted(PLAN.anat_units):
        _u = _unit_of_anat(_ap)
        _by_sub.setdefault(_u.participant, []).append((_ap, _u.session))
    _pre = (_TRIAL["engagement"] or {}).get("pre")
    try:
        _KEY_ROWS = _trial.load_or_create_allocation(sorted(_by_sub), _TRIAL, TRIAL_KEY)
    except TmsTargetError as _exc:
        _fail(_exc)
    _KEY = {r["participant_id"]: r for r in _KEY_ROWS}
    for _p, _aps in _by_sub.items():
        _ap, _ses = next(((a, s) for a, s in _aps if _pre and s == _pre), _aps[0])
        _arm = _KEY[_p]["arm"]
        if _TRIAL["arms"][_arm] == "5cm" and _ap not in _HOTSPOT_UNITS:
            _fail(f"sub-{_p} is in arm {_arm} (5 cm rule) but has no motor hotspot; add it to "
                  "native.scalp_rules.hotspot_t1w_mm (config).")
        _bp = f"sub-{_p}/" + (f"ses-{_ses}/" if _ses else "") + f"sub-{_p}" + (
            f"_ses-{_ses}" if _ses else "")
        _TRIAL_UNITS[_bp] = (_ap, _p, _ses, _KEY[_p]["code"], _arm)
        STAMPS.stamp("trial_blinded", _bp, [PLAN.anat[_ap].t1w])


def _trial_coilpose(wildcards):
    ap, _, _, _, arm = _TRIAL_UNITS[wildcards.blindprefix]
    desc = _trial.arm_source_desc(_TRIAL["arms"][arm])
    return f"{OUT}/{ap}_space-T1w_desc-{desc}_coilpose.json"


def get_trial_outputs():
    """The blinded files and unblinded records of every participant (trial.enabled)."""
    out = []
    for bp in sorted(_TRIAL_UNITS):
        out.append(f"{OUT}/unblinded/{bp}_desc-trial_record.json")
        out += [f"{OUT}/blinded/{bp}_space-T1w_desc-blinded{s}" for s in _trial.BLINDED_SUFFIXES]
    return out


rule trial_blinded:
    input:
        coilpose=_trial_coilpose,
        t1w=lambda wc: PLAN.anat[_TRIAL_UNITS[wc.blindprefix][0]].t1w,
        stamp=stamp_input("trial_blinded", "blindprefix"),
    output:
        record=f"{OUT}/unblinded/{{blindprefix}}_desc-trial_record.json",
        blinded=[f"{OUT}/blinded/{{blindprefix}}_space-T1w_desc-blinded{_s}"
                 for _s in _trial.BLINDED_SUFFIXES],
    params:
        output_root=OUT,
        cfg=rule_config("trial_blinded", config),
        participant=lambda wc: _TRIAL_UNITS[wc.blindprefix][1],
        session=lambda wc: _TRIAL_UNITS[wc.blindprefix][2],
        code=lambda wc: _TRIAL_UNITS[wc.blindprefix][3],
        arm=lambda wc: _TRIAL_UNITS[wc.blindprefix][4],
    wildcard_constraints:
        blindprefix=_alternatives(_TRIAL_UNITS) or "(?!)",
    log:
        f"{OUT}/logs/trial/{{blindprefix}}.log",
    threads: 1
    resources:
        mem_mb=mem_scaled(1500),
        runtime=10,
    script:
        "../../scripts/trial_blinded.py"
