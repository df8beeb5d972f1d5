"""Per-subject and cohort HTML reports (self-contained: images embedded, no network).

A TMS team reviews each target visually before treatment; an imaging core reviews a cohort at a
glance. :func:`subject_report_step` writes ``sub-X[_ses-Y]_report.html`` and its machine-readable
twin ``sub-X[_ses-Y]_report.json`` (every number shown in the HTML);
:func:`cohort_report_step` writes ``cohort_report.html`` at the output root.

Every figure is drawn in **neurological convention** (the subject's left on the left of the
image), labelled "L"/"R", and says so in its caption. HTML is rendered with jinja2 with
autoescaping on, so text taken from data (labels, paths) cannot inject markup. Reports contain
no external URL: images are base64 PNG ``data:`` URIs, CSS and the small table-sorting script
are inline.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np

from . import CONVENTION, MNI_SPACE, __version__
from .io import sha256sum, write_json, write_text
from .regions import REFERENCE_TARGETS_MM

#: Research-use statement printed at the top of every report (from SAFETY.md).
RESEARCH_USE = ("Research use only. tmstarget is research software, not a medical device; it has "
                "no regulatory clearance and must not be the sole basis of a clinical decision. "
                "It never controls a stimulator. Read SAFETY.md, including the checks a "
                "clinician must still make, before using a coordinate on a person.")
#: Orientation statement attached to every image.
ORIENTATION = ("Neurological convention: the subject's left is on the left of the image "
               "(labelled L), right on the right (R).")
#: A run with mean framewise displacement above this (mm) is flagged as high motion.
HIGH_MOTION_FD_MEAN_MM = 0.25
#: A run with more than this fraction of its volumes censored is flagged as high motion.
HIGH_CENSORED_FRACTION = 0.2
#: Fewer retained minutes than this (all runs together) are flagged.
MIN_RETAINED_MINUTES = 5.0
#: Colours of the target methods in every figure.
METHOD_COLOURS = {"classic": "#00c000", "cluster": "#ff00ff", "weighted": "#ffa500"}
_EXTRA_COLOURS = ("#00ffff", "#ffff00", "#8080ff")
#: Figure resolution (dots per inch): modest, to keep reports small and fast.
DPI = 72


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def _load_json(path: str | Path | None) -> dict | None:
    if not path or not Path(path).is_file():
        return None
    from .inputcheck import read_json_object

    return read_json_object(path, "JSON file")


def _colour(method: str, i: int = 0) -> str:
    return METHOD_COLOURS.get(method, _EXTRA_COLOURS[i % len(_EXTRA_COLOURS)])


def fmt(v: Any, nd: int = 2) -> str:
    """Format a number for display (``n/a`` for missing)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{nd}f}"


def unit_stem(participant_id: str, session_id: str | None) -> str:
    """``sub-X[_ses-Y]`` from BIDS ids."""
    return participant_id + (f"_{session_id}" if session_id else "")


def _matplotlib() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def fig_to_base64(fig: Any) -> str:
    """Encode a matplotlib figure as a base64 PNG (no metadata, so no URL inside) and close it."""
    plt = _matplotlib()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None},
                facecolor=fig.get_facecolor())
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


