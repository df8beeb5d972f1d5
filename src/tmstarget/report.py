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
#: Marker colour and shape of each target method, the same in every figure (MNI slices, DLPFC
#: zoom, glass brain, bootstrap cloud, T1w figure, cohort glass brain) and in the tables' swatches.
METHOD_STYLES: dict[str, tuple[str, str]] = {
    "classic": ("#00c000", "o"), "cluster": ("#ff00ff", "s"), "weighted": ("#ffa500", "D"),
    "cluster_largest": ("#ffff00", "P"), "snt": ("#ffffff", "p"), "seedmap": ("#a0522d", "h")}
#: Colours of the target methods in every figure (the colour half of :data:`METHOD_STYLES`).
METHOD_COLOURS = {m: c for m, (c, _) in METHOD_STYLES.items()}
_EXTRA_STYLES = (("#00ffff", "v"), ("#8080ff", "<"), ("#ff8080", ">"))
_EXTRA_COLOURS = tuple(c for c, _ in _EXTRA_STYLES)
#: Published reference sites (F3, Fox 2012 sites): grey crosses.
REFERENCE_STYLE = ("#a0a0a0", "X")
#: The coil's scalp entry in the T1w figure: a red triangle (no method uses red or a triangle).
ENTRY_STYLE = ("#ff3030", "^")
#: The seed sphere (no method colour).
SEED_COLOUR = "#1e90ff"
#: The exported (primary) method's marker is drawn last, this much larger (area), so no other
#: marker at the same place can hide it.
PRIMARY_SIZE_FACTOR = 2.0
#: Marker area (points^2) of the other methods in the slice and glass-brain figures.
MARKER_SIZE = 90.0
#: Figure resolution (dots per inch).
DPI = 100
#: Every figure drawn by the report is at least this many pixels wide (the HTML shows it at
#: that size, up to the page width), with fonts of 10 pt or more at :data:`DPI`.
MIN_FIGURE_WIDTH_PX = 900
#: Width (inches) of the report's figures: 10 in at 100 dpi = 1000 px.
FIG_WIDTH_IN = 10.0


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def _load_json(path: str | Path | None) -> dict | None:
    if not path or not Path(path).is_file():
        return None
    from .inputcheck import read_json_object

    return read_json_object(path, "JSON file")


def method_style(method: str, i: int = 0) -> tuple[str, str]:
    """Colour and matplotlib marker of a target method (``i`` picks one for unknown methods)."""
    return METHOD_STYLES.get(method, _EXTRA_STYLES[i % len(_EXTRA_STYLES)])


def _colour(method: str, i: int = 0) -> str:
    return method_style(method, i)[0]


#: Matplotlib marker -> SVG polygon points (on a 0..16 square) for the HTML legend swatches.
_SVG_SHAPES = {
    "s": "2,2 14,2 14,14 2,14", "D": "8,1 15,8 8,15 1,8", "^": "8,1 15,15 1,15",
    "v": "1,1 15,1 8,15", "<": "1,8 15,1 15,15", ">": "15,8 1,1 1,15",
    "p": "8,1 15,6.5 12.5,15 3.5,15 1,6.5", "h": "8,1 14.5,4.5 14.5,11.5 8,15 1.5,11.5 1.5,4.5",
    "P": "5.5,1 10.5,1 10.5,5.5 15,5.5 15,10.5 10.5,10.5 10.5,15 5.5,15 5.5,10.5 1,10.5 1,5.5 "
         "5.5,5.5",
    "X": "1,4 4,1 8,5 12,1 15,4 11,8 15,12 12,15 8,11 4,15 1,12 5,8",
}


def marker_svg(colour: str, shape: str, size: int = 16) -> Any:
    """An inline SVG of a figure marker (same colour and shape as in the figures), for the
    HTML tables and legends; no external resource."""
    from markupsafe import Markup, escape

    c = escape(colour)
    body = (f'<circle cx="8" cy="8" r="6.5" fill="{c}" stroke="#000" stroke-width="1"/>'
            if shape not in _SVG_SHAPES else
            f'<polygon points="{_SVG_SHAPES[shape]}" fill="{c}" stroke="#000" '
            'stroke-width="1"/>')
    return Markup(f'<svg class="marker" width="{size}" height="{size}" viewBox="0 0 16 16" '
                  f'role="img" aria-label="marker">{body}</svg>')


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
    width_in = float(fig.get_size_inches()[0])
    dpi = max(DPI, math.ceil(MIN_FIGURE_WIDTH_PX / width_in)) if width_in > 0 else DPI
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None},
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

def _marker_spec(value: Sequence[Any], label: str, i: int = 0) -> tuple[list[float], str, str]:
    """``(xyz, colour[, shape])`` -> ``(xyz, colour, shape)``; the shape of a method by name."""
    xyz = [float(v) for v in value[0]]
    colour = value[1] if len(value) > 1 and value[1] else method_style(label, i)[0]
    shape = value[2] if len(value) > 2 and value[2] else method_style(label, i)[1]
    return xyz, str(colour), str(shape)


def _ordered(markers: Mapping[str, Any], primary: str | None) -> list[tuple[str, Any]]:
    """Markers in drawing order: the primary (exported) method last, so it is on top."""
    items = list(markers.items())
    return [kv for kv in items if kv[0] != primary] + [kv for kv in items if kv[0] == primary]


def _legend_handle(label: str, colour: str, shape: str, size_pt: float = 9.0,
                   hollow: bool = False) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], linestyle="none", marker=shape, markersize=size_pt,
                  markerfacecolor="none" if hollow else colour,
                  markeredgecolor=colour if hollow else "black",
                  markeredgewidth=1.5 if hollow else 0.8, label=label)


def _legend_label(label: str, primary: str | None) -> str:
    return f"{label} (primary, drawn on top)" if primary is not None and label == primary \
        else label


