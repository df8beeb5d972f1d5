"""The workflow's steps as plain functions (each Snakemake script calls exactly one).

Keeping the steps here, not in the scripts, makes them importable and unit-testable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
import pandas as pd

from . import CONVENTION, MNI_SPACE, __version__
from .errors import InputError
from .io import sha256sum, write_json, write_nifti, write_text

#: Column order of ``targets.tsv`` (later columns may be added, never removed or reordered).
TARGETS_COLUMNS: tuple[str, ...] = (
    "participant_id", "session_id", "method", "x", "y", "z", "r", "space", "snapped",
    "n_voxels", "distance_to_region_edge_mm", "strategy", "retained_volumes", "target_json",
)


def software_versions() -> dict[str, str]:
    """Versions of tmstarget and the libraries that shape its numbers."""
    import importlib.metadata as md

    out = {"tmstarget": __version__, "python": sys.version.split()[0]}
    for pkg in ("numpy", "scipy", "nibabel", "nilearn", "pandas", "pybids", "snakemake"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # pragma: no cover
            out[pkg] = "not installed"
    return out


def data_space(cfg: Mapping[str, Any]) -> str:
    """The template space of the BOLD data (the analysis space)."""
    return str(cfg.get("space") or MNI_SPACE)


def seed_centre_in_data_space(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """For a sphere seed: its centre in the data's space and as given (with its space)."""
    from .spaces import NLIN6, convert_points

    seed = cfg["seed"]
    if seed.get("kind", "sphere") != "sphere":
        return {}
    space = seed.get("space") or NLIN6
    c = convert_points([seed["center_mm"]], space, data_space(cfg))[0]
    return {"center_mm": [round(float(v), 3) for v in c], "space": data_space(cfg),
            "published": {"center_mm": [float(v) for v in seed["center_mm"]], "space": space}}