@functools.lru_cache(maxsize=1)
def template_image(space: str = MNI_SPACE) -> tuple[nb.Nifti1Image, str]:
    """Background MNI template for figures, from files on disk only (never downloaded).

    nilearn's bundled MNI ICBM152 2009 T1 template is used when it loads offline; otherwise the
    shipped MNI152NLin2009cAsym brain mask.
    """
    import nilearn

    bundled = (Path(nilearn.__file__).parent / "datasets" / "data"
               / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    try:
        full = nb.load(bundled)
        aff = np.array(full.affine, dtype=float)
        aff[:3, :3] *= 2.0  # every other voxel: a 2 mm display copy, no resampling cost
        img = nb.Nifti1Image(np.asarray(full.dataobj)[::2, ::2, ::2], aff)
        return img, ("nilearn's bundled MNI ICBM152 2009 T1 template (display only; coordinates "
                     f"are {space})")
    except (OSError, ValueError, nb.filebasedimages.ImageFileError):  # pragma: no cover
        p = Path(__file__).parent / "data" / "tpl-MNI152NLin2009cAsym_res-02_desc-brain_mask.nii.gz"
        return nb.load(p), f"{MNI_SPACE} brain mask (shipped with tmstarget)"


def header_check(path: str | Path) -> dict[str, Any]:
    """qform/sform codes of a NIfTI file and whether they agree (for the warnings box)."""
    out: dict[str, Any] = {"path": str(path)}
    try:
        hdr = nb.load(path).header
        q, qc = hdr.get_qform(coded=True)
        s, sc = hdr.get_sform(coded=True)
        out["qform_code"] = int(qc)
        out["sform_code"] = int(sc)
        if q is not None and s is not None:
            out["max_difference_mm"] = float(np.abs(np.asarray(q) - np.asarray(s)).max())
            out["agree"] = bool(out["max_difference_mm"] <= 1e-3)
        else:
            out["agree"] = None
        concerns = []
        if qc == 0 and sc == 0:
            concerns.append("neither qform nor sform is set (orientation unknown)")
        if out.get("agree") is False:
            concerns.append(f"qform and sform disagree by up to {out['max_difference_mm']:.3g} mm")
        out["concerns"] = concerns
    except (OSError, ValueError, nb.filebasedimages.ImageFileError) as exc:  # say so
        out["concerns"] = [f"header cannot be read ({exc})"]
    return out


def input_is_simulated(fmriprep_dir: str | Path | None) -> tuple[bool, str]:
    """Whether the input dataset_description says the data are simulated, and its name."""
    if not fmriprep_dir:
        return False, ""
    d = _load_json(Path(fmriprep_dir) / "dataset_description.json") or {}
    text = json.dumps(d).lower()
    return ("simulated" in text or "synthetic" in text), str(d.get("Name", ""))


def data_origin(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Real or simulated input, and how that is known.

    The sample datasets shipped with tmstarget say in their ``dataset_description.json``
    (``Name``/``GeneratedBy``) that they are simulated; the built-in preprocessing repeats the
    raw dataset's name, and for raw input the raw dataset (``bids_dir``) is read too.
    **Anything that does not say it is simulated is treated as REAL DATA.**

    Returns
    -------
    dict
        ``simulated`` (bool), ``label`` (``SIMULATED`` or ``REAL DATA``), ``dataset_name``
        and ``how_known``.
    """
    simulated, name = input_is_simulated(cfg.get("fmriprep_dir"))
    if cfg.get("bids_dir"):
        raw_sim, raw_name = input_is_simulated(cfg.get("bids_dir"))
        simulated = simulated or raw_sim
        name = raw_name or name
    how = ("the input's dataset_description.json says its data are simulated" if simulated
           else "the input's dataset_description.json does not say its data are simulated, so "
                "they are treated as real scanner data")
    return {"simulated": bool(simulated), "label": "SIMULATED" if simulated else "REAL DATA",
            "dataset_name": name, "how_known": how}


def real_data_caveat(task: str | None, retained_minutes: float, n_runs: int) -> str:
    """The REAL DATA banner's text: what data the target rests on, and what that is worth."""
    task = str(task or "rest")
    is_rest = task.lower() in ("rest", "resting", "restingstate")
    kind = "resting-state" if is_rest else f"TASK fMRI ('{task}', not rest)"
    text = (f"REAL DATA: computed from real scanner data: {n_runs} {kind} run(s), "
            f"{retained_minutes:.1f} min retained after censoring.")
    if not is_rest or retained_minutes < 2 * MIN_RETAINED_MINUTES:
        text += (" That is far too little data for a clinical target: an individual sgACC "
                 "anticorrelation map from a few minutes"
                 + ("" if is_rest else " of task data") + " is dominated by noise; check "
                 "the reproducibility section (split-half distance, bootstrap radius) and "
                 "acquire more resting-state data before using a target on a person.")
    else:
        text += " Check the QC images and the reproducibility section before using a target."
    return text


def preprocessing_section(fmriprep_dir: str | Path | None, participant_id: str,
                          session_id: str | None) -> dict[str, Any]:
    """Which preprocessing produced the inputs, and the built-in path's QC for this unit.

    Parameters
    ----------
    fmriprep_dir : path or None
        The main workflow's input derivatives folder.
    participant_id, session_id : str
        ``sub-X`` and ``ses-Y`` (or None).

    Returns
    -------
    dict
        ``method`` (``builtin``, ``fmriprep`` or ``other``), ``generated_by``, ``limits``,
        ``runs`` (built-in QC per run) and ``figures`` (name -> base64 PNG, built-in only).
    """
    from .builtin import GENERATOR_NAME, LIMITS

    out: dict[str, Any] = {"method": "other", "generated_by": [], "limits": None, "runs": [],
                           "figures": {}}
    if not fmriprep_dir:
        return out
    root = Path(fmriprep_dir)
    d = _load_json(root / "dataset_description.json") or {}
    gen = d.get("GeneratedBy") if isinstance(d.get("GeneratedBy"), list) else []
    names = [f"{g.get('Name', '')} {g.get('Version', '')}".strip() for g in gen
             if isinstance(g, dict)]
    out["generated_by"] = names
    if any(n.startswith(GENERATOR_NAME) for n in names):
        out["method"], out["limits"] = "builtin", LIMITS
    elif any("fmriprep" in n.lower() for n in names):
        out["method"] = "fmriprep"
        return out
    else:
        return out
    sub = root / participant_id
    norm = sub / "figures" / f"{participant_id}_space-{MNI_SPACE}_desc-normalization_T1w.png"
    if norm.is_file():
        out["figures"]["normalization"] = base64.b64encode(norm.read_bytes()).decode("ascii")
    bmask = sub / "figures" / f"{participant_id}_desc-brain_mask_T1w.png"
    if bmask.is_file():
        out["figures"]["brainmask"] = base64.b64encode(bmask.read_bytes()).decode("ascii")
    func = (sub / session_id if session_id else sub) / "func"
    for i, qc_file in enumerate(sorted(func.glob("*_desc-builtin_qc.json"))):
        stem = qc_file.name[: -len("_desc-builtin_qc.json")]
        qc = _load_json(qc_file) or {}
        out["runs"].append({"run": stem, **{k: qc.get(k) for k in (
            "n_volumes", "n_non_steady_state", "mean_fd_mm", "max_fd_mm",
            "max_translation_mm", "max_rotation_deg", "template_brain_coverage")}})
        for kind in ("coreg", "motion"):
            png = sub / "figures" / f"{stem}_desc-{kind}_bold.png"
            if png.is_file():
                out["figures"][f"{kind}_{i}"] = base64.b64encode(png.read_bytes()).decode("ascii")
    return out


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------

def map_figure(rmap: nb.Nifti1Image, cut: Sequence[float],
               markers: Mapping[str, tuple[Sequence[float], str]] | None = None,
               region: nb.Nifti1Image | None = None, bg: nb.Nifti1Image | None = None,
               zoom_mm: float | None = None, title: str = "", vmax: float | None = None) -> Any:
    """Orthogonal slices of a map through ``cut`` (neurological, L/R labelled).

    Parameters
    ----------
    rmap : Nifti1Image
        The map shown in colour (seed correlation r).
    cut : sequence of 3 float
        World (RAS+ mm) coordinate the slices go through.
    markers : mapping, optional
        Label -> (xyz mm, colour) drawn as points.
    region : Nifti1Image, optional
        Mask whose outline is drawn (search region).
    bg : Nifti1Image, optional
        Background image (defaults to the MNI template).
    zoom_mm : float, optional
        Half-width of a zoom window around ``cut`` (e.g. the DLPFC).
    title : str
        Figure title.
    vmax : float, optional
        Colour scale maximum (symmetric).

    Returns
    -------
    nilearn display
        Its ``frame_axes.figure`` is the matplotlib figure.
    """
    _matplotlib()
    from nilearn import plotting

    if bg is None:
        bg = template_image()[0]
    if vmax is None:
        data = np.asarray(rmap.dataobj, dtype=float)
        vmax = float(np.nanmax(np.abs(data))) or 1.0
    display = plotting.plot_stat_map(rmap, bg_img=bg, cut_coords=list(map(float, cut)),
                                     display_mode="ortho", threshold=0.25 * vmax, vmax=vmax,
                                     cmap="cold_hot", colorbar=True, annotate=True,
                                     draw_cross=False, title=title or None, radiological=False,
                                     black_bg=True, dim=-0.3)
    if region is not None and np.any(np.asarray(region.dataobj)):
        display.add_contours(region, levels=[0.5], colors="white", linewidths=1.0)
    for label, (xyz, colour) in (markers or {}).items():
        display.add_markers([list(map(float, xyz))], marker_color=colour, marker_size=60,
                            edgecolors="black", linewidths=0.8, label=label)
    if zoom_mm:
        c = [float(v) for v in cut]
        lims = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}  # panel -> world axes on (h, v)
        for k, (h, v) in lims.items():
            if k in display.axes:
                ax = display.axes[k].ax
                ax.set_xlim(c[h] - zoom_mm, c[h] + zoom_mm)
                ax.set_ylim(c[v] - zoom_mm, c[v] + zoom_mm)
    return display


def glass_figure(rmap: nb.Nifti1Image | None,
                 markers: Mapping[str, tuple[Sequence[float], str]],
                 title: str = "", size: float = 40) -> Any:
    """Glass brain (neurological, L/R) with the map (if any) and markers."""
    _matplotlib()
    from nilearn import plotting

    if rmap is not None:
        data = np.asarray(rmap.dataobj, dtype=float)
        vmax = float(np.nanmax(np.abs(data))) or 1.0
        display = plotting.plot_glass_brain(rmap, display_mode="ortho", plot_abs=False,
                                            threshold=0.5 * vmax, vmax=vmax, cmap="cold_hot",
                                            colorbar=True, annotate=True, title=title or None,
                                            radiological=False)
    else:
        display = plotting.plot_glass_brain(None, display_mode="ortho", annotate=True,
                                            title=title or None, radiological=False)
    for label, (xyz, colour) in markers.items():
        display.add_markers([list(map(float, xyz))], marker_color=colour, marker_size=size,
                            edgecolors="black", linewidths=0.6, label=label)
    return display


def fd_figure(runs: Sequence[Mapping[str, Any]]) -> Any:
    """Framewise displacement per run, threshold dashed, excluded volumes marked in red."""
    plt = _matplotlib()
    n = max(1, len(runs))
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.6 * n + 0.4), squeeze=False)
    for ax, q in zip(axes[:, 0], runs, strict=False):
        fd = np.asarray(q.get("fd") or [], float)
        ax.plot(np.arange(fd.size), fd, color="#1f4e79", lw=0.9, label="FD")
        thr = q.get("fd_threshold")
        if thr is not None:
            ax.axhline(float(thr), color="grey", ls="--", lw=0.8, label=f"threshold {thr} mm")
        cens = [int(i) for i in q.get("censored") or [] if 0 <= int(i) < fd.size]
        if cens:
            ax.scatter(cens, fd[cens], color="red", s=9, zorder=3, label="excluded volume")
        ax.set_ylabel("FD (mm)")
        ax.set_title(Path(str(q.get("bold", ""))).name, fontsize=8, loc="left")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("volume")
    fig.tight_layout()
    return fig