def _figure_legend(fig: Any, handles: Sequence[Any], dark: bool, ncol: int | None = None,
                   y: float = 0.005) -> Any:
    """One legend row (or rows) along the bottom of ``fig`` naming every marker."""
    if not handles:
        return None
    ncol = ncol or min(len(handles), 4)
    leg = fig.legend(handles=list(handles), loc="lower center", bbox_to_anchor=(0.5, y),
                     ncol=ncol, fontsize=11, frameon=True, handletextpad=0.4,
                     columnspacing=1.4, borderpad=0.4)
    frame = leg.get_frame()
    frame.set_facecolor("#202020" if dark else "white")
    frame.set_edgecolor("#808080")
    for t in leg.get_texts():
        t.set_color("white" if dark else "black")
    return leg


def _draw_markers(display: Any, markers: Mapping[str, Any], primary: str | None = None,
                  size: float = MARKER_SIZE) -> list[Any]:
    """Draw each marker on every panel of a nilearn display, projected onto the panel (not only
    on the slice it lies in), with its method's shape and colour; the primary last and larger.

    Returns the legend handles, in drawing order.
    """
    handles = []
    for i, (label, value) in enumerate(_ordered(markers, primary)):
        xyz, colour, shape = _marker_spec(value, label, i)
        is_primary = primary is not None and label == primary
        s = size * (PRIMARY_SIZE_FACTOR if is_primary else 1.0)
        for display_ax in display.axes.values():
            direction = getattr(display_ax, "direction", None)
            if direction not in ("x", "y", "z"):
                continue
            h, v = _project(xyz, direction)
            display_ax.ax.scatter([h], [v], s=s, c=[colour], marker=shape, edgecolors="black",
                                  linewidths=1.2 if is_primary else 0.8,
                                  zorder=1100 if is_primary else 1000 + i)
        handles.append(_legend_handle(_legend_label(label, primary), colour, shape,
                                      11.0 if is_primary else 9.0))
    # one legend entry for the reference sites (same grey cross), naming them all
    refs = [h for h in handles if h.get_label().startswith("ref ")]
    if len(refs) > 1:
        names = ", ".join(h.get_label()[4:] for h in refs)
        refs[0].set_label(f"reference sites ({names})")
        handles = [h for h in handles if h not in refs[1:]]
    return handles


def map_figure(rmap: nb.Nifti1Image, cut: Sequence[float],
               markers: Mapping[str, Sequence[Any]] | None = None,
               region: nb.Nifti1Image | None = None, bg: nb.Nifti1Image | None = None,
               zoom_mm: float | None = None, title: str = "", vmax: float | None = None,
               primary: str | None = None, legend: bool = True) -> Any:
    """Orthogonal slices of a map through ``cut`` (neurological, L/R labelled).

    Parameters
    ----------
    rmap : Nifti1Image
        The map shown in colour (seed correlation r).
    cut : sequence of 3 float
        World (RAS+ mm) coordinate the slices go through.
    markers : mapping, optional
        Label -> ``(xyz mm, colour[, marker shape])`` drawn as points, projected onto every
        panel. A method's colour and shape default to :data:`METHOD_STYLES`.
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
    primary : str, optional
        The exported method: drawn last (on top) and larger.
    legend : bool
        Name every marker in a legend under the slices.

    Returns
    -------
    nilearn display
        Its ``frame_axes.figure`` is the matplotlib figure.
    """
    plt = _matplotlib()
    from nilearn import plotting

    if bg is None:
        bg = template_image()[0]
    if vmax is None:
        data = np.asarray(rmap.dataobj, dtype=float)
        vmax = float(np.nanmax(np.abs(data))) or 1.0
    band = 0.16 if (legend and markers) else 0.0
    fig = plt.figure(figsize=(FIG_WIDTH_IN * 1.2, 4.6 if zoom_mm else 4.4), facecolor="k")
    display = plotting.plot_stat_map(rmap, bg_img=bg, cut_coords=list(map(float, cut)),
                                     display_mode="ortho", threshold=0.25 * vmax, vmax=vmax,
                                     cmap="cold_hot", colorbar=True, annotate=True,
                                     draw_cross=False, title=title or None, radiological=False,
                                     black_bg=True, dim=-0.3, figure=fig,
                                     axes=[0.0, band, 1.0, 1.0 - band])
    if region is not None and np.any(np.asarray(region.dataobj)):
        display.add_contours(region, levels=[0.5], colors="white", linewidths=1.0)
    handles = _draw_markers(display, markers or {}, primary)
    if zoom_mm:
        c = [float(v) for v in cut]
        lims = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}  # panel -> world axes on (h, v)
        for k, (h, v) in lims.items():
            if k in display.axes:
                ax = display.axes[k].ax
                ax.set_xlim(c[h] - zoom_mm, c[h] + zoom_mm)
                ax.set_ylim(c[v] - zoom_mm, c[v] + zoom_mm)
    if band:
        _figure_legend(fig, handles, dark=True)
    return display


def glass_figure(rmap: nb.Nifti1Image | None,
                 markers: Mapping[str, Sequence[Any]],
                 title: str = "", size: float = MARKER_SIZE, primary: str | None = None,
                 legend: bool = True) -> Any:
    """Glass brain (neurological, L/R) with the map (if any) and markers (method shapes and
    colours, the primary last and larger, a legend under it)."""
    plt = _matplotlib()
    from nilearn import plotting

    band = 0.16 if (legend and markers) else 0.0
    fig = plt.figure(figsize=(FIG_WIDTH_IN * 1.2, 4.4), facecolor="w")
    kw = {"display_mode": "ortho", "annotate": True, "title": title or None,
          "radiological": False, "figure": fig, "axes": [0.0, band, 1.0, 1.0 - band]}
    if rmap is not None:
        data = np.asarray(rmap.dataobj, dtype=float)
        vmax = float(np.nanmax(np.abs(data))) or 1.0
        display = plotting.plot_glass_brain(rmap, plot_abs=False, threshold=0.5 * vmax,
                                            vmax=vmax, cmap="cold_hot", colorbar=True, **kw)
    else:
        display = plotting.plot_glass_brain(None, **kw)
    handles = _draw_markers(display, markers, primary, size)
    if band:
        _figure_legend(fig, handles, dark=False)
    return display


