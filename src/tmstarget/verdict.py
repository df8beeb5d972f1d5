"""A participant's verdict from that participant's own data.

Reliability of each method's target is judged against absolute thresholds in the
configuration (``reproducibility.max_split_half_mm``, ``reproducibility.min_split_half_map_r``,
``reproducibility.max_bootstrap_radius_mm``), never against the other participants in the
same output folder, so a verdict once written changes only when this participant's inputs or
the configuration change. Data-quality warnings (retained minutes, mean framewise
displacement, censored fraction) use ``denoise.warn_*`` thresholds.

Reference for the split-half threshold: two halves of one person's scan typically give
targets ~4.5 mm apart, different people's targets differ by ~13 mm; the default 6.5 mm lies
between the two. With long, optimised scans Cash RFH et al. 2021 (*Hum Brain Mapp*
42:4155-4172) report a median 2-2.7 mm between repeated scans and between-person variation up
to 6.85 times the within-person one.

Words used: ``reliable``, ``unreliable`` (with reasons), ``not assessed`` (reproducibility
off or not run).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

RELIABLE = "reliable"
UNRELIABLE = "unreliable"
NOT_ASSESSED = "not assessed"

#: Defaults (the schema's) when a key is absent, e.g. in unit tests.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "max_split_half_mm": 6.5,
    "min_split_half_map_r": 0.3,
    "max_bootstrap_radius_mm": 10.0,
}
DEFAULT_WARN: dict[str, float] = {
    "warn_retained_minutes": 5.0,
    "warn_fd_mean_mm": 0.25,
    "warn_censored_fraction": 0.2,
}


def thresholds(cfg: Mapping[str, Any]) -> dict[str, float]:
    """The reliability thresholds from a configuration (whole, or its reproducibility part)."""
    rc = cfg.get("reproducibility", cfg) or {}
    return {k: float(rc.get(k, v)) for k, v in DEFAULT_THRESHOLDS.items()}


def warn_thresholds(cfg: Mapping[str, Any]) -> dict[str, float]:
    """The data-quality warning thresholds (``denoise.warn_*``)."""
    dc = cfg.get("denoise", cfg) or {}
    return {k: float(dc.get(k, v)) for k, v in DEFAULT_WARN.items()}


def method_verdict(split_half_distance_mm: float | None, split_half_map_r: float | None,
                   bootstrap_radius95_mm: float | None,
                   limits: Mapping[str, float]) -> dict[str, Any]:
    """Verdict of one method's target from its own split-half and bootstrap numbers.

    A missing split-half distance (no target in one half) or bootstrap radius (no resample
    had a target) is a reason for ``unreliable``; a missing or non-finite map correlation
    (a method with no map of its own) is noted but not a reason.
    """
    reasons: list[str] = []
    notes: list[str] = []
    d, r, b = split_half_distance_mm, split_half_map_r, bootstrap_radius95_mm
    if d is None:
        reasons.append("no target in one half of the data (split-half distance undefined)")
    elif d > limits["max_split_half_mm"]:
        reasons.append(f"split-half distance {d:.1f} mm exceeds {limits['max_split_half_mm']:g} mm")
    if r is None or r != r:  # None or NaN
        notes.append("split-half map correlation not computed")
    elif r < limits["min_split_half_map_r"]:
        reasons.append(f"split-half map correlation r = {r:.2f} is below "
                       f"{limits['min_split_half_map_r']:g}")
    if b is None:
        reasons.append("no bootstrap resample had a target")
    elif b > limits["max_bootstrap_radius_mm"]:
        reasons.append(f"bootstrap 95% radius {b:.1f} mm exceeds "
                       f"{limits['max_bootstrap_radius_mm']:g} mm")
    return {"verdict": UNRELIABLE if reasons else RELIABLE, "reasons": reasons, "notes": notes,
            "split_half_distance_mm": d, "split_half_map_r": r, "bootstrap_radius95_mm": b}


def data_warnings(qc: Mapping[str, Any], limits: Mapping[str, float]) -> list[str]:
    """Data-quality warnings from a seed-map QC record (``…_desc-seedmap_qc.json``)."""
    out: list[str] = []
    if not qc:
        return out
    fd_lim, cens_lim = limits["warn_fd_mean_mm"], limits["warn_censored_fraction"]
    for q in qc.get("runs", []):
        name = Path(str((q.get("inputs") or [{}])[0].get("path", "run"))).name
        nv = max(int(q.get("n_volumes") or 0), 1)
        nc = int(q.get("n_censored") or 0)
        frac = nc / nv
        fdm = q.get("fd_mean")
        if (fdm is not None and fdm > fd_lim) or frac > cens_lim:
            fd_txt = "n/a" if fdm is None else f"{fdm:.3g}"
            out.append(f"High motion in {name}: mean FD {fd_txt} mm (flag above {fd_lim:g} mm), "
                       f"{nc} of {nv} volumes censored ({100 * frac:.0f} %; flag above "
                       f"{100 * cens_lim:.0f} %).")
    minutes = float(qc.get("retained_seconds") or 0) / 60.0
    lim = limits["warn_retained_minutes"]
    if minutes < lim:
        out.append(f"Few retained volumes: {qc.get('retained_volumes')} volumes "
                   f"({minutes:.1f} min) after scrubbing, less than {lim:g} min "
                   "(denoise.warn_retained_minutes); the map and target are noisy.")
    return out


def unit_verdict(repro: Mapping[str, Any] | None, qc: Mapping[str, Any],
                 cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Verdict of every method plus the data-quality warnings of one participant/session.

    Parameters
    ----------
    repro : mapping or None
        The reproducibility statistics (``split_half`` and ``bootstrap`` per method); None when
        reproducibility was not run (every method ``not assessed``).
    qc : mapping
        The seed-map QC record.
    cfg : mapping
        The configuration (``reproducibility`` and ``denoise`` sections).
    """
    limits = thresholds(cfg) if repro is not None else None
    wl = warn_thresholds(cfg)
    methods: dict[str, Any] = {}
    if repro is not None:
        for m, sh in repro["split_half"]["methods"].items():
            bs = repro["bootstrap"]["methods"].get(m, {})
            methods[m] = method_verdict(sh.get("distance_mm"), sh.get("map_r"),
                                        bs.get("radius95_mm"), limits)
    return {
        "description": "Per-participant verdict from this participant's own split-half and "
                       "bootstrap results against absolute thresholds (not a comparison with "
                       "other participants).",
        "assessed": repro is not None,
        "thresholds": limits, "warning_thresholds": wl,
        "methods": methods, "warnings": data_warnings(qc, wl),
    }


