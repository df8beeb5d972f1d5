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


# ---------------------------------------------------------------------------------------------
# Pre/post engagement (trial.engagement: {pre, post}): for every participant with both sessions,
# the pre session's connectivity target carried to the post session, from the denoise outputs
# both sessions already have. Participants without both sessions are skipped with a note.
from tmstarget.plan import unit_prefix as _unit_prefix  # noqa: E402

_ENG = _TRIAL.get("engagement")
_ENG_UNITS = {}  # participant-level prefix -> (participant, pre unit prefix, post unit prefix)
_ENG_SKIPPED = []  # rows: participant_id, reason
TRIAL_ENGAGEMENT = f"{OUT}/unblinded/trial_engagement.tsv"

if _ENG and not _TRIAL["enabled"]:
    _fail("trial.engagement is set but trial.enabled is false (config): set trial.enabled: true "
          "with its arms and allocation, or trial.engagement: null.")
if _ENG and _TRIAL["enabled"]:
    if str(_ENG["pre"]) == str(_ENG["post"]):
        _fail(f"trial.engagement: pre and post are the same session ({_ENG['pre']!r}) (config); "
              "give the session labels before and after treatment.")
    _units_by_sub = {}
    for _up, _u in PLAN.units.items():
        _units_by_sub.setdefault(_u.participant, {})[_u.session] = _up
    for _p in sorted(_units_by_sub):
        _have = _units_by_sub[_p]
        _miss = [f"ses-{s}" for s in (_ENG["pre"], _ENG["post"]) if s not in _have]
        if _miss:
            _got = ", ".join(f"ses-{s}" for s in sorted(s for s in _have if s)) or "no sessions"
            _ENG_SKIPPED.append({"participant_id": f"sub-{_p}",
                                 "reason": f"no usable {' and '.join(_miss)} (has {_got})"})
            print(f"[tmstarget] sub-{_p}: pre/post engagement skipped: no usable "
                  f"{' and '.join(_miss)} (has {_got})", file=sys.stderr)
            continue
        if _p not in _KEY:
            _why = "not allocated (no anatomy, so no native or blinded target)"
            _ENG_SKIPPED.append({"participant_id": f"sub-{_p}", "reason": _why})
            print(f"[tmstarget] sub-{_p}: pre/post engagement skipped: {_why}", file=sys.stderr)
            continue
        _pre_up, _post_up = _have[_ENG["pre"]], _have[_ENG["post"]]
        _ep = _unit_prefix(_p, None, PLAN.units[_pre_up].task)
        _ENG_UNITS[_ep] = (_p, _pre_up, _post_up)
        STAMPS.stamp("trial_engagement", _ep)
    if _ENG_UNITS:
        STAMPS.stamp("trial_engagement_cohort", "cohort", [TRIAL_KEY])
    else:
        print(f"[tmstarget] no participant has both sessions ses-{_ENG['pre']} and "
              f"ses-{_ENG['post']} (trial.engagement): no engagement table", file=sys.stderr)


def get_engagement_outputs():
    """Per-participant engagement tables and the cohort table (trial.engagement)."""
    if not _ENG_UNITS:
        return []
    return [f"{OUT}/{ep}_desc-engagement_stat.{x}" for ep in sorted(_ENG_UNITS)
            for x in ("tsv", "json")] + [TRIAL_ENGAGEMENT]


def _eng_runs(which):
    def _f(wildcards):
        up = _ENG_UNITS[wildcards.engprefix][1 if which == "pre" else 2]
        return [f"{OUT}/work/{rp}_desc-denoised_timeseries.npz" for rp in PLAN.unit_runs[up]]

    return _f


def _eng_unit_file(which, suffix):
    def _f(wildcards):
        up = _ENG_UNITS[wildcards.engprefix][1 if which == "pre" else 2]
        return f"{OUT}/{up}{suffix}"

    return _f


rule trial_engagement:
    input:
        pre_runs=_eng_runs("pre"),
        post_runs=_eng_runs("post"),
        pre_target=_eng_unit_file("pre", f"_space-{SPACE}_desc-target_coords.json"),
        pre_map=_eng_unit_file("pre", f"_space-{SPACE}_desc-sgacc_stat-r_boldmap.nii.gz"),
        post_map=_eng_unit_file("post", f"_space-{SPACE}_desc-sgacc_stat-r_boldmap.nii.gz"),
        stamp=stamp_input("trial_engagement", "engprefix"),
    output:
        tsv=f"{OUT}/{{engprefix}}_desc-engagement_stat.tsv",
        sidecar=f"{OUT}/{{engprefix}}_desc-engagement_stat.json",
    params:
        output_root=OUT,
        cfg=rule_config("trial_engagement", config),
        participant=lambda wc: _ENG_UNITS[wc.engprefix][0],
        pre=lambda wc: PLAN.units[_ENG_UNITS[wc.engprefix][1]].session,
        post=lambda wc: PLAN.units[_ENG_UNITS[wc.engprefix][2]].session,
    wildcard_constraints:
        engprefix=_alternatives(_ENG_UNITS) or "(?!)",
    log:
        f"{OUT}/logs/trial_engagement/{{engprefix}}.log",
    threads: 1
    resources:
        mem_mb=mem_scaled(2000),
        runtime=10,
    script:
        "../../scripts/trial_engagement.py"


rule trial_engagement_cohort:
    input:
        tsvs=[f"{OUT}/{ep}_desc-engagement_stat.tsv" for ep in sorted(_ENG_UNITS)],
        key=TRIAL_KEY if _ENG_UNITS else [],
        stamp=STAMPS.path("trial_engagement_cohort", "cohort") if _ENG_UNITS else [],
    output:
        tsv=TRIAL_ENGAGEMENT,
        sidecar=TRIAL_ENGAGEMENT.replace(".tsv", ".json"),
    params:
        cfg=rule_config("trial_engagement_cohort", config),
        skipped=_ENG_SKIPPED,
    log:
        f"{OUT}/logs/trial_engagement_cohort.log",
    threads: 1
    resources:
        mem_mb=mem_scaled(500),
        runtime=5,
    script:
        "../../scripts/trial_engagement_cohort.py"