def fd_figure(runs: Sequence[Mapping[str, Any]]) -> Any:
    """Framewise displacement per run, threshold dashed, excluded volumes marked in red."""
    plt = _matplotlib()
    n = max(1, len(runs))
    fig, axes = plt.subplots(n, 1, figsize=(FIG_WIDTH_IN, 2.2 * n + 0.6), squeeze=False)
    for ax, q in zip(axes[:, 0], runs, strict=False):
        fd = np.asarray(q.get("fd") or [], float)
        ax.plot(np.arange(fd.size), fd, color="#1f4e79", lw=0.9, label="FD")
        thr = q.get("fd_threshold")
        if thr is not None:
            ax.axhline(float(thr), color="grey", ls="--", lw=0.8, label=f"threshold {thr} mm")
        cens = [int(i) for i in q.get("censored") or [] if 0 <= int(i) < fd.size]
        if cens:
            ax.scatter(cens, fd[cens], color="red", s=12, zorder=3, label="excluded volume")
        ax.set_ylabel("FD (mm)", fontsize=11)
        ax.set_title(Path(str(q.get("bold", ""))).name, fontsize=10, loc="left")
        ax.tick_params(labelsize=10)
        ax.legend(fontsize=10, loc="upper right")
    axes[-1, 0].set_xlabel("volume", fontsize=11)
    fig.tight_layout()
    return fig


def timeseries_figure(ts: np.ndarray, tr: float | None) -> Any:
    """The seed's mean (denoised, concatenated) time series."""
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(FIG_WIDTH_IN, 2.4))
    t = np.arange(ts.size) * (tr or 1.0)
    ax.plot(t, ts, color="#7f3f00", lw=0.8)
    ax.set_xlabel("time (s, retained volumes concatenated)" if tr else "retained volume",
                  fontsize=11)
    ax.set_ylabel("seed signal (z)", fontsize=11)
    ax.tick_params(labelsize=10)
    fig.tight_layout()
    return fig


def cloud_figure(cloud: Mapping[str, np.ndarray], full: Mapping[str, Sequence[float]],
                 halves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                 primary: str | None = None) -> Any:
    """Bootstrap targets, split-half targets and full-data targets on three planes (mm).

    Each method keeps its colour and marker shape (:data:`METHOD_STYLES`): full-data target
    filled and large (the primary largest, drawn last), split-half targets hollow, bootstrap
    targets small dots. Coronal (x-z) and axial (x-y) panels have x increasing to the right:
    neurological.
    """
    plt = _matplotlib()
    fig, axes = plt.subplots(1, 3, figsize=(FIG_WIDTH_IN * 1.2, 4.8))
    planes = [("sagittal", 1, 2, "y (mm, anterior →)", "z (mm)"),
              ("coronal", 0, 2, "x (mm)", "z (mm)"),
              ("axial", 0, 1, "x (mm)", "y (mm)")]
    methods = list(dict.fromkeys([*cloud, *halves, *full]))
    order = [m for m in methods if m != primary] + [m for m in methods if m == primary]
    for ax, (name, h, v, xl, yl) in zip(axes, planes, strict=True):
        for j, m in enumerate(order):
            colour, shape = method_style(m, j)
            big = m == primary
            z0 = 10 * j + (100 if big else 0)
            if m in cloud:
                pts = np.asarray(cloud[m], float).reshape(-1, 3)
                ax.scatter(pts[:, h], pts[:, v], s=8, alpha=0.35, color=colour, zorder=z0)
            if m in halves:
                a, b = halves[m]
                ax.scatter([a[h], b[h]], [a[v], b[v]], marker=shape, s=70, facecolors="none",
                           edgecolors=colour, linewidths=1.8, zorder=z0 + 1)
            if m in full:
                xyz = full[m]
                ax.scatter([xyz[h]], [xyz[v]], marker=shape,
                           s=MARKER_SIZE * (PRIMARY_SIZE_FACTOR if big else 1.3),
                           color=colour, edgecolors="black", linewidths=1.2 if big else 0.8,
                           zorder=z0 + 2)
        ax.set_title(name, fontsize=11)
        ax.set_xlabel(xl, fontsize=10)
        ax.set_ylabel(yl, fontsize=10)
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=10)
        ax.set_facecolor("#f4f4f4")
        if h == 0:
            ax.text(0.02, 0.95, "L", transform=ax.transAxes, fontweight="bold", va="top",
                    fontsize=12)
            ax.text(0.98, 0.95, "R", transform=ax.transAxes, fontweight="bold", va="top",
                    ha="right", fontsize=12)
    handles = []
    for j, m in enumerate(order):
        colour, shape = method_style(m, j)
        handles.append(_legend_handle(_legend_label(m, primary), colour, shape,
                                      11.0 if m == primary else 9.0))
    kinds = [("full-data target (filled)", "o", False), ("split halves (hollow)", "o", True),
             ("bootstrap targets (dots)", ".", False)]
    for lab, shape, hollow in kinds:
        handles.append(_legend_handle(lab, "#606060", shape, 9.0, hollow))
    _figure_legend(fig, handles, dark=False, ncol=min(len(handles), 4))
    rows = math.ceil(len(handles) / min(len(handles), 4))
    fig.tight_layout(rect=(0, 0.07 * rows + 0.03, 1, 1))
    return fig


def distance_figure(within: Mapping[str, Sequence[float]],
                    between: Mapping[str, Sequence[float]]) -> Any:
    """Within-subject split-half distances vs between-subject target distances per method."""
    plt = _matplotlib()
    methods = sorted(set(within) | set(between))
    fig, ax = plt.subplots(figsize=(FIG_WIDTH_IN, 3.8))
    rng = np.random.default_rng(0)
    for i, m in enumerate(methods):
        for off, vals, col, lab in ((-0.15, within.get(m, []), "#1f77b4", "within (split-half)"),
                                    (0.15, between.get(m, []), "#d62728", "between subjects")):
            vals = np.asarray(vals, float)
            if vals.size:
                ax.scatter(i + off + rng.uniform(-0.05, 0.05, vals.size), vals, s=18, color=col,
                           alpha=0.8, label=lab if i == 0 else None)
                ax.hlines(np.median(vals), i + off - 0.1, i + off + 0.1, color="black")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("distance (mm)", fontsize=11)
    ax.tick_params(labelsize=10)
    ax.legend(fontsize=10)
    fig.tight_layout()
    return fig