def timeseries_figure(ts: np.ndarray, tr: float | None) -> Any:
    """The seed's mean (denoised, concatenated) time series."""
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(8, 1.8))
    t = np.arange(ts.size) * (tr or 1.0)
    ax.plot(t, ts, color="#7f3f00", lw=0.8)
    ax.set_xlabel("time (s, retained volumes concatenated)" if tr else "retained volume")
    ax.set_ylabel("seed signal (z)")
    fig.tight_layout()
    return fig


def cloud_figure(cloud: Mapping[str, np.ndarray], full: Mapping[str, Sequence[float]],
                 halves: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> Any:
    """Bootstrap targets, split-half targets and full-data targets on three planes (mm).

    Coronal (x-z) and axial (x-y) panels have x increasing to the right: neurological.
    """
    plt = _matplotlib()
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    planes = [("sagittal", 1, 2, "y (mm, anterior →)", "z (mm)"),
              ("coronal", 0, 2, "x (mm)", "z (mm)"),
              ("axial", 0, 1, "x (mm)", "y (mm)")]
    for i, (ax, (name, h, v, xl, yl)) in enumerate(zip(axes, planes, strict=True)):
        for j, (m, pts) in enumerate(cloud.items()):
            pts = np.asarray(pts, float).reshape(-1, 3)
            ax.scatter(pts[:, h], pts[:, v], s=6, alpha=0.3, color=_colour(m, j),
                       label=f"{m} bootstrap" if i == 0 else None)
        for j, (m, (a, b)) in enumerate(halves.items()):
            ax.scatter([a[h], b[h]], [a[v], b[v]], marker="^", s=40, color=_colour(m, j),
                       edgecolors="black", label=f"{m} halves" if i == 0 else None)
        for j, (m, xyz) in enumerate(full.items()):
            ax.scatter([xyz[h]], [xyz[v]], marker="*", s=120, color=_colour(m, j),
                       edgecolors="black", label=f"{m} target" if i == 0 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xl, fontsize=8)
        ax.set_ylabel(yl, fontsize=8)
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=7)
        if h == 0:
            ax.text(0.02, 0.95, "L", transform=ax.transAxes, fontweight="bold", va="top")
            ax.text(0.98, 0.95, "R", transform=ax.transAxes, fontweight="bold", va="top",
                    ha="right")
    fig.legend(fontsize=7, loc="lower center", ncol=6)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def distance_figure(within: Mapping[str, Sequence[float]],
                    between: Mapping[str, Sequence[float]]) -> Any:
    """Within-subject split-half distances vs between-subject target distances per method."""
    plt = _matplotlib()
    methods = sorted(set(within) | set(between))
    fig, ax = plt.subplots(figsize=(7, 3))
    rng = np.random.default_rng(0)
    for i, m in enumerate(methods):
        for off, vals, col, lab in ((-0.15, within.get(m, []), "#1f77b4", "within (split-half)"),
                                    (0.15, between.get(m, []), "#d62728", "between subjects")):
            vals = np.asarray(vals, float)
            if vals.size:
                ax.scatter(i + off + rng.uniform(-0.05, 0.05, vals.size), vals, s=14, color=col,
                           alpha=0.8, label=lab if i == 0 else None)
                ax.hlines(np.median(vals), i + off - 0.1, i + off + 0.1, color="black")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("distance (mm)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _project(xyz: Sequence[float], panel: str) -> tuple[float, float]:
    h, v = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[panel]
    return float(xyz[h]), float(xyz[v])


def native_figure(t1w: nb.Nifti1Image, target: Sequence[float], entry: Sequence[float] | None,
                  normal: Sequence[float] | None, handle: Sequence[float] | None) -> Any:
    """Target and scalp entry on the subject's T1w, three planes, coil normal/handle drawn."""
    _matplotlib()
    from nilearn import plotting

    zooms = np.sqrt((np.asarray(t1w.affine)[:3, :3] ** 2).sum(axis=0))
    step = 2 if float(zooms.max()) < 1.5 else 1
    if step > 1:  # a ~2 mm display copy: resampling an oblique 1 mm T1w is slow
        aff = np.array(t1w.affine, dtype=float)
        aff[:3, :3] *= step
        t1w = nb.Nifti1Image(np.asarray(t1w.dataobj)[::step, ::step, ::step], aff)
    display = plotting.plot_anat(t1w, cut_coords=list(map(float, target)), display_mode="ortho",
                                 annotate=True, draw_cross=False, radiological=False,
                                 dim=-0.5, black_bg=True, colorbar=False)
    display.add_markers([list(map(float, target))], marker_color="#00ff00", marker_size=60,
                        edgecolors="black")
    if entry is not None:
        display.add_markers([list(map(float, entry))], marker_color="#ff3030", marker_size=60,
                            edgecolors="black")
    for k in ("x", "y", "z"):
        if k not in display.axes:
            continue
        ax = display.axes[k].ax
        if entry is not None:
            e = np.asarray(entry, float)
            ax.plot(*zip(_project(np.asarray(target, float), k), _project(e, k), strict=True),
                    color="#ff3030", lw=1)
            for vec, col in ((normal, "#00ffff"), (handle, "#ffff00")):
                if vec is not None and len(vec) == 3:
                    tip = e + 30.0 * np.asarray(vec, float) / (np.linalg.norm(vec) or 1.0)
                    ax.annotate("", xy=_project(tip, k), xytext=_project(e, k),
                                arrowprops={"arrowstyle": "->", "color": col, "lw": 1.5})
    return display


# --------------------------------------------------------------------------------------------
# the per-subject report
# --------------------------------------------------------------------------------------------

def _warnings(verdict: Mapping[str, Any] | None, tj: Mapping[str, Any],
              headers: Sequence[Mapping[str, Any]],
              native_warnings: Sequence[Any] = ()) -> list[str]:
    """The report's warnings: :func:`tmstarget.verdict.participant_warnings` (the same list,
    same text, as the native JSON's ``participant_warnings``) and the header concerns."""
    from .verdict import participant_warnings

    out = participant_warnings(verdict, tj.get("warnings", []), native_warnings)
    for h in headers:
        for c in h.get("concerns", []):
            out.append(f"qform/sform concern in {Path(h['path']).name}: {c}.")
    return out


def _default_mode(rimg: nb.Nifti1Image, targets: Mapping[str, Mapping[str, Any]],
                  refs: Mapping[str, Mapping[str, Any]],
                  space: str = MNI_SPACE) -> dict[str, Any] | None:
    """:func:`tmstarget.physiology.default_mode_correlations` for the report (None on error).

    Without computed reference sites the published sites are used, in ``space`` (the data's).
    """
    from .physiology import default_mode_correlations

    try:
        if refs:
            sites = {n: (s["x"], s["y"], s["z"]) for n, s in refs.items()}
        elif space == MNI_SPACE:
            sites = {n: tuple(v) for n, v in REFERENCE_TARGETS_MM.items()}
        else:
            from .regions import PUBLISHED_SITES
            from .spaces import convert_points

            sites = {n: tuple(round(float(v), 2) for v in convert_points([c.xyz], c.space,
                                                                          space)[0])
                     for n, c in PUBLISHED_SITES.items()}
        return default_mode_correlations(
            rimg, {m: (t["x"], t["y"], t["z"]) for m, t in targets.items()}, sites,
            space=space)
    except Exception as exc:  # noqa: BLE001 - a descriptive section must not kill the report
        return {"error": f"not computed: {exc}"}


def _summary_card(targets: Mapping[str, Mapping[str, Any]], native_sec: Mapping[str, Any],
                  native: Mapping[str, Any] | None, verdict: Mapping[str, Any],
                  warnings: Sequence[str], root: Path, space: str) -> dict[str, Any]:
    """The answer first: the coordinate to load, its space and T1w, method, verdict, warnings,
    where the exports are."""
    from .verdict import method_word

    method = native_sec.get("primary_method") if native_sec.get("available") else None
    method = method if method in targets else next(iter(targets))
    v = (verdict.get("methods") or {}).get(method) or {}
    word = method_word(verdict, method)
    t = targets[method]
    card: dict[str, Any] = {
        "method": method, "verdict": word, "reasons": list(v.get("reasons") or []),
        "verdict_words": (
            f"The {method} target is {word}"
            + (f": {'; '.join(v['reasons'])}." if v.get("reasons") else
               (" by this participant's own split-half and bootstrap results." if
                word == "reliable" else " (reproducibility was not run).")))
        if word else None,
        "mni_mm": [t["x"], t["y"], t["z"]], "mni_space": space,
        "n_warnings": len(warnings), "warnings": list(warnings),
        "coordinate_mm": None, "coil_entry_mm": None, "space": None, "t1w": None,
        "exports_folder": None,
        "marker_file": None,
        "laterality": None,
    }
    if native_sec.get("available"):
        row = {r["method"]: r for r in native_sec.get("methods", [])}.get(method) or {}
        card["coordinate_mm"] = row.get("t1w_mm")
        coil = native_sec.get("coil") or {}
        card["coil_entry_mm"] = (coil.get("entry_mm") if coil.get("method") in (None, method)
                                 else None) or row.get("entry_mm")
        card["space"] = "T1w (NIfTI world RAS+ mm of the T1w below)"
        card["t1w"] = native_sec.get("t1w")
        files = [e["file"] for e in native_sec.get("exports", []) if e.get("file")]
        if files:
            card["exports_folder"] = os.path.dirname(files[0]) or "."
        card["marker_file"] = (native or {}).get("marker_file")
        lat = (native or {}).get("laterality_check")
        if isinstance(lat, Mapping):
            card["laterality"] = {k: lat.get(k) for k in (
                "passed", "hemisphere_mni", "target_x_minus_brain_centre_x_mm",
                "brain_centre_t1w_mm")}
    return card


def _native_section(native: Mapping[str, Any] | None, native_path: str | Path | None,
                    output_root: Path) -> dict[str, Any]:
    """The native-space section, tolerant of missing keys."""
    if native is None:
        return {"available": False,
                "message": "native-space step not run (no T1w-space target file"
                           + (f" at {native_path}" if native_path else "") + ")."}
    sec: dict[str, Any] = {"available": True, "file": str(native_path) if native_path else None}
    for k in ("participant_id", "session_id", "space", "convention", "depth_advice",
              "scalp_to_cortex_mm", "warnings", "research_use_only"):
        if k in native:
            sec[k] = native[k]
    t1 = native.get("t1w") or native.get("T1w") or native.get("reference_image") or {}
    if isinstance(t1, str):
        t1 = {"path": t1}
    sec["t1w"] = {"path": t1.get("path"), "sha256": t1.get("sha256")} if t1 else None
    methods = native.get("targets") or {}
    rows = []
    if isinstance(methods, Mapping):
        for m, d in methods.items():
            if not isinstance(d, Mapping):
                continue
            rows.append({
                "method": m,
                "mni_mm": _xyz(d.get("mni_mm") or d.get("mni")),
                "t1w_mm": _xyz(d.get("t1w_mm") or d.get("t1w")),
                "entry_mm": _xyz(d.get("entry_along_normal_mm") or d.get("entry_mm")
                                 or d.get("entry_nearest_mm")),
                "normal": _xyz(d.get("normal_out") or d.get("normal")),
                "scalp_to_target_mm": d.get("scalp_to_target_mm"),
                "scalp_to_cortex_mm": d.get("scalp_to_cortex_mm"),
            })
    sec["methods"] = rows
    coil = native.get("coil")
    if isinstance(coil, Mapping):
        sec["coil"] = {"method": coil.get("method"), "entry_mm": _xyz(coil.get("entry_mm")),
                       "normal": _xyz(coil.get("normal_out") or coil.get("normal")),
                       "handle": _xyz(coil.get("handle")),
                       "handle_convention": coil.get("handle_convention")}
    sec["primary_method"] = native.get("primary_method") or (sec.get("coil") or {}).get("method")
    exports = native.get("exports") or []
    sec["exports"] = [{k: e.get(k) for k in ("file", "format", "space", "how_to_load")}
                      for e in exports if isinstance(e, Mapping)]
    sr = native.get("scalp_rules")
    if isinstance(sr, Mapping):
        sec["scalp_rules"] = scalp_rules_summary(sr)
    return sec


def scalp_rules_summary(sr: Mapping[str, Any]) -> dict[str, Any]:
    """The report's view of the native JSON's ``scalp_rules`` (tolerant of missing keys)."""
    rules = []
    for m, r in (sr.get("rules") or {}).items():
        if not isinstance(r, Mapping):
            continue
        rules.append({"method": m, "label": r.get("label") or m, "status": r.get("status"),
                      **{k: r.get(k) for k in (
                          "scalp_t1w_mm", "cortical_t1w_mm", "cortical_mni_mm",
                          "scalp_to_cortex_mm", "r", "distance_to_connectivity_target_mm",
                          "in_left_dlpfc_search_region")}})
    figs = ((sr.get("files") or {}).get("figures") or {})
    return {"measurements": sr.get("measurements") or {}, "rules": rules,
            "landmarks": sr.get("landmarks") or {}, "warnings": list(sr.get("warnings") or []),
            "landmarks_source": sr.get("landmarks_source"),
            "figures": {k: v for k, v in figs.items() if isinstance(v, Mapping)}}


def png_file_base64(path: str | Path) -> str:
    """A PNG file written by another step, base64-encoded for embedding, with its text chunks
    (tEXt/zTXt/iTXt: software names, URLs) removed so the report carries no URL."""
    import struct

    data = Path(path).read_bytes()
    sig = b"\x89PNG\r\n\x1a\n"
    if not data.startswith(sig):
        raise ValueError(f"{path} is not a PNG file")
    out, i = [sig], len(sig)
    while i + 8 <= len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        kind = data[i + 4:i + 8]
        chunk = data[i:i + 12 + n]
        if kind not in (b"tEXt", b"zTXt", b"iTXt"):
            out.append(chunk)
        i += 12 + n
        if kind == b"IEND":
            break
    return base64.b64encode(b"".join(out)).decode("ascii")


def _xyz(v: Any) -> list[float] | None:
    """Coordinates from a list/tuple or a {x,y,z} mapping (None if absent)."""
    if v is None:
        return None
    if isinstance(v, Mapping):
        if all(v.get(k) is not None for k in ("x", "y", "z")):
            return [float(v["x"]), float(v["y"]), float(v["z"])]
        return None
    try:
        a = [float(x) for x in v]
    except (TypeError, ValueError):
        return None
    return a if len(a) == 3 else None


def _env() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tmstarget", "templates"),
        autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["basename"] = lambda p: Path(str(p)).name
    return env


def subject_report_step(target_json: str | Path, rmap_path: str | Path,
                        region_path: str | Path, qc_path: str | Path, seed_tsv: str | Path,
                        cfg: Mapping[str, Any], output_root: str | Path, out_html: str | Path,
                        out_json: str | Path, repro_json: str | Path | None = None,
                        cloud_tsv: str | Path | None = None,
                        targets_tsv: str | Path | None = None,
                        native_json: str | Path | None = None,
                        native_note: str | None = None) -> dict[str, Any]:
    """Write one participant/session's HTML report and its JSON twin.

    Parameters
    ----------
    target_json, rmap_path, region_path, qc_path, seed_tsv : path
        The unit's target JSON, seed-correlation map, search-region mask, seed-map QC JSON and
        seed time series.
    cfg : mapping
        The workflow configuration (printed in the report).
    output_root : path
        The output folder (paths are shown relative to it).
    out_html, out_json : path
        Where to write the report and its machine-readable twin.
    repro_json, cloud_tsv : path, optional
        Reproducibility statistics and bootstrap cloud (section skipped when absent).
    targets_tsv : path, optional
        Ignored (kept for callers): the report reads only this participant's files, so it
        does not change when another participant is added to the output folder. The verdict
        comes from ``repro_json`` (:mod:`tmstarget.verdict`).
    native_json : path, optional
        Native (T1w) space target JSON; the section says "not run" when the file is absent.
    native_note : str, optional
        Why the native step did not run for this unit (shown instead of the section).

    Returns
    -------
    dict
        The report data (as written to ``out_json``).
    """
    import pandas as pd
    import yaml

    root = Path(output_root)
    tj = json.loads(Path(target_json).read_text(encoding="utf-8"))
    qc = json.loads(Path(qc_path).read_text(encoding="utf-8"))
    repro = _load_json(repro_json)
    native = _load_json(native_json)
    pid, sid = tj["participant_id"], tj.get("session_id")
    from .verdict import unit_verdict

    verdict = (repro.get("verdict") if repro is not None else None) or unit_verdict(
        repro, qc, cfg)
    rel_by_method = {m: {"reliability": v["verdict"],
                         "reliability_reason": "; ".join(v["reasons"])}
                     for m, v in verdict["methods"].items()}
    origin = data_origin(cfg)
    simulated, input_name = origin["simulated"], origin["dataset_name"]
    preproc = preprocessing_section(cfg.get("fmriprep_dir"), pid, sid)

    rimg = nb.load(rmap_path)
    region = nb.load(region_path)
    headers = [header_check(rmap_path)]
    native_sec = _native_section(native, native_json, root)
    if native is None and native_note:
        native_sec["message"] = native_note
    t1_path = (native_sec.get("t1w") or {}).get("path") if native_sec["available"] else None
    if t1_path and not Path(t1_path).is_absolute():
        t1_path = str(root / t1_path) if (root / t1_path).is_file() else t1_path
    if t1_path and Path(t1_path).is_file():
        headers.append(header_check(t1_path))

    targets = {m: {k: t.get(k) for k in ("x", "y", "z", "r", "n_voxels", "snapped",
                                         "snap_distance_mm", "distance_to_region_edge_mm",
                                         "description")}
               for m, t in tj["targets"].items()}
    for m, t in targets.items():
        t["reliability"] = rel_by_method.get(m, {}).get("reliability")
        t["reliability_reason"] = rel_by_method.get(m, {}).get("reliability_reason")
    markers = {m: ((t["x"], t["y"], t["z"]), _colour(m, i))
               for i, (m, t) in enumerate(targets.items())}
    first = next(iter(targets.values()))
    cut = (first["x"], first["y"], first["z"])

    # data quality
    runs = []
    for q in qc.get("runs", []):
        runs.append({"bold": q.get("inputs", [{}])[0].get("path"),
                     **{k: q.get(k) for k in ("n_volumes", "n_non_steady_state", "n_censored",
                                              "n_retained", "retained_seconds", "fd_mean",
                                              "fd_max", "fd_threshold", "confound_columns",
                                              "task_regression")}})
    dq = {"retained_volumes": qc.get("retained_volumes"),
          "retained_minutes": float(qc.get("retained_seconds") or 0) / 60.0,
          "repetition_time": qc.get("repetition_time"),
          "strategy": qc.get("strategy", {}), "runs": runs}

    # seed
    ts = pd.read_csv(seed_tsv, sep="\t")["seed"].to_numpy(float)
    seed = dict(qc.get("seed") or tj.get("seed") or {})
    seed_cfg = seed.get("config") or {}
    seed_centre = (_xyz(seed.get("center_mm") or seed_cfg.get("center_mm"))
                   if seed_cfg.get("kind") == "sphere" else None)

    # reproducibility
    rep: dict[str, Any] | None = None
    cloud_pts: dict[str, np.ndarray] = {}
    if repro is not None:
        rep = {"split": repro["split_half"].get("split"),
               "volumes": repro["split_half"].get("volumes"),
               "bootstrap_resamples": repro["bootstrap"].get("n_resamples"),
               "bootstrap_block_seconds": repro["bootstrap"].get("block_seconds"),
               "methods": {}}
        for m, sh in repro["split_half"]["methods"].items():
            bs = repro["bootstrap"]["methods"].get(m, {})
            rel = rel_by_method.get(m, {})
            rep["methods"][m] = {
                "half_a": _xyz(sh.get("half_a")), "half_b": _xyz(sh.get("half_b")),
                "split_half_distance_mm": sh.get("distance_mm"),
                "split_half_map_r": sh.get("map_r"),
                "bootstrap_radius95_mm": bs.get("radius95_mm"),
                "bootstrap_fraction_within_5mm": bs.get("fraction_within_5mm"),
                "reliability": rel.get("reliability"),
                "reliability_reason": rel.get("reliability_reason"),
            }
        if cloud_tsv and Path(cloud_tsv).is_file():
            cdf = pd.read_csv(cloud_tsv, sep="\t")
            cloud_pts = {m: g[["x", "y", "z"]].to_numpy(float) for m, g in cdf.groupby("method")}
        refs = {name: {"x": s["x"], "y": s["y"], "z": s["z"], "r": s.get("r"),
                       "distance_mm": s.get("distance_mm", {})}
                for name, s in (repro.get("reference_sites") or {}).items()}
    else:
        refs = {}

    # figures
    tpl_img, tpl_desc = template_image(cfg.get("space") or MNI_SPACE)
    figs: dict[str, str] = {}
    figs["fd"] = fig_to_base64(fd_figure([{**q, "bold": q.get("inputs", [{}])[0].get("path")}
                                          for q in qc.get("runs", [])]))
    figs["seed_ts"] = fig_to_base64(timeseries_figure(ts, qc.get("repetition_time")))
    if seed_centre is not None:
        from nilearn import plotting

        d = plotting.plot_anat(tpl_img, cut_coords=seed_centre, display_mode="ortho",
                               annotate=True, draw_cross=False, radiological=False, dim=-0.3,
                               title="seed", colorbar=False)
        d.add_markers([seed_centre], marker_color="#ffa500",
                      marker_size=float(seed_cfg.get("radius_mm", 10)) ** 2 * 2,
                      edgecolors="black", alpha=0.6)
        figs["seed_loc"] = fig_to_base64(d.frame_axes.figure)
    ref_markers = {f"ref {n}": ((s["x"], s["y"], s["z"]), "#a0a0a0") for n, s in refs.items()}
    figs["map"] = fig_to_base64(map_figure(rimg, cut, {**markers, **ref_markers}, region,
                                           tpl_img).frame_axes.figure)
    figs["zoom"] = fig_to_base64(map_figure(rimg, cut, {**markers, **ref_markers}, region,
                                            tpl_img, zoom_mm=30).frame_axes.figure)
    figs["glass"] = fig_to_base64(glass_figure(rimg, {**markers, **ref_markers}).frame_axes.figure)
    if rep is not None:
        halves = {m: (v["half_a"], v["half_b"]) for m, v in rep["methods"].items()
                  if v["half_a"] and v["half_b"]}
        full = {m: (t["x"], t["y"], t["z"]) for m, t in targets.items()}
        figs["cloud"] = fig_to_base64(cloud_figure(cloud_pts, full, halves))
    if native_sec["available"] and t1_path and Path(t1_path).is_file():
        rows = {r["method"]: r for r in native_sec["methods"]}
        coil = native_sec.get("coil") or {}
        pm = native_sec.get("primary_method")
        row = rows.get(pm) or (native_sec["methods"][0] if native_sec["methods"] else {})
        tgt = row.get("t1w_mm")
        if tgt is not None:
            same = coil.get("method") in (None, row.get("method"))
            try:
                figs["native"] = fig_to_base64(native_figure(
                    nb.load(t1_path), tgt,
                    (coil.get("entry_mm") if same else None) or row.get("entry_mm"),
                    (coil.get("normal") if same else None) or row.get("normal"),
                    coil.get("handle") if same else None).frame_axes.figure)
                native_sec["figure_method"] = row.get("method")
            except Exception as exc:  # noqa: BLE001 - a broken T1w must not kill the report
                native_sec["figure_error"] = f"T1w figure not drawn: {exc}"

    for key, fig in ((native_sec.get("scalp_rules") or {}).get("figures") or {}).items():
        f = fig.get("file")
        if f and (root / f).is_file() and (root / f).stat().st_size > 100:
            figs[f"native_{key}"] = png_file_base64(root / f)
    # the native JSON's "warnings" is this same participant list (tmstarget.verdict), not
    # warnings of its own: not added again
    warnings = _warnings(verdict, tj, headers)
    summary_card = _summary_card(targets, native_sec, native, verdict, warnings, root,
                                 cfg.get("space") or MNI_SPACE)
    rel = lambda p: os.path.relpath(str(p), str(root)) if p else None
    data: dict[str, Any] = {
        "participant_id": pid, "session_id": sid,
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "software_version": __version__, "software": tj.get("software", {}),
        "research_use": RESEARCH_USE, "orientation": ORIENTATION,
        "simulated": simulated, "input_dataset_name": input_name,
        "space": cfg.get("space") or MNI_SPACE, "convention": CONVENTION,
        "warnings": warnings,
        "verdict": verdict,
        "summary": summary_card,
        "inputs": list(tj.get("inputs", [])),
        "reference_image": {"path": rel(root / tj["reference_image"]["path"]),
                            "sha256": tj["reference_image"]["sha256"]},
        "target_json": {"path": rel(target_json), "sha256": sha256sum(target_json)},
        "config": json.loads(json.dumps(dict(cfg))),
        "data_quality": dq,
        "seed": {"description": seed.get("description"), "n_voxels": seed.get("n_voxels"),
                 "centre_mm": seed_centre, "timeseries_volumes": int(ts.size)},
        "template": tpl_desc,
        "search_region": {k: (tj.get("search_region") or {}).get(k)
                          for k in ("description", "n_voxels", "mask")},
        "targets": targets,
        "reproducibility": rep,
        "reference_sites": refs,
        "headers": headers,
        "native": native_sec,
        "preprocessing": {k: v for k, v in preproc.items() if k != "figures"},
        "figures": sorted(figs),
        "data_origin": origin,
        "real_data_caveat": None if simulated else real_data_caveat(
            cfg.get("task"), dq["retained_minutes"], len(runs)),
        "default_mode": _default_mode(rimg, targets, refs, cfg.get("space") or MNI_SPACE),
    }
    env = _env()
    html = env.get_template("subject_report.html.j2").render(
        d=data, figs=figs, preproc_figs=preproc["figures"], config_yaml=yaml.safe_dump(data["config"], sort_keys=False),
        colours={m: _colour(m, i) for i, m in enumerate(targets)})
    write_text(out_html, html)
    write_json(out_json, data)
    return data


# --------------------------------------------------------------------------------------------
# the cohort report
# --------------------------------------------------------------------------------------------

def cohort_report_step(report_jsons: Sequence[str | Path], output_root: str | Path,
                       out_html: str | Path, report_htmls: Sequence[str | Path] = (),
                       summary_json: str | Path | None = None,
                       targets_tsv: str | Path | None = None) -> dict[str, Any]:
    """Write ``cohort_report.html``: all units in one sortable table, targets on one glass brain,
    within- vs between-subject distances, flags and links to the per-subject reports.

    Parameters
    ----------
    report_jsons : sequence of path
        The per-subject report JSON twins.
    output_root : path
        The output folder (links are relative to it).
    out_html : path
        Where to write the cohort report.
    report_htmls : sequence of path, optional
        The per-subject HTML reports, in the same order as ``report_jsons``.
    summary_json : path, optional
        ``reproducibility_summary.json`` (cohort distances).
    targets_tsv : path, optional
        The cohort ``targets.tsv``; its ``cohort_reliability`` columns (the comparison with the
        participants in this folder) fill the labelled cohort-comparison section.

    Returns
    -------
    dict
        The data shown.
    """
    out_dir = Path(out_html).parent
    htmls = list(report_htmls) or [str(p).replace("_report.json", "_report.html")
                                   for p in report_jsons]
    rows, markers = [], {}
    within: dict[str, list[float]] = {}
    simulated = False
    builtin_limits = None
    units = []
    unit_data = []
    for i, (pj, ph) in enumerate(zip(report_jsons, htmls, strict=True)):
        d = json.loads(Path(pj).read_text(encoding="utf-8"))
        unit_data.append(d)
        simulated = simulated or bool(d.get("simulated"))
        pre = d.get("preprocessing") or {}
        if pre.get("method") == "builtin":
            builtin_limits = pre.get("limits")
        unit = unit_stem(d["participant_id"], d.get("session_id"))
        link = os.path.relpath(str(ph), str(out_dir))
        units.append({"unit": unit, "link": link, "n_warnings": len(d.get("warnings", []))})
        rep = (d.get("reproducibility") or {}).get("methods", {})
        for m, t in d["targets"].items():
            r = rep.get(m, {})
            rows.append({
                "participant_id": d["participant_id"], "session_id": d.get("session_id") or "n/a",
                "method": m, "x": t["x"], "y": t["y"], "z": t["z"], "r": t["r"],
                "retained_minutes": d["data_quality"]["retained_minutes"],
                "fd_mean": max([q.get("fd_mean") or 0 for q in d["data_quality"]["runs"]] or [0]),
                "split_half_distance_mm": r.get("split_half_distance_mm"),
                "bootstrap_radius95_mm": r.get("bootstrap_radius95_mm"),
                "reliability": t.get("reliability") or "n/a",
                "reliability_reason": t.get("reliability_reason") or "",
                "n_warnings": len(d.get("warnings", [])), "link": link,
            })
            if r.get("split_half_distance_mm") is not None:
                within.setdefault(m, []).append(float(r["split_half_distance_mm"]))
        ft = next(iter(d["targets"].items()))
        markers[unit] = ((ft[1]["x"], ft[1]["y"], ft[1]["z"]), _EXTRA_COLOURS[i % 3])
    between: dict[str, list[float]] = {}
    for m in {r["method"] for r in rows}:
        mr = [r for r in rows if r["method"] == m]
        for a in range(len(mr)):
            for b in range(a + 1, len(mr)):
                if mr[a]["participant_id"] != mr[b]["participant_id"]:
                    between.setdefault(m, []).append(float(np.linalg.norm(
                        [mr[a][k] - mr[b][k] for k in ("x", "y", "z")])))
    methods = sorted({r["method"] for r in rows})
    glass_markers = {}
    for i, m in enumerate(methods):
        pts = [(r["x"], r["y"], r["z"]) for r in rows if r["method"] == m]
        glass_markers[m] = (pts, _colour(m, i))
    _matplotlib()
    from nilearn import plotting

    gd = plotting.plot_glass_brain(None, display_mode="ortho", annotate=True,
                                   radiological=False, title="all targets")
    for m, (pts, col) in glass_markers.items():
        gd.add_markers(pts, marker_color=col, marker_size=30, edgecolors="black",
                       linewidths=0.5, label=m)
    figs = {"glass": fig_to_base64(gd.frame_axes.figure),
            "distances": fig_to_base64(distance_figure(within, between))}
    summary = _load_json(summary_json)
    cohort_rows: list[dict[str, Any]] = []
    if targets_tsv and Path(targets_tsv).is_file():
        import pandas as pd

        tdf = pd.read_csv(targets_tsv, sep="\t", dtype=str, keep_default_na=False)
        if "cohort_reliability" in tdf.columns:
            cohort_rows = [{k: r[k] for k in ("participant_id", "session_id", "method",
                                              "reliability", "cohort_reliability",
                                              "cohort_reliability_reason")}
                           for r in tdf.to_dict("records")]
    cohort = {"rows": cohort_rows,
              "participants": sorted({r["participant_id"] for r in cohort_rows}),
              "ratio_limit": (summary or {}).get("max_split_half_ratio")}
    data = {"generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "software_version": __version__, "research_use": RESEARCH_USE,
            "orientation": ORIENTATION, "simulated": simulated,
            "space": (unit_data[0].get("space") if unit_data else None) or MNI_SPACE,
            "builtin_preprocessing": builtin_limits,
            "real_data": any(not d.get("simulated") for d in unit_data),
            "rows": rows, "units": units, "methods": methods,
            "within_mm": within, "between_mm": between,
            "summary": summary.get("methods") if summary else None,
            "n_unreliable": sum(r["reliability"] == "unreliable" for r in rows),
            "cohort_comparison": cohort}
    html = _env().get_template("cohort_report.html.j2").render(
        d=data, figs=figs, colours={m: _colour(m, i) for i, m in enumerate(methods)})
    write_text(out_html, html)
    return data