def method_word(verdict: Mapping[str, Any] | None, method: str) -> str:
    """``reliable`` / ``unreliable`` / ``not assessed`` for ``method``."""
    if not verdict:
        return NOT_ASSESSED
    v = (verdict.get("methods") or {}).get(method)
    return v["verdict"] if v else NOT_ASSESSED


def reliability_lines(verdict: Mapping[str, Any] | None,
                      methods: Sequence[str] | None = None) -> list[str]:
    """One warning sentence per unreliable method (the same text in JSON and report)."""
    out = []
    for m, v in ((verdict or {}).get("methods") or {}).items():
        if methods is not None and m not in methods:
            continue
        if v["verdict"] == UNRELIABLE:
            out.append(f"The {m} target is unreliable: {'; '.join(v['reasons'])}.")
    return out


def participant_warnings(verdict: Mapping[str, Any] | None, target_warnings: Sequence[Any] = (),
                         native_warnings: Sequence[Any] = ()) -> list[str]:
    """Every warning about one participant/session, in the order the report shows them.

    Data quality, the target step's own warnings, one line per unreliable method, then the
    native step's (prefixed ``Native space:``). The native JSON and the report use this list.
    """
    out = list((verdict or {}).get("warnings") or [])
    out += [str(w) for w in target_warnings]
    out += reliability_lines(verdict)
    out += [f"Native space: {w}" for w in native_warnings]
    return out