def _project(xyz: Sequence[float], panel: str) -> tuple[float, float]:
    h, v = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[panel]
    return float(xyz[h]), float(xyz[v])


def laterality_words(lat: Mapping[str, Any] | None, mni_x: float | None,
                     t1w_x: float | None) -> dict[str, Any] | None:
    """The native JSON's ``laterality_check`` in words, for the panel beside the T1w figure.

    Returns
    -------
    dict or None
        ``passed``, ``hemisphere`` (``left``/``right``), ``side_mm`` (distance from the T1w
        brain centre, mm, along the T1w's RAS+ x), ``side_word`` (``left``/``right`` of the
        centre), ``mni_x``, ``mni_x_sign`` (words), ``t1w_x``, ``jacobian_determinant`` and
        ``panel_label`` (the T1w sagittal panel's label).
    """
    if not isinstance(lat, Mapping):
        return None
    hemi = str(lat.get("hemisphere_mni") or ("left" if (mni_x or 0) < 0 else "right"))
    side = lat.get("target_x_minus_brain_centre_x_mm")
    out: dict[str, Any] = {
        "passed": bool(lat.get("passed")), "hemisphere": hemi,
        "side_mm": None if side is None else abs(float(side)),
        "side_word": None if side is None else ("left" if float(side) < 0 else "right"),
        "mni_x": mni_x,
        "mni_x_sign": None if mni_x is None else (
            "x < 0: left" if mni_x < 0 else ("x > 0: right" if mni_x > 0 else "x = 0: midline")),
        "t1w_x": t1w_x, "jacobian_determinant": lat.get("jacobian_determinant"),
        "brain_centre_t1w_mm": lat.get("brain_centre_t1w_mm"),
    }
    label = f"{hemi.upper()} hemisphere"
    if t1w_x is not None:
        label += f" (x = {float(t1w_x):.1f} mm, scanner frame)"
    if side is not None:
        label += f"\n{abs(float(side)):.1f} mm {out['side_word']} of the T1w brain centre"
    out["panel_label"] = label
    return out


def native_figure(t1w: nb.Nifti1Image, target: Sequence[float], entry: Sequence[float] | None,
                  normal: Sequence[float] | None, handle: Sequence[float] | None,
                  method: str | None = None, laterality: Mapping[str, Any] | None = None) -> Any:
    """Target and scalp entry on the subject's T1w, three planes, coil normal/handle drawn.

    The cortical target has the exported ``method``'s colour and shape (:data:`METHOD_STYLES`),
    the coil's scalp entry a red triangle (:data:`ENTRY_STYLE`), both projected onto every
    panel and named in the legend. The sagittal panel says the hemisphere in words
    (``laterality``, from :func:`laterality_words`): a left target's T1w x can be > 0 in the
    scanner's frame, so the "x = …" of the slice alone does not say left or right.
    """
    plt = _matplotlib()
    from nilearn import plotting

    zooms = np.sqrt((np.asarray(t1w.affine)[:3, :3] ** 2).sum(axis=0))
    step = 2 if float(zooms.max()) < 1.5 else 1
    if step > 1:  # a ~2 mm display copy: resampling an oblique 1 mm T1w is slow
        aff = np.array(t1w.affine, dtype=float)
        aff[:3, :3] *= step
        t1w = nb.Nifti1Image(np.asarray(t1w.dataobj)[::step, ::step, ::step], aff)
    band = 0.2
    fig = plt.figure(figsize=(FIG_WIDTH_IN, 4.5), facecolor="k")
    display = plotting.plot_anat(t1w, cut_coords=list(map(float, target)), display_mode="ortho",
                                 annotate=False, draw_cross=False, radiological=False,
                                 dim=-0.5, black_bg=True, colorbar=False, figure=fig,
                                 axes=[0.0, band, 1.0, 0.84 - band])
    display.annotate(left_right=True, positions=False, size=12)
    colour, shape = method_style(method or "", 0) if method else ("#00ff00", "o")
    t = np.asarray(target, float)
    for k in ("x", "y", "z"):
        if k not in display.axes:
            continue
        ax = display.axes[k].ax
        if entry is not None:
            e = np.asarray(entry, float)
            ax.plot(*zip(_project(t, k), _project(e, k), strict=True), color=ENTRY_STYLE[0],
                    lw=1.2, zorder=900)
            for vec, col in ((normal, "#00ffff"), (handle, "#ffff00")):
                if vec is not None and len(vec) == 3:
                    tip = e + 30.0 * np.asarray(vec, float) / (np.linalg.norm(vec) or 1.0)
                    ax.annotate("", xy=_project(tip, k), xytext=_project(e, k),
                                arrowprops={"arrowstyle": "->", "color": col, "lw": 1.8},
                                zorder=950)
            ax.scatter(*[[v] for v in _project(e, k)], s=MARKER_SIZE * 1.3, c=[ENTRY_STYLE[0]],
                       marker=ENTRY_STYLE[1], edgecolors="white", linewidths=1.0, zorder=1000)
        ax.scatter(*[[v] for v in _project(t, k)], s=MARKER_SIZE * PRIMARY_SIZE_FACTOR,
                   c=[colour], marker=shape, edgecolors="black", linewidths=1.2, zorder=1100)
    labels = {"x": (laterality or {}).get("panel_label")
              or f"sagittal, x = {t[0]:.1f} mm (scanner frame)",
              "y": f"coronal, y = {t[1]:.1f} mm (scanner frame)",
              "z": f"axial, z = {t[2]:.1f} mm (scanner frame)"}
    for k, text in labels.items():
        if k in display.axes:
            ax = display.axes[k].ax
            ax.text(0.0 if k == "x" else 0.5, 1.02, text, transform=ax.transAxes,
                    ha="left" if k == "x" else "center", va="bottom", color="white",
                    fontsize=10, fontweight="bold" if k == "x" else "normal")
    handles = [_legend_handle(f"cortical target ({method or 'target'}, exported)", colour,
                              shape, 11.0)]
    if entry is not None:
        handles.append(_legend_handle("coil entry on the scalp", ENTRY_STYLE[0], ENTRY_STYLE[1],
                                      10.0))
        from matplotlib.lines import Line2D

        if normal is not None:
            handles.append(Line2D([], [], color="#00ffff", lw=2, label="coil normal (outward)"))
        if handle is not None:
            handles.append(Line2D([], [], color="#ffff00", lw=2, label="handle direction"))
    _figure_legend(fig, handles, dark=True, ncol=min(len(handles), 4), y=0.01)
    return display