def search_in_data_space(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg["search"]`` with its sites converted into the data's template space.

    Built-in sites (``sites: null``) are the published Fox et al. 2012 sites, in
    MNI152NLin6Asym; user sites are in ``search.space`` (default MNI152NLin6Asym). The sites keep
    their names; ``sites_published`` records what was given and in which space.
    """
    from .regions import PUBLISHED_SITES
    from .spaces import NLIN6, check_space, convert_points

    search = dict(cfg["search"])
    if search.get("sites"):
        given = {k: list(v) for k, v in search["sites"].items()}
        space = check_space(search.get("space") or NLIN6, "search.space")
    else:
        given = {k: list(v.xyz) for k, v in PUBLISHED_SITES.items()}
        space = NLIN6
    names = list(given)
    pts = convert_points([given[k] for k in names], space, data_space(cfg))
    search["sites"] = {k: [round(float(v), 3) for v in p] for k, p in zip(names, pts, strict=True)}
    search["sites_published"] = {"space": space,
                                 "sites": {k: [float(v) for v in given[k]] for k in names}}
    return search


def denoise_step(run: Mapping[str, str], cfg: Mapping[str, Any], out_npz: str | Path) -> None:
    """Denoise one run and save it (``.npz``) with its QC and the inputs' SHA-256."""
    from .denoise import denoise_run, resolve_strategy, save_denoised

    from .inputcheck import read_json_object

    # an invalid confounds JSON is named as such (nilearn would blame the TSV)
    read_json_object(run["confounds_json"], "confounds sidecar")
    d = cfg["denoise"]
    strategy = resolve_strategy(d["strategy"], {k: d.get(k) for k in
                                                ("smoothing_fwhm", "high_pass", "low_pass")})
    rc = cfg.get("reproducibility") or {}
    from .task import find_events_file, task_regression_enabled

    events = None
    if run.get("participant") and run.get("task"):
        events = find_events_file(cfg.get("bids_dir"), {
            "subject": run["participant"], "session": run.get("session"), "task": run["task"],
            "acquisition": run.get("acq"), "run": run.get("run")})
    use_task = task_regression_enabled(d.get("task_regression"), run.get("task"), events)
    res = denoise_run(run["bold"], run["mask"], run["confounds"], run["bold_json"], strategy,
                      task_events=events if use_task else None,
                      fd_threshold=float(d["fd_threshold"]),
                      std_dvars_threshold=d.get("std_dvars_threshold"),
                      min_segment=int(d["min_segment"]), halves=bool(rc.get("enabled")),
                      gap_seconds=float(rc.get("gap_seconds") or 0.0))
    res.qc["inputs"] = [{"path": str(run[k]), "sha256": sha256sum(run[k])}
                        for k in ("bold", "mask", "confounds", "confounds_json", "bold_json")]
    save_denoised(res, out_npz)


def _unit_label(participant: str, session: str | None) -> str:
    return f"sub-{participant}" + (f" ses-{session}" if session else "")


def seedmap_step(npz_paths: Sequence[str | Path], participant: str, session: str | None,
                 cfg: Mapping[str, Any], out_map: str | Path, out_mask: str | Path,
                 out_seed_tsv: str | Path, out_qc: str | Path) -> None:
    """Combine a participant/session's runs, build the seed time series and correlation map.

    Writes the r map (NIfTI + JSON sidecar), the analysis mask, the seed time series (TSV)
    and a QC JSON used by the target step.
    """
    from .denoise import load_denoised
    from .seedmap import combine_runs, correlation_map, seed_timeseries, seed_weights, to_volume

    runs = [load_denoised(p) for p in npz_paths]
    per_run = [dict(r.qc) for r in runs]
    n_total = sum(int(r.data.shape[0]) for r in runs)
    min_vols = int(cfg["denoise"]["min_volumes"])
    if n_total < min_vols:
        detail = "; ".join(
            f"{Path(q['inputs'][0]['path']).name}: {q['n_retained']} of {q['n_volumes']} kept "
            f"({q['n_censored']} censored for motion, {q['n_non_steady_state']} non-steady-state)"
            for q in per_run)
        raise InputError(
            ", ".join(Path(q["inputs"][0]["path"]).name for q in per_run),
            f"{_unit_label(participant, session)} has only {n_total} volumes left after "
            f"scrubbing, fewer than the minimum of {min_vols} ({detail}).",
            "This participant has too much motion or too little data for a reliable target: "
            "exclude it (exclude_participants in the config), or, knowingly, lower "
            "denoise.min_volumes or raise denoise.fd_threshold.")
    combined = combine_runs(runs, [q["inputs"][0]["path"] for q in per_run])
    weights, seed_desc = seed_weights(cfg["seed"], combined.shape, combined.affine,
                                      data_space(cfg))
    seed_name = str(cfg["seed"].get("file") or "sgACC seed sphere")
    ts, n_seed = seed_timeseries(combined, weights, seed_name)
    r = correlation_map(combined.data, ts)
    hdr = nb.Nifti1Header()
    hdr.set_xyzt_units("mm")
    rimg = nb.Nifti1Image(to_volume(r.astype(np.float32), combined), combined.affine, hdr)
    rimg.set_qform(combined.affine, 1)
    rimg.set_sform(combined.affine, 4)  # 4 = MNI152 (template) space
    write_nifti(rimg, out_map)
    mimg = nb.Nifti1Image(combined.mask().astype(np.uint8), combined.affine, hdr)
    mimg.set_qform(combined.affine, 1)
    mimg.set_sform(combined.affine, 4)
    write_nifti(mimg, out_mask)
    tr = float(runs[0].tr)
    seed_df = pd.DataFrame({"seed": ts})
    write_text(out_seed_tsv, seed_df.to_csv(sep="\t", index=False, float_format="%.6g"))
    strategy = per_run[0]["strategy"]
    sidecar = {
        "Description": "Pearson correlation (r) of each voxel's denoised time series with the "
                       "seed time series (runs denoised separately, z-scored, concatenated).",
        "Space": data_space(cfg),
        "Units": "r (Pearson correlation, unitless)",
        "Seed": {"description": seed_desc, "n_voxels": n_seed, "config": dict(cfg["seed"]),
                 **seed_centre_in_data_space(cfg)},
        "Denoising": strategy,
        "RetainedVolumes": n_total,
        "RepetitionTime": tr,
        "Sources": [q["inputs"][0]["path"] for q in per_run],
        "SoftwareVersions": software_versions(),
    }
    write_json(str(out_map).replace(".nii.gz", ".json"), sidecar)
    write_json(out_qc, {
        "participant": participant, "session": session, "seed": sidecar["Seed"],
        "retained_volumes": n_total, "retained_seconds": n_total * tr, "repetition_time": tr,
        "runs": per_run, "strategy": strategy,
    })


def target_step(map_path: str | Path, mask_path: str | Path, qc_path: str | Path,
                participant: str, session: str | None, cfg: Mapping[str, Any],
                out_json: str | Path, out_region: str | Path, output_root: str | Path,
                npz_paths: Sequence[str | Path] = (), group_map: str | Path | None = None,
                out_seedmap: str | Path | None = None,
                gm_probseg: str | Path | None = None,
                anat: Mapping[str, str | Path] | None = None) -> dict:
    """Pick the targets on a seed map and write the target JSON and search-region mask.

    ``snt`` and ``seedmap`` (:mod:`tmstarget.datamethods`) also read the denoised runs
    (``npz_paths``); ``seedmap`` writes its own correlation map (``out_seedmap``). With the
    participant's anatomy (``anat``: ``t1w``, ``mask``, ``xfm_mni_to_t1w_points``), search-region
    voxels deeper than ``native.max_depth_mm`` below the scalp are removed before choosing
    (:func:`tmstarget.greymatter.depth_mask`); the native step still checks the coil's depth.
    """
    from .datamethods import DATA_METHODS
    from .target import TargetFinder, load_search_region

    rimg = nb.load(map_path)
    rmap = np.asarray(rimg.dataobj, dtype=np.float64)
    brain = np.asarray(nb.load(mask_path).dataobj) > 0
    search = search_in_data_space(cfg)
    region, region_desc = load_search_region(search, brain, rimg.affine,
                                             gm_probseg=gm_probseg, data_space=data_space(cfg))
    depth_info = None
    if anat:
        from .greymatter import depth_mask
        from .native import build_head_model, load_point_transform

        model = build_head_model(anat["t1w"], anat["mask"])
        shallow, depth_info = depth_mask(region, rimg.affine,
                                         load_point_transform(anat["xfm_mni_to_t1w_points"]),
                                         model, float(cfg["native"]["max_depth_mm"]))
        if not shallow.any():
            raise InputError(anat["t1w"], f"no search-region voxel lies within "
                             f"{cfg['native']['max_depth_mm']} mm of this participant's scalp "
                             f"({depth_info['n_too_deep']} too deep, "
                             f"{depth_info['n_outside_head']} outside the head).",
                             "Check the T1w and its transform (a failed registration?), or, "
                             "knowingly, raise native.max_depth_mm.")
        region_desc += (f"; without the {depth_info['n_region'] - depth_info['n_kept']} voxels "
                        f"deeper than {cfg['native']['max_depth_mm']:g} mm below this "
                        "participant's scalp")
        region = shallow
    t = cfg["target"]
    finder = TargetFinder(region, rimg.affine)
    map_methods = [m for m in t["methods"] if m not in DATA_METHODS]
    found = finder.find(rmap, methods=map_methods,
                        cluster_percent=float(t["cluster_percent"]),
                        weighted_n_voxels=int(t["weighted_n_voxels"])) if map_methods else {}
    extra, extra_info = data_method_targets(npz_paths, cfg, region, finder, rmap, group_map,
                                            out_seedmap, rimg.affine)
    targets = {m: (found.get(m) or extra[m]) for m in t["methods"]}
    hdr = nb.Nifti1Header()
    hdr.set_xyzt_units("mm")
    reg_img = nb.Nifti1Image(region.astype(np.uint8), rimg.affine, hdr)
    reg_img.set_qform(rimg.affine, 1)
    reg_img.set_sform(rimg.affine, 4)
    write_nifti(reg_img, out_region)
    qc = json.loads(Path(qc_path).read_text())
    map_sha = sha256sum(map_path)
    root = Path(output_root)
    rel = lambda p: str(Path(p).resolve().relative_to(root.resolve()))  # noqa: E731
    warnings = []
    for name, tg in targets.items():
        if not tg.ok:
            warnings.append(f"{name}: NO TARGET ({tg.status}): {tg.description}. The "
                            "coordinate recorded is for inspection only and is never exported.")
            continue
        if tg.r >= 0:
            warnings.append(f"{name}: no anticorrelation with the seed in the search region "
                            f"(r = {tg.r:.3f} ≥ 0); the target is not meaningful.")
        if tg.snapped:
            warnings.append(f"{name}: the centroid fell outside the search region and was moved "
                            f"{tg.snap_distance_mm:.1f} mm to the nearest search-region voxel.")
        if tg.distance_to_region_edge_mm <= float(np.max(np.abs(rimg.affine[:3, :3]))) + 1e-6:
            warnings.append(f"{name}: the target is at the edge of the search region; the best "
                            f"spot may lie outside it.")
    out = {
        "participant_id": f"sub-{participant}",
        "session_id": f"ses-{session}" if session else None,
        "space": data_space(cfg),
        "convention": CONVENTION,
        "reference_image": {"path": rel(map_path), "sha256": map_sha},
        "targets": {
            name: {**tg.to_dict(), "space": data_space(cfg), "convention": CONVENTION,
                   "reference_image_sha256": map_sha}
            for name, tg in targets.items()
        },
        "search_region": {"description": region_desc, "n_voxels": int(region.sum()),
                          "mask": rel(out_region), "config": search},
        **({"data_methods": extra_info} if extra_info else {}),
        **({"depth_restriction": depth_info} if depth_info else {}),
        "seed": qc["seed"],
        "denoising": {
            "strategy": qc["strategy"],
            "fd_threshold": cfg["denoise"]["fd_threshold"],
            "retained_volumes": qc["retained_volumes"],
            "retained_seconds": qc["retained_seconds"],
            "runs": [{k: q.get(k) for k in ("n_volumes", "n_non_steady_state", "n_censored",
                                             "n_retained", "retained_seconds", "fd_mean",
                                             "fd_max", "n_constant_voxels_dropped",
                                             "confound_columns", "n_censored_motion",
                                             "n_censored_short_segment", "censored",
                                             "task_regression")}
                     | {"bold": q["inputs"][0]["path"]} for q in qc["runs"]],
        },
        "retained_volumes": qc["retained_volumes"],
        "inputs": [i for q in qc["runs"] for i in q["inputs"]],
        "warnings": warnings,
        "software": software_versions(),
        "research_use_only": "Research use only; not a medical device. See SAFETY.md.",
    }
    write_json(out_json, out)
    for name, tg in targets.items():
        print(f"[tmstarget] {_unit_label(participant, session)}: {name} target "
              f"({tg.x:.1f}, {tg.y:.1f}, {tg.z:.1f}) mm {data_space(cfg)}, r = {tg.r:.3f}"
              + (" (snapped)" if tg.snapped else ""), flush=True)
    return out


def data_method_targets(npz_paths: Sequence[str | Path], cfg: Mapping[str, Any],
                        region: np.ndarray, finder: Any, rmap: np.ndarray,
                        group_map: str | Path | None, out_seedmap: str | Path | None,
                        affine: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``snt`` and ``seedmap`` targets of a unit (empty when neither is asked for)."""
    from .datamethods import needs_data, seedmap_map, seedmap_seed, seedmap_target, snt_run
    from .denoise import load_denoised
    from .seedmap import combine_runs, seed_weights, to_volume
    from .snt import snt_target

    methods = list(cfg["target"]["methods"])
    if not needs_data(methods):
        return {}, {}
    if not npz_paths:
        raise InputError(None, f"target method(s) {[m for m in methods if m in ('snt', 'seedmap')]}"
                         " need the denoised time series.", "Run through the tmstarget "
                         "command or the workflow, which gives them to the target step.")
    runs = [load_denoised(p) for p in npz_paths]
    combined = combine_runs(runs, [str(p) for p in npz_paths])
    out: dict[str, Any] = {}
    info: dict[str, Any] = {}
    if "snt" in methods:
        w, _ = seed_weights(cfg["seed"], combined.shape, combined.affine, data_space(cfg))
        res, _ = snt_run(combined, region, w, cfg)
        out["snt"] = snt_target(res, finder, rmap)
        info["snt"] = {"params": res.params.to_dict(),
                       "n_region_clusters": len(res.region_clusters),
                       "n_sgacc_clusters": len(res.sgacc_clusters),
                       "n_eligible": int(np.sum(res.eligible)),
                       "r_is": "the sgACC seed map's value at the target voxel"}
    if "seedmap" in methods:
        seed = seedmap_seed(cfg, combined, region, data_space(cfg), group_map)
        ts, r, sinfo = seedmap_map(combined, seed)
        smap = to_volume(r.astype(np.float32), combined, fill=np.nan)
        out["seedmap"] = seedmap_target(np.asarray(smap, float), finder)
        info["seedmap"] = {**seed.source, "description": seed.description, **sinfo,
                           "r_is": "the seedmap seed's correlation map at the target voxel"}
        if out_seedmap is not None:
            hdr = nb.Nifti1Header()
            hdr.set_xyzt_units("mm")
            img = nb.Nifti1Image(np.nan_to_num(smap).astype(np.float32), affine, hdr)
            img.set_qform(affine, 1)
            img.set_sform(affine, 4)
            write_nifti(img, out_seedmap)
            write_json(str(out_seedmap).replace(".nii.gz", ".json"), {
                "Description": "Pearson correlation (r) of each voxel with the seedmap seed: the "
                               "group map's weighted average of the denoised data (Fox et al. "
                               "2013).",
                "Space": data_space(cfg), "Units": "r (Pearson correlation, unitless)",
                "GroupMap": seed.source, "SeedDescription": seed.description, **sinfo,
                "SoftwareVersions": software_versions()})
            info["seedmap"]["map"] = str(out_seedmap)
    return out, info


def data_method_reproducibility(method: str, combined: Any, parts: Sequence[Any],
                                region: np.ndarray, full: Any, counts: np.ndarray,
                                cfg: Mapping[str, Any], finder: Any,
                                target_kw: Mapping[str, Any], group_map: str | Path | None,
                                sgacc_map_r: float | None) -> tuple[dict, dict, list[dict]]:
    """Split-half and bootstrap of ``snt`` or ``seedmap`` (same record layout as the others)."""
    from .datamethods import seedmap_seed, snt_run
    from .reproducibility import bootstrap, region_data, split_half
    from .seedmap import seed_weights
    from .snt import snt_bootstrap

    pf = np.array([full.x, full.y, full.z], float)
    if method == "seedmap":
        def rd_of(comb: Any) -> Any:
            seed = seedmap_seed(cfg, comb, region, data_space(cfg), group_map)
            from .groupmap import seedmap_timeseries

            ts, _ = seedmap_timeseries(comb.data, seed.weights, seed.exclude)
            return region_data(comb, ts, region)

        as_classic = {"classic": full}
        h = split_half(rd_of(parts[0]), rd_of(parts[1]), as_classic, target_kw)["classic"]
        cloud, b = bootstrap(rd_of(combined), counts, as_classic, target_kw)
        for row in cloud:
            row["method"] = "seedmap"
        return h, b["classic"], cloud
    # snt: the whole clustering on each half; the bootstrap re-scores the full-data clusters
    w, _ = seed_weights(cfg["seed"], combined.shape, combined.affine, data_space(cfg))
    res_full, _ = snt_run(combined, region, w, cfg)
    ends = []
    for part in parts:
        wp, _ = seed_weights(cfg["seed"], part.shape, part.affine, data_space(cfg))
        res, _ = snt_run(part, region, wp, cfg)
        from .snt import snt_target

        t = snt_target(res, finder)
        ends.append(({"x": t.x, "y": t.y, "z": t.z, "r": t.r} if t.ok else
                     {"x": None, "y": None, "z": None, "r": None, "status": t.status}))
    pa = None if ends[0]["x"] is None else np.array([ends[0][k] for k in "xyz"], float)
    pb = None if ends[1]["x"] is None else np.array([ends[1][k] for k in "xyz"], float)
    h = {"half_a": ends[0], "half_b": ends[1],
         "distance_mm": None if pa is None or pb is None else float(np.linalg.norm(pa - pb)),
         "half_a_to_full_mm": None if pa is None else float(np.linalg.norm(pa - pf)),
         "half_b_to_full_mm": None if pb is None else float(np.linalg.norm(pb - pf)),
         "map_r": sgacc_map_r,
         "note": "each half clustered on its own; a half with no eligible cluster has no target"}
    sb = snt_bootstrap(res_full, counts)
    pts = sb["targets_mm"]
    ok = ~np.isnan(pts[:, 0])
    cloud = [{"resample": i, "method": "snt", "x": float(p[0]), "y": float(p[1]),
              "z": float(p[2]), "r": float("nan")} for i, p in enumerate(pts) if ok[i]]
    b = {"n_resamples": int(ok.sum()),
         "centroid": ({k: float(v) for k, v in zip("xyz", pts[ok].mean(axis=0), strict=True)}
                      if ok.any() else None),
         "radius95_mm": sb["radius95_mm"], "fraction_within_5mm": sb["fraction_within_5mm"],
         "n_no_target": sb["n_no_target"],
         "note": "the full-data clusters re-scored on each resample (clusters fixed)"}
    return h, b, cloud


def group_map_step(rmaps: Mapping[str, str | Path], participant: str, cfg: Mapping[str, Any],
                   out_map: str | Path) -> None:
    """The leave-one-out group map for one participant (``target.seedmap.source: cohort``).

    ``rmaps``: unit prefix -> that unit's sgACC map; every unit of ``participant`` is left out.
    """
    from .groupmap import leave_one_out_group_map, write_group_map

    keyed = {}
    sources = {}
    affine = None
    me = str(participant).removeprefix("sub-")
    for prefix, path in rmaps.items():
        pid = Path(str(prefix)).name.split("_")[0].removeprefix("sub-")
        if pid == me:  # never read (it may not exist yet): it must not contribute anyway
            continue
        key = (pid, prefix)
        img = nb.load(path)
        affine = img.affine if affine is None else affine
        keyed[key] = np.asarray(img.dataobj, np.float64)
        sources[key] = path
    sm = cfg["target"].get("seedmap") or {}
    group, used = leave_one_out_group_map(keyed, participant,
                                          int(sm.get("min_participants", 2)))
    write_group_map(np.nan_to_num(group), affine, out_map, participant, used, sources,
                    data_space(cfg))


def aggregate_step(target_jsons: Sequence[str | Path], skipped: Sequence[Mapping[str, Any]],
                   cfg: Mapping[str, Any], output_root: str | Path,
                   repro_jsons: Sequence[str | Path] = ()) -> None:
    """Write the cohort files at the output root.

    ``targets.tsv``, ``skipped.tsv``, ``dataset_description.json``, ``tmstarget_config.yaml``
    and, when reproducibility results are given, ``reproducibility.tsv`` and
    ``reproducibility_summary.json`` (and the reliability flag appended to ``targets.tsv``).
    """
    import yaml

    from .reproducibility import cohort_summary

    root = Path(output_root)
    rows = []
    for p in target_jsons:
        d = json.loads(Path(p).read_text())
        for name, tg in d["targets"].items():
            rows.append({
                "participant_id": d["participant_id"], "session_id": d["session_id"] or "n/a",
                "method": name, "x": round(tg["x"], 2), "y": round(tg["y"], 2),
                "z": round(tg["z"], 2), "r": round(tg["r"], 4), "space": d["space"],
                "snapped": str(tg["snapped"]).lower(), "n_voxels": tg["n_voxels"],
                "distance_to_region_edge_mm": round(tg["distance_to_region_edge_mm"], 2),
                "strategy": d["denoising"]["strategy"]["name"],
                "retained_volumes": d["retained_volumes"],
                "target_json": str(Path(p).resolve().relative_to(root.resolve())),
            })
    columns = list(TARGETS_COLUMNS)
    if repro_jsons:
        rrows = []
        from .verdict import unit_verdict

        for p in repro_jsons:
            d = json.loads(Path(p).read_text())
            own = d.get("verdict") or unit_verdict(d, {}, cfg)
            for m, sh in d["split_half"]["methods"].items():
                bs = d["bootstrap"]["methods"][m]
                ft = d["full_targets"][m]
                rrows.append({
                    "participant_id": d["participant_id"], "session_id": d["session_id"] or "n/a",
                    "method": m, "x": ft["x"], "y": ft["y"], "z": ft["z"],
                    "split_half_distance_mm": sh["distance_mm"], "split_half_map_r": sh["map_r"],
                    "half_a_to_full_mm": sh["half_a_to_full_mm"],
                    "half_b_to_full_mm": sh["half_b_to_full_mm"],
                    "bootstrap_radius95_mm": bs["radius95_mm"],
                    "bootstrap_fraction_within_5mm": bs["fraction_within_5mm"],
                    "split": d["split_half"]["split"],
                    "own_reliability": own["methods"][m]["verdict"],
                    "own_reason": "; ".join(own["methods"][m]["reasons"]),
                })
        rc = cfg["reproducibility"]
        flagged, summary = cohort_summary(rrows, float(rc["max_split_half_ratio"]),
                                          float(rc["max_bootstrap_radius_mm"]))
        # reliability = the participant's own verdict; the cohort comparison goes to its own
        # columns (it changes when participants are added, the verdict does not)
        for r in flagged:
            r["cohort_reliability"], r["cohort_reliability_reason"] = (
                r["reliability"], r["reliability_reason"])
            r["reliability"], r["reliability_reason"] = r["own_reliability"], r["own_reason"]
        rdf = pd.DataFrame(flagged).reindex(columns=list(REPRO_COLUMNS))
        rdf = rdf.sort_values(["participant_id", "session_id", "method"], kind="stable")
        write_text(root / "reproducibility.tsv",
                   rdf.round(3).to_csv(sep="\t", index=False, na_rep="n/a"))
        write_json(root / "reproducibility_summary.json", {
            "description": "Cohort comparison: within-subject split-half target distances "
                           "against between-subject target distances (MNI152NLin2009cAsym mm), "
                           "per method, over the participants in this output folder. It sets "
                           "cohort_reliability only; each participant's verdict (reliability) "
                           "comes from that participant's own data.",
            "participants": sorted({r["participant_id"] for r in flagged}),
            "n_participants": len({r["participant_id"] for r in flagged}),
            "n_cohort_unreliable": int(sum(r["cohort_reliability"] == "unreliable"
                                           for r in flagged)),
            "max_split_half_ratio": rc["max_split_half_ratio"],
            "max_bootstrap_radius_mm": rc["max_bootstrap_radius_mm"],
            "methods": summary,
            "n_unreliable": int(sum(r["reliability"] == "unreliable" for r in flagged)),
        })
        flag = {(r["participant_id"], r["session_id"], r["method"]):
                (r["reliability"], r["reliability_reason"], r["cohort_reliability"],
                 r["cohort_reliability_reason"]) for r in flagged}
        for row in rows:
            (row["reliability"], row["reliability_reason"], row["cohort_reliability"],
             row["cohort_reliability_reason"]) = flag.get(
                (row["participant_id"], row["session_id"], row["method"]), ("n/a", "", "n/a", ""))
        columns += ["reliability", "reliability_reason", "cohort_reliability",
                    "cohort_reliability_reason"]
    df = pd.DataFrame(rows, columns=columns)
    df = df.sort_values(["participant_id", "session_id", "method"], kind="stable")
    write_text(root / "targets.tsv", df.to_csv(sep="\t", index=False, na_rep="n/a"))
    sk = pd.DataFrame(list(skipped), columns=["participant_id", "session_id", "run", "reason"])
    write_text(root / "skipped.tsv", sk.to_csv(sep="\t", index=False, na_rep="n/a"))
    write_json(root / "dataset_description.json", {
        "Name": "tmstarget: sgACC-anticorrelation TMS targets",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "tmstarget", "Version": __version__,
                         "Description": "Personalized left-DLPFC TMS targets from resting-state "
                                        "fMRI (research use only)."}],
        "SourceDatasets": [{"URL": Path(str(cfg["fmriprep_dir"])).resolve().as_uri()}],
    })
    write_text(root / "tmstarget_config.yaml",
               "# The configuration this output was made with (defaults filled in).\n"
               + yaml.safe_dump(json.loads(json.dumps(dict(cfg))), sort_keys=False))


#: Column order of ``reproducibility.tsv`` (columns are only ever appended).
REPRO_COLUMNS: tuple[str, ...] = (
    "participant_id", "session_id", "method", "x", "y", "z", "split_half_distance_mm",
    "split_half_map_r", "half_a_to_full_mm", "half_b_to_full_mm", "bootstrap_radius95_mm",
    "bootstrap_fraction_within_5mm", "reliability", "reliability_reason", "split",
    "cohort_reliability", "cohort_reliability_reason",
)


def reproducibility_step(npz_paths: Sequence[str | Path], target_json: str | Path,
                         map_path: str | Path, mask_path: str | Path, region_path: str | Path,
                         cfg: Mapping[str, Any], out_json: str | Path,
                         out_cloud: str | Path, group_map: str | Path | None = None,
                         qc_path: str | Path | None = None) -> dict:
    """Split-half targets, bootstrap cloud and reference-site comparison for one unit.

    Also the participant's own verdict per method and the data-quality warnings
    (:func:`tmstarget.verdict.unit_verdict`; ``verdict`` and ``warnings`` in the JSON), from
    this participant's numbers and the configuration only.
    """
    from .datamethods import DATA_METHODS
    from .denoise import load_denoised
    from .reproducibility import (bootstrap, circular_block_bootstrap, reference_sites,
                                  region_data, split_half, split_indices)
    from .seedmap import combine_runs, seed_timeseries, seed_weights
    from .target import Target

    runs = [load_denoised(p) for p in npz_paths]
    combined = combine_runs(runs, [str(p) for p in npz_paths])
    weights, _ = seed_weights(cfg["seed"], combined.shape, combined.affine, data_space(cfg))
    ts, _ = seed_timeseries(combined, weights, str(cfg["seed"].get("file") or "sgACC seed"))
    region = np.asarray(nb.load(region_path).dataobj) > 0
    tj = json.loads(Path(target_json).read_text())
    fields = set(Target.__dataclass_fields__)
    full = {m: Target(**{k: (tuple(v) if isinstance(v, list) else v)
                         for k, v in t.items() if k in fields})
            for m, t in tj["targets"].items()}
    rc = cfg["reproducibility"]
    tcfg = cfg["target"]
    target_kw = {"cluster_percent": float(tcfg["cluster_percent"]),
                 "weighted_n_voxels": int(tcfg["weighted_n_voxels"])}
    tr = float(runs[0].tr)
    rd = region_data(combined, ts, region)
    seed_name = str(cfg["seed"].get("file") or "sgACC seed")
    names = [str(p) for p in npz_paths]
    if rc["split"] == "run" and len(runs) >= 2:
        # whole runs in each half: every run is cleaned on its own, so the halves are independent
        a, b, split_desc = split_indices(combined.run_lengths, "run")
        k = next(i for i in range(1, len(runs) + 1)
                 if sum(combined.run_lengths[:i]) == a.size)
        parts = (combine_runs(runs[:k], names[:k]), combine_runs(runs[k:], names[k:]))
    else:
        parts = (combine_runs(runs, names, part="half_a"), combine_runs(runs, names, part="half_b"))
        vols = [q.qc.get("halves", {}).get("volumes", [0, 0]) for q in runs]
        gap = float(rc["gap_seconds"])
        split_desc = (f"first vs second half of each run in time ({sum(v[0] for v in vols)} and "
                      f"{sum(v[1] for v in vols)} volumes, gap {gap:g} s), each half cleaned "
                      "as its own problem" + ("" if rc["split"] == "time" else
                                              " (run split needs >= 2 runs; split in time "
                                              "instead)"))
    rds = []
    for part in parts:
        pts, _ = seed_timeseries(part, seed_weights(cfg["seed"], part.shape, part.affine,
                                                    data_space(cfg))[0], seed_name)
        rds.append(region_data(part, pts, region))
    full_map = {m: t for m, t in full.items() if m not in DATA_METHODS}
    halves = split_half(rds[0], rds[1], full_map, target_kw) if full_map else {}
    a_n, b_n = (int(p.data.shape[0]) for p in parts)
    block = max(1, int(round(float(rc["bootstrap_block_seconds"]) / tr)))
    counts = circular_block_bootstrap(combined.run_lengths, block,
                                      int(rc["bootstrap_resamples"]), int(rc["bootstrap_seed"]))
    cloud, boot = bootstrap(rd, counts, full_map, target_kw) if full_map else ([], {})
    map_r = next(iter(halves.values()))["map_r"] if halves else None
    for m in [m for m in full if m in DATA_METHODS]:
        h, b, c = data_method_reproducibility(m, combined, parts, region, full[m], counts,
                                              cfg, rd.finder, target_kw, group_map, map_r)
        halves[m], boot[m] = h, b
        cloud += c
    rimg = nb.load(map_path)
    brain = np.asarray(nb.load(mask_path).dataobj) > 0
    refs = reference_sites(np.asarray(rimg.dataobj, float), brain, rimg.affine, full,
                           search_in_data_space(cfg)["sites"])
    cdf = pd.DataFrame(cloud, columns=["resample", "method", "x", "y", "z", "r"])
    write_text(out_cloud, cdf.to_csv(sep="\t", index=False, float_format="%.4f"))
    out = {
        "participant_id": tj["participant_id"], "session_id": tj["session_id"],
        "space": data_space(cfg), "convention": CONVENTION,
        "reference_image": tj["reference_image"],
        "split_half": {"split": split_desc, "volumes": [a_n, b_n],
                       "methods": halves},
        "bootstrap": {"block_volumes": block, "block_seconds": block * tr,
                      "n_resamples": int(rc["bootstrap_resamples"]),
                      "seed": int(rc["bootstrap_seed"]), "methods": boot,
                      "cloud": Path(out_cloud).name},
        "reference_sites": refs,
        "full_targets": {m: {"x": t.x, "y": t.y, "z": t.z, "r": t.r} for m, t in full.items()},
    }
    from .verdict import unit_verdict

    qc = json.loads(Path(qc_path).read_text()) if qc_path else {}
    out["verdict"] = unit_verdict(out, qc, cfg)
    out["warnings"] = list(out["verdict"]["warnings"])
    write_json(out_json, out)
    return out