def cohort_glass_figure(points: Sequence[Mapping[str, Any]], title: str = "all targets",
                        max_labels: int = 30) -> Any:
    """All units' targets on one glass brain: method shapes and colours (legend), each unit's
    exported target labelled with the unit's name (labels in a column beside each panel, a
    line to the point, so nearby targets stay readable).

    Parameters
    ----------
    points : sequence of mapping
        ``unit``, ``method``, ``xyz`` and ``primary`` (bool: the unit's exported method).
    title : str
        Figure title.
    max_labels : int
        Above this many units only the legend names methods (the table lists units).
    """
    plt = _matplotlib()
    from nilearn import plotting

    methods = list(dict.fromkeys(p["method"] for p in points))
    fig = plt.figure(figsize=(FIG_WIDTH_IN * 1.3, 6.0), facecolor="w")
    band = 0.14
    display = plotting.plot_glass_brain(None, display_mode="ortho", annotate=True,
                                        radiological=False, title=title, figure=fig,
                                        axes=[0.0, band, 1.0, 1.0 - band])
    # every unit's primary (exported) target last and larger, as in the per-subject figures
    layers = [(False, 60.0, 1000), (True, 60.0 * PRIMARY_SIZE_FACTOR, 1100)]
    for is_primary, size, z0 in layers:
        for j, m in enumerate(methods):
            colour, shape = method_style(m, j)
            pts = [p["xyz"] for p in points if p["method"] == m and bool(p.get("primary")) ==
                   is_primary]
            if not pts:
                continue
            for display_ax in display.axes.values():
                if getattr(display_ax, "direction", None) not in ("x", "y", "z"):
                    continue
                hv = np.array([_project(x, display_ax.direction) for x in pts])
                display_ax.ax.scatter(hv[:, 0], hv[:, 1], s=size, c=[colour] * len(pts),
                                      marker=shape, edgecolors="black",
                                      linewidths=1.0 if is_primary else 0.7, zorder=z0 + j)
    labelled = [p for p in points if p.get("primary")]
    if 0 < len(labelled) <= max_labels:
        for display_ax in display.axes.values():
            k = getattr(display_ax, "direction", None)
            if k not in ("x", "y", "z"):
                continue
            ax = display_ax.ax
            hv = np.array([_project(p["xyz"], k) for p in labelled])
            x0, x1 = ax.get_xlim()
            y0, y1 = ax.get_ylim()
            fh = (hv[:, 0] - x0) / ((x1 - x0) or 1.0)
            fv = (hv[:, 1] - y0) / ((y1 - y0) or 1.0)
            n = len(labelled)
            gap = min(0.085, 0.8 / max(n, 1))
            centre = float(np.clip(np.mean(fv), 0.1 + gap * (n - 1) / 2,
                                   0.9 - gap * (n - 1) / 2))
            left = float(fh.min()) > 0.25 or float(fh.max()) > 0.75
            fx = float(fh.min()) - 0.1 if left else float(fh.max()) + 0.1
            order = np.argsort(-fv)  # top to bottom, like the points
            for rank, idx in enumerate(order):
                fy = centre + gap * ((n - 1) / 2 - rank)
                ax.annotate(labelled[idx]["unit"], xy=tuple(hv[idx]), xycoords="data",
                            xytext=(fx, fy), textcoords="axes fraction",
                            ha="right" if left else "left", va="center", fontsize=10,
                            color="black", zorder=1200,
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "#999999",
                                  "alpha": 0.9},
                            arrowprops={"arrowstyle": "-", "color": "#555555", "lw": 0.7,
                                        "shrinkA": 0, "shrinkB": 4})
    handles = [_legend_handle(m, *method_style(m, j)) for j, m in enumerate(methods)]
    handles.append(_legend_handle("larger: the unit's exported (primary) target, labelled",
                                  "#909090", "o", 11.0))
    _figure_legend(fig, handles, dark=False, ncol=min(max(len(handles), 1), 6))
    return display


# --------------------------------------------------------------------------------------------
# methods paragraph, sign-off
# --------------------------------------------------------------------------------------------

#: References the methods paragraph cites (key -> full reference).
REFERENCES: dict[str, str] = {
    "fox2012": "Fox MD, Buckner RL, White MP, Greicius MD, Pascual-Leone A (2012). Efficacy of "
               "transcranial magnetic stimulation targets for depression is related to intrinsic "
               "functional connectivity with the subgenual cingulate. Biol Psychiatry "
               "72(7):595-603.",
    "weigand2018": "Weigand A, Horn A, Caballero R, et al. (2018). Prospective validation that "
                   "subgenual connectivity predicts antidepressant efficacy of transcranial "
                   "magnetic stimulation sites. Biol Psychiatry 84(1):28-37.",
    "cash2021": "Cash RFH, Cocchi L, Lv J, Wu Y, Fitzgerald PB, Zalesky A (2021). Personalized "
                "connectivity-guided DLPFC-TMS for depression: advancing computational "
                "feasibility, precision and reproducibility. Hum Brain Mapp 42(13):4155-4172.",
    "nilearn": "Abraham A, Pedregosa F, Eickenberg M, et al. (2014). Machine learning for "
               "neuroimaging with scikit-learn. Front Neuroinform 8:14 (nilearn).",
    "nibabel": "Brett M, Markiewicz CJ, Hanke M, et al. nipy/nibabel. Zenodo "
               "(the version named in the text).",
    "stokes": "Stokes MG, Chambers CD, Gould IC, et al. (2005). Simple metric for scaling motor "
              "threshold based on scalp-cortex distance. J Neurophysiol 94:4520-4527; Stokes MG, "
              "Chambers CD, Gould IC, et al. (2007). Distance-adjusted motor threshold for "
              "transcranial magnetic stimulation. Clin Neurophysiol 118:1617-1625.",
    "beam2009": "Beam W, Borckardt JJ, Reeves ST, George MS (2009). An efficient and accurate "
                "new method for locating the F3 position for prefrontal TMS applications. "
                "Brain Stimul 2(1):50-54.",
}


def _g(cfg: Mapping[str, Any], *keys: str) -> Any:
    cur: Any = cfg
    for k in keys:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(k)
    return cur


def _hz(v: Any) -> str:
    return "none" if v in (None, 0) else f"{float(v):g} Hz"


def methods_paragraph(cfg: Mapping[str, Any], dq: Mapping[str, Any], seed: Mapping[str, Any],
                      search_region: Mapping[str, Any],
                      targets: Mapping[str, Mapping[str, Any]],
                      rep: Mapping[str, Any] | None, verdict: Mapping[str, Any] | None,
                      native_sec: Mapping[str, Any], origin: Mapping[str, Any],
                      software: Mapping[str, Any], preprocessing: Mapping[str, Any],
                      primary: str | None = None) -> dict[str, Any]:
    """A methods paragraph for this participant, written from the configuration and the
    numbers actually used (like fMRIPrep's citation boilerplate), with its references.

    Parameters
    ----------
    cfg : mapping
        The workflow configuration the report was made with.
    dq : mapping
        The report's data-quality section (strategy as applied, runs with their FD threshold).
    seed, search_region, targets, rep, verdict, native_sec : mapping
        The report's sections of the same names.
    origin : mapping
        :func:`data_origin` (simulated or real input).
    software : mapping
        Package versions recorded in the target JSON.
    preprocessing : mapping
        :func:`preprocessing_section` (which preprocessing made the inputs).
    primary : str, optional
        The exported method.

    Returns
    -------
    dict
        ``paragraphs`` (list of str), ``references`` (list of str, in citation order) and
        ``values`` (the configuration values the text states).
    """
    st = dict(dq.get("strategy") or {})
    runs = list(dq.get("runs") or [])
    fd_cfg = _g(cfg, "denoise", "fd_threshold")
    fd_runs = sorted({float(r["fd_threshold"]) for r in runs if r.get("fd_threshold") is not None})
    fd = float(fd_cfg) if fd_cfg is not None else (fd_runs[0] if fd_runs else None)
    dvars = _g(cfg, "denoise", "std_dvars_threshold")
    min_seg = _g(cfg, "denoise", "min_segment")
    sw = {k: software.get(k) for k in ("tmstarget", "nilearn", "nibabel", "numpy", "scipy",
                                       "python", "snakemake") if software.get(k)}
    version = sw.get("tmstarget") or __version__
    cites: list[str] = []

    def cite(key: str) -> str:
        if key not in cites:
            cites.append(key)
        return str(cites.index(key) + 1)

    p: list[str] = []
    origin_words = (f"The input data are SIMULATED (the dataset \"{origin.get('dataset_name')}\" "
                    "says so in its dataset_description.json): synthetic BOLD with a planted "
                    "target, so this text describes a software demonstration, not a study of a "
                    "person." if origin.get("simulated") else
                    "The input data are treated as real scanner data (the dataset description "
                    "does not say they are simulated).")
    gen = ", ".join(preprocessing.get("generated_by") or []) or "not stated"
    p.append(
        f"{origin_words} Targets were computed with tmstarget {version} from preprocessed "
        f"resting-state fMRI (input derivatives generated by: {gen}), in "
        f"{cfg.get('space') or MNI_SPACE} space. The approach places the stimulation target "
        "at the left dorsolateral prefrontal cortex (DLPFC) site most anticorrelated with the "
        f"subgenual anterior cingulate cortex (sgACC) [{cite('fox2012')}], a relation "
        f"validated prospectively across independent cohorts [{cite('weigand2018')}].")
    regs = list(st.get("regressors") or next(
        (r.get("confound_columns") for r in runs if r.get("confound_columns")), None) or [])
    fd_text = "no framewise-displacement censoring" if fd is None else (
        f"volumes with framewise displacement (FD) above {fd:g} mm were censored"
        + (f" (the runs record {', '.join(f'{v:g}' for v in fd_runs)} mm)"
           if fd_runs and fd_cfg is not None and fd_runs != [float(fd_cfg)] else ""))
    if dvars is not None:
        fd_text += f", as were volumes with standardised DVARS above {float(dvars):g}"
    if min_seg:
        fd_text += (f", and retained segments shorter than {int(min_seg)} volumes were "
                    "censored too")
    smooth = st.get("smoothing_fwhm")
    p.append(
        f"Denoising followed the '{st.get('name', 'n/a')}' strategy"
        + (f" ({str(st['reference']).split(': ', 1)[0]})" if st.get("reference") else "")
        + ": "
        + (f"{len(regs)} confound regressors ({', '.join(regs)}), " if regs else
           "confound regressors not recorded, ")
        + f"{'linear detrending, ' if st.get('detrend') else ''}"
        + (f"band-pass {_hz(st.get('high_pass'))} to {_hz(st.get('low_pass'))}"
           if st.get("high_pass") and st.get("low_pass") else
           f"high-pass {_hz(st.get('high_pass'))}" if st.get("high_pass") else
           f"low-pass {_hz(st.get('low_pass'))}" if st.get("low_pass") else
           "no temporal filter")
        + (f" ({st['filter']})" if st.get("filter") else "")
        + ", spatial smoothing "
        + (f"{float(smooth):g} mm FWHM" if smooth else "none")
        + f"; {fd_text}. Censored and non-steady-state volumes were removed exactly (they do "
        "not enter the filter or the regression fit). "
        f"{dq.get('retained_volumes', 'n/a')} volumes "
        f"({fmt(dq.get('retained_minutes'), 1)} min) were retained.")
    methods_desc = "; ".join(f"{m}: {t.get('description') or m}" for m, t in targets.items())
    tcfg = _g(cfg, "target") or {}
    p.append(
        f"The seed was {seed.get('description') or 'n/a'} ({seed.get('n_voxels', 'n/a')} "
        "voxels); its mean denoised time series was correlated (Pearson r) with every brain "
        f"voxel. The search region was the {search_region.get('description') or 'n/a'} "
        f"({search_region.get('n_voxels', 'n/a')} voxels). Target methods ({len(targets)}): "
        f"{methods_desc}"
        + (f" (cluster_percent {tcfg['cluster_percent']} %, weighted_n_voxels "
           f"{tcfg['weighted_n_voxels']})" if tcfg.get("cluster_percent") is not None
           and tcfg.get("weighted_n_voxels") is not None else "")
        + (f". The exported target is the {primary} method's" if primary else "") + ".")
    if rep:
        thr = (verdict or {}).get("thresholds") or {}
        p.append(
            f"Reproducibility was assessed within the participant (cf. Cash et al. "
            f"[{cite('cash2021')}]): "
            f"split-half ({rep.get('split') or 'n/a'}), the target recomputed in each half, "
            f"and a circular block bootstrap ({rep.get('bootstrap_resamples', 'n/a')} resamples "
            f"of {fmt(rep.get('bootstrap_block_seconds'), 0)} s blocks, seed "
            f"{_g(cfg, 'reproducibility', 'bootstrap_seed')}). A target is called reliable "
            "when its own split-half distance is at most "
            f"{thr.get('max_split_half_mm', 'n/a')} mm, its split-half map correlation at least "
            f"{thr.get('min_split_half_map_r', 'n/a')} and its bootstrap 95 % radius at most "
            f"{thr.get('max_bootstrap_radius_mm', 'n/a')} mm.")
    else:
        p.append("Reproducibility (split-half, bootstrap) was not run.")
    if native_sec.get("available"):
        ncfg = _g(cfg, "native") or {}
        text = ("The MNI targets were moved into the participant's T1w with the preprocessing's "
                "own MNI-to-T1w transform (checked by a round trip, a Jacobian and brain-side "
                "laterality check and a left-right mirror check); the coil entry is the scalp "
                f"point along the {ncfg.get('entry', 'normal')} direction, the handle "
                f"{ncfg.get('handle_angle_deg', 'n/a')} deg from the midline. Scalp-to-cortex "
                "distances at the target and the motor hotspot give the depth advice "
                f"[{cite('stokes')}].")
        if (native_sec.get("scalp_rules") or {}).get("rules"):
            text += (f" Scalp-rule sites (Beam F3 [{cite('beam2009')}], EEG F3, 5 cm) were "
                     "computed on the participant's own scalp for comparison.")
        p.append(text)
    p.append(
        "Software: tmstarget " + str(version)
        + (f", nilearn {sw['nilearn']} [{cite('nilearn')}]" if sw.get("nilearn") else
           f" with nilearn [{cite('nilearn')}]")
        + (f", nibabel {sw['nibabel']} [{cite('nibabel')}]" if sw.get("nibabel") else
           f", nibabel [{cite('nibabel')}]")
        + "".join(f", {k} {sw[k]}" for k in ("numpy", "scipy", "snakemake", "python")
                  if sw.get(k)) + ".")
    return {"paragraphs": p, "references": [REFERENCES[k] for k in cites],
            "values": {"fd_threshold_mm": fd, "strategy": st.get("name"),
                       "high_pass_hz": st.get("high_pass"), "low_pass_hz": st.get("low_pass"),
                       "smoothing_fwhm_mm": smooth,
                       "bootstrap_resamples": (rep or {}).get("bootstrap_resamples"),
                       "methods": list(targets), "software_version": version}}


#: The checks a clinician must still make (SAFETY.md, "Checks a clinician must still make",
#: word for word; tests/test_report.py compares them with SAFETY.md). The report's sign-off block
#: lists them with a box to tick by hand on the printout.
CLINICIAN_CHECKS: tuple[str, ...] = (
    "Load the subject's own T1w in the neuronavigation system and confirm left/right with a "
    'fiducial (e.g. a vitamin-E capsule on the left) — never trust orientation labels alone.',
    'Confirm the target is in the left DLPFC on that image, on grey matter, at a plausible '
    'depth.',
    'Compare the personalized site with the scalp-rule site (e.g. Beam F3) and make sure a '
    'large difference is explained, not a mistake.',
    'Confirm that the SHA-256 of the image listed in the target JSON/report matches the image'
    ' you loaded (and that the subject ID and session are the right ones).',
    'Review the data-quality numbers (retained volumes/minutes, motion) and every warning. If'
    ' the report says BUILT-IN PREPROCESSING, look at its QC images: the template edges must '
    "follow the T1w's sulci and ventricles, and the T1w edges must follow the BOLD "
    "reference's brain outline; if either is off, do not use the target (re-run with "
    'fMRIPrep).',
    'In the navigator, load exactly the desc-preproc_T1w named in the '
    "…_space-T1w_desc-target_coords.json (compare its SHA-256); fMRIPrep's T1w space is not "
    'the scanner space of a raw T1w.',
    'Confirm on that image that the imported target is in the left hemisphere (the side of '
    'your left-side fiducial), in grey matter of the DLPFC, and that it matches the sphere '
    'overlay and the reported T1w coordinate.',
    'Check the scalp entry and coil: the entry lies on the scalp (not in air or hair-free '
    "skin folds), the coil's into-head axis points at the target, and the handle points "
    'backwards and lateral as your protocol expects. Brainsight silently "repairs" a mirrored'
    ' matrix: if the coil is shown upside down, stop.',
    'For a scalp-rule target (Beam F3, EEG F3, 5 cm), check the landmark figure '
    '(…_desc-landmarks_qc.png): nasion, inion and preauricular points must sit on those '
    'points of this head. Landmarks come from a template unless you digitised them; on a '
    'given head they can be 1–2 cm off (the inion especially), and on a defaced or cropped '
    'T1w the nasion is only estimated. If the landmarks are wrong, digitise them with the '
    "navigator's pointer and give them in native.scalp_rules.landmarks_file. Load the "
    'scalp-rule file under its own name (desc-scalp…); never confuse it with the connectivity'
    ' target.',
    'Treat the scalp-to-cortex distances and the depth advice (the resting motor threshold '
    'plus about 3 percentage points of maximum stimulator output, %MSO, per mm the target is '
    'deeper than the motor hotspot, Stokes et al.; an amount of stimulator output, not a '
    'percentage of the threshold) as advice only; the intensity is set by the clinician from '
    "the subject's measured resting motor threshold and the protocol.",
)


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
    markers = {m: ((t["x"], t["y"], t["z"]), *method_style(m, i))
               for i, (m, t) in enumerate(targets.items())}
    # the exported (primary) method: slices through it, its marker on top in every figure
    primary = native_sec.get("primary_method") if native_sec.get("available") else None
    primary = primary if primary in targets else next(iter(targets))
    first = targets[primary]
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
        d.add_markers([seed_centre], marker_color=SEED_COLOUR,
                      marker_size=float(seed_cfg.get("radius_mm", 10)) ** 2 * 2,
                      edgecolors="black", alpha=0.6)
        figs["seed_loc"] = fig_to_base64(d.frame_axes.figure)
    ref_markers = {f"ref {n}": ((s["x"], s["y"], s["z"]), *REFERENCE_STYLE)
                   for n, s in refs.items()}
    all_markers = {**ref_markers, **markers}
    figs["map"] = fig_to_base64(map_figure(rimg, cut, all_markers, region, tpl_img,
                                           primary=primary).frame_axes.figure)
    figs["zoom"] = fig_to_base64(map_figure(rimg, cut, all_markers, region, tpl_img, zoom_mm=30,
                                            primary=primary).frame_axes.figure)
    figs["glass"] = fig_to_base64(glass_figure(rimg, all_markers,
                                               primary=primary).frame_axes.figure)
    if rep is not None:
        halves = {m: (v["half_a"], v["half_b"]) for m, v in rep["methods"].items()
                  if v["half_a"] and v["half_b"]}
        full = {m: (t["x"], t["y"], t["z"]) for m, t in targets.items()}
        figs["cloud"] = fig_to_base64(cloud_figure(cloud_pts, full, halves, primary=primary))
    if native_sec["available"] and t1_path and Path(t1_path).is_file():
        rows = {r["method"]: r for r in native_sec["methods"]}
        coil = native_sec.get("coil") or {}
        pm = native_sec.get("primary_method")
        row = rows.get(pm) or (native_sec["methods"][0] if native_sec["methods"] else {})
        tgt = row.get("t1w_mm")
        if tgt is not None:
            same = coil.get("method") in (None, row.get("method"))
            lat_words = laterality_words((native or {}).get("laterality_check"),
                                         (row.get("mni_mm") or [None])[0], tgt[0])
            native_sec["laterality"] = lat_words
            try:
                figs["native"] = fig_to_base64(native_figure(
                    nb.load(t1_path), tgt,
                    (coil.get("entry_mm") if same else None) or row.get("entry_mm"),
                    (coil.get("normal") if same else None) or row.get("normal"),
                    coil.get("handle") if same else None, method=row.get("method"),
                    laterality=lat_words).frame_axes.figure)
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
        "primary_method": primary,
        "marker_styles": {m: {"colour": c, "marker": mk} for m, (c, mk) in (
            (m, method_style(m, i)) for i, m in enumerate(targets))},
        "methods_text": methods_paragraph(
            cfg, dq, {"description": seed.get("description"), "n_voxels": seed.get("n_voxels")},
            {k: (tj.get("search_region") or {}).get(k) for k in ("description", "n_voxels")},
            targets, rep, verdict, native_sec, origin, tj.get("software", {}),
            preproc, primary),
        "signoff": {"checks": list(CLINICIAN_CHECKS), "source": "SAFETY.md, \"Checks a "
                    "clinician must still make\""},
    }
    env = _env()
    html = env.get_template("subject_report.html.j2").render(
        d=data, figs=figs, preproc_figs=preproc["figures"],
        config_yaml=yaml.safe_dump(data["config"], sort_keys=False),
        colours={m: _colour(m, i) for i, m in enumerate(targets)},
        symbols={**{m: marker_svg(*method_style(m, i)) for i, m in enumerate(targets)},
                 "_reference": marker_svg(*REFERENCE_STYLE), "_entry": marker_svg(*ENTRY_STYLE)})
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
    cohort_points: list[dict[str, Any]] = []
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
        unit_primary = (d.get("summary") or {}).get("method")
        unit_primary = unit_primary if unit_primary in d["targets"] else ft[0]
        for m, t in d["targets"].items():
            cohort_points.append({"unit": unit, "method": m, "xyz": (t["x"], t["y"], t["z"]),
                                  "primary": m == unit_primary})
    between: dict[str, list[float]] = {}
    for m in {r["method"] for r in rows}:
        mr = [r for r in rows if r["method"] == m]
        for a in range(len(mr)):
            for b in range(a + 1, len(mr)):
                if mr[a]["participant_id"] != mr[b]["participant_id"]:
                    between.setdefault(m, []).append(float(np.linalg.norm(
                        [mr[a][k] - mr[b][k] for k in ("x", "y", "z")])))
    methods = sorted({r["method"] for r in rows})
    cohort_points.sort(key=lambda p: methods.index(p["method"]))
    gd = cohort_glass_figure(cohort_points)
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
        d=data, figs=figs, colours={m: _colour(m, i) for i, m in enumerate(methods)},
        symbols={m: marker_svg(*method_style(m, i)) for i, m in enumerate(methods)})
    write_text(out_html, html)
    return data
