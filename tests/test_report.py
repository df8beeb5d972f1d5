"""Per-subject and cohort reports on small synthetic inputs (seeded, no pipeline run)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
pytest.importorskip("jinja2")

from tmstarget import report as R

HOSTILE = '<script>alert("x")</script>'
TARGET = (-40.0, 30.0, 40.0)  # left-only planted target (x < 0)


def _grid(vox: float = 4.0) -> tuple[tuple[int, int, int], np.ndarray]:
    shape = (int(180 / vox) + 1, int(216 / vox) + 1, int(180 / vox) + 1)
    aff = np.diag([vox, vox, vox, 1.0])
    aff[:3, 3] = (-90.0, -126.0, -72.0)
    return shape, aff


def _world(shape, aff) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return ijk @ aff[:3, :3].T + aff[:3, 3]


def _save(data, aff, path: Path) -> Path:
    img = nb.Nifti1Image(data, aff)
    img.set_qform(aff, 1)
    img.set_sform(aff, 4)
    nb.save(img, path)
    return path


def make_unit(root: Path, participant: str = "01", session: str | None = None,
              hostile: bool = False, native: bool = False) -> dict:
    """A unit's files, as the pipeline writes them, with a left-only planted target."""
    rng = np.random.default_rng(7)
    shape, aff = _grid()
    xyz = _world(shape, aff)
    brain = np.linalg.norm((xyz - [0, -18, 18]) / [70, 90, 70], axis=-1) < 1
    d = np.linalg.norm(xyz - TARGET, axis=-1)
    rmap = (0.05 * rng.standard_normal(shape) - 0.9 * np.exp(-(d / 8.0) ** 2)) * brain
    region = (np.linalg.norm(xyz - [-40, 30, 40], axis=-1) < 20) & brain & (xyz[..., 0] < 0)
    pid = f"sub-{participant}" if not hostile else f"sub-{HOSTILE}"
    sid = f"ses-{session}" if session else None
    folder = root / f"sub-{participant}" / (sid or "") / "func"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"sub-{participant}" + (f"_{sid}" if sid else "") + "_task-rest"
    pre = folder / stem
    rpath = _save(rmap.astype(np.float32), aff,
                  Path(f"{pre}_space-MNI152NLin2009cAsym_desc-sgacc_stat-r_boldmap.nii.gz"))
    gpath = _save(region.astype(np.uint8), aff,
                  Path(f"{pre}_space-MNI152NLin2009cAsym_desc-searchregion_mask.nii.gz"))
    n = 150
    fd = np.abs(0.15 + 0.1 * rng.standard_normal(n))
    fd[[20, 21, 90]] = 1.2
    bold = (f"/data/{HOSTILE}/bold.nii.gz" if hostile else "/data/sub-01_bold.nii.gz")
    run = {"n_volumes": n, "n_non_steady_state": 2, "n_censored": 5, "n_retained": n - 7,
           "retained_seconds": (n - 7) * 2.0, "fd": fd.round(4).tolist(),
           "fd_mean": float(fd.mean()), "fd_max": float(fd.max()), "fd_threshold": 0.5,
           "censored": [0, 1, 19, 20, 21, 22, 90],
           "inputs": [{"path": bold, "sha256": "a" * 64}]}
    strategy = {"name": "fox2012", "reference": "Fox et al. 2012"}
    qc = {"participant": participant, "session": session,
          "seed": {"description": "sphere centre (6, 16, -10) mm", "n_voxels": 67,
                   "config": {"kind": "sphere", "center_mm": [6, 16, -10], "radius_mm": 10}},
          "retained_volumes": n - 7, "retained_seconds": (n - 7) * 2.0,
          "repetition_time": 2.0, "runs": [run], "strategy": strategy}
    work = root / "work" / f"sub-{participant}" / (sid or "") / "func"
    work.mkdir(parents=True, exist_ok=True)
    qc_path = work / f"{stem}_desc-seedmap_qc.json"
    qc_path.write_text(json.dumps(qc))
    seed_tsv = Path(f"{pre}_desc-sgacc_timeseries.tsv")
    seed_tsv.write_text("seed\n" + "\n".join(f"{v:.4f}" for v in rng.standard_normal(n - 7)))
    targets = {}
    for i, m in enumerate(("classic", "cluster", "weighted")):
        targets[m] = {"method": m, "x": TARGET[0] + 0.123456 * i, "y": TARGET[1] - 0.5 * i,
                      "z": TARGET[2] + 0.25 * i, "r": -0.87654, "n_voxels": 1 + 10 * i,
                      "snapped": False, "distance_to_region_edge_mm": 12.0,
                      "description": f"{m} method"}
    tj = {"participant_id": pid, "session_id": sid, "space": "MNI152NLin2009cAsym",
          "reference_image": {"path": str(rpath.relative_to(root)), "sha256": "b" * 64},
          "targets": targets,
          "search_region": {"description": "left DLPFC", "n_voxels": int(region.sum()),
                            "mask": str(gpath.relative_to(root))},
          "seed": qc["seed"], "inputs": run["inputs"],
          "warnings": [f"{HOSTILE} edge" if hostile else "classic: the target is at the edge "
                       "of the search region; the best spot may lie outside it."],
          "software": {"tmstarget": "test"}}
    tpath = Path(f"{pre}_space-MNI152NLin2009cAsym_desc-target_coords.json")
    tpath.write_text(json.dumps(tj))
    repro = {"split_half": {"split": "first vs second half", "volumes": [70, 70], "methods": {
        m: {"half_a": {"x": t["x"] + 1, "y": t["y"], "z": t["z"]},
            "half_b": {"x": t["x"] - 1, "y": t["y"], "z": t["z"]},
            "distance_mm": 2.0, "map_r": 0.7} for m, t in targets.items()}},
        "bootstrap": {"n_resamples": 20, "block_seconds": 40.0, "methods": {
            # weighted: 12 mm > the 10 mm default limit, so its own verdict is unreliable
            m: {"radius95_mm": 12.0 if m == "weighted" else 3.0, "fraction_within_5mm": 0.95}
            for m in targets}},
        "reference_sites": {"F3": {"x": -37.0, "y": 26.0, "z": 49.0, "r": -0.2,
                                   "distance_mm": {m: 10.0 for m in targets}}}}
    rpj = Path(f"{pre}_space-MNI152NLin2009cAsym_desc-reproducibility_stats.json")
    rpj.write_text(json.dumps(repro))
    cloud = Path(f"{pre}_space-MNI152NLin2009cAsym_desc-bootstrap_targets.tsv")
    rows = ["resample\tmethod\tx\ty\tz\tr"]
    for k in range(20):
        for m, t in targets.items():
            p = np.array([t["x"], t["y"], t["z"]]) + rng.normal(0, 1.5, 3)
            rows.append(f"{k}\t{m}\t{p[0]:.3f}\t{p[1]:.3f}\t{p[2]:.3f}\t-0.8")
    cloud.write_text("\n".join(rows) + "\n")
    ttsv = root / "targets.tsv"
    lines = [] if ttsv.exists() else [
        "participant_id\tsession_id\tmethod\treliability\treliability_reason"]
    for m in targets:
        # a cohort file that contradicts the participant's own verdict: the report must not
        # read it (classic marked unreliable here, reliable by its own numbers)
        rel, why = (("unreliable", f"bootstrap radius {HOSTILE}") if m == "classic"
                    else ("reliable", ""))
        lines.append(f"{pid}\t{sid or 'n/a'}\t{m}\t{rel}\t{why}")
    with ttsv.open("a") as fh:
        fh.write("\n".join(lines) + "\n")
    native_path = None
    if native:
        anat = root / f"sub-{participant}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        t1 = _save((brain * 100).astype(np.float32), aff, anat / "T1w.nii.gz")
        native_path = anat / f"sub-{participant}_task-rest_space-T1w_desc-target_coords.json"
        native_path.write_text(json.dumps({
            "space": "T1w", "primary_method": "cluster",
            "t1w": {"path": str(t1), "sha256": "c" * 64},
            "targets": {m: {"mni_mm": [t["x"], t["y"], t["z"]],
                            "t1w_mm": [t["x"], t["y"], t["z"]],
                            "entry_along_normal_mm": [-60.0, 35.0, 55.0],
                            "normal_out": [-0.7, 0.3, 0.6], "scalp_to_target_mm": 25.0,
                            "scalp_to_cortex_mm": 14.5} for m, t in targets.items()},
            "coil": {"method": "cluster", "entry_mm": [-60.0, 35.0, 55.0],
                     "normal_out": [-0.7, 0.3, 0.6], "handle": [-0.7, -0.7, 0.0]},
            "scalp_to_cortex_mm": {"target": 14.5, "hotspot": 16.0},
            "depth_advice": "ADVICE: about 4 percentage points lower.",
            "exports": [{"file": "sub-01/anat/x_brainsight.txt", "format": "Brainsight",
                         "space": "T1w", "how_to_load": f"Targets > Import {HOSTILE}"}],
            "scalp_rules": _scalp_rules_record(root, anat),
            "laterality_check": {"jacobian_determinant": 1.0,
                                 "brain_centre_t1w_mm": [-2.0, -18.0, 18.0],
                                 "target_x_minus_brain_centre_x_mm": -38.0,
                                 "hemisphere_mni": "left", "passed": True},
        }))
    out_base = root / f"sub-{participant}" / (sid or "") / (
        f"sub-{participant}" + (f"_{sid}" if sid else ""))
    return {"target_json": tpath, "rmap_path": rpath, "region_path": gpath, "qc_path": qc_path,
            "seed_tsv": seed_tsv, "repro_json": rpj, "cloud_tsv": cloud, "targets_tsv": ttsv,
            "native_json": native_path, "output_root": root,
            "out_html": Path(f"{out_base}_report.html"),
            "out_json": Path(f"{out_base}_report.json")}


def _scalp_rules_record(root: Path, anat: Path) -> dict:
    """A native JSON 'scalp_rules' section with two real PNG figures."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figs = {}
    for key in ("scalp_model_figure", "landmarks_figure"):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [0, 1])
        path = anat / f"{key}.png"
        fig.savefig(path)
        plt.close(fig)
        figs[key] = {"file": str(path.relative_to(root)), "shows": f"{key} caption"}
    return {"measurements": {"head_circumference_mm": 583.0, "nasion_inion_mm": 355.0,
                             "tragus_tragus_mm": 359.0, "estimated_from_template": ["nasion"]},
            "landmarks_source": "template fiducials", "warnings": [f"nasion {HOSTILE}"],
            "rules": {"beam_f3": {"label": "Beam F3 (scalp rule)",
                                  "scalp_t1w_mm": [-50.0, 40.0, 60.0],
                                  "cortical_mni_mm": [-38.8, 39.4, 36.6],
                                  "scalp_to_cortex_mm": 15.75, "r": -0.31,
                                  "distance_to_connectivity_target_mm": 10.45},
                      "5cm": {"status": "not computed: no motor hotspot given"}},
            "files": {"figures": figs}}


def _render(unit: dict, cfg: dict | None = None) -> tuple[str, dict]:
    data = R.subject_report_step(cfg=cfg or {"fmriprep_dir": None, "seed": {"kind": "sphere"}},
                                 **unit)
    return unit["out_html"].read_text(), data


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    plain = make_unit(root, "01")
    hostile = make_unit(root, "02", session="1", hostile=True, native=True)
    sim = tmp_path_factory.mktemp("sim")
    (sim / "dataset_description.json").write_text(json.dumps(
        {"Name": "sample (SIMULATED BOLD)", "DatasetType": "derivative"}))
    out = {"root": root, "plain": plain, "hostile": hostile}
    out["plain_html"], out["plain_data"] = _render(plain, {"fmriprep_dir": str(sim)})
    out["hostile_html"], out["hostile_data"] = _render(hostile)
    out["cohort"] = root / "cohort_report.html"
    R.cohort_report_step([plain["out_json"], hostile["out_json"]], root, out["cohort"],
                         [plain["out_html"], hostile["out_html"]])
    return out


def _all_html(reports) -> list[str]:
    return [reports["plain_html"], reports["hostile_html"], reports["cohort"].read_text()]


def test_no_external_urls_and_self_contained(reports):
    for html in _all_html(reports):
        low = html.lower()
        for bad in ("http://", "https://", "//cdn", "file://", "@import", "<link"):
            assert bad not in low, bad
        for src in re.findall(r'\bsrc="([^"]*)"', html):
            assert src.startswith("data:image/png;base64,")
            assert b"http" not in base64.b64decode(src.split(",", 1)[1])  # no PNG metadata URL
        for href in re.findall(r'\bhref="([^"]*)"', html):
            assert ":" not in href and not href.startswith("/"), href  # relative links only


def test_hostile_labels_and_paths_are_escaped(reports):
    html = reports["hostile_html"]
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html
    cohort = reports["cohort"].read_text()
    assert cohort.lower().count("<script") == 1  # only the inline table-sorting script
    assert "&lt;script&gt;" in cohort


def test_printed_coordinates_equal_target_json(reports):
    for key in ("plain", "hostile"):
        html, data = reports[f"{key}_html"], reports[f"{key}_data"]
        tj = json.loads(reports[key]["target_json"].read_text())
        twin = json.loads(reports[key]["out_json"].read_text())
        for m, t in tj["targets"].items():
            row = re.search(rf'<tr[^>]*data-method="{m}">(.*?)</tr>', html, re.DOTALL).group(1)
            for ax in ("x", "y", "z"):
                cell = re.search(rf'coord-{ax}">([^<]*)<', row).group(1)
                assert cell == f"{t[ax]:.2f}", (m, ax, cell)
                assert twin["targets"][m][ax] == t[ax] == data["targets"][m][ax]


def test_sections_warnings_and_twin(reports):
    html, data = reports["plain_html"], reports["plain_data"]
    for section in ('id="warnings"', 'id="header"', 'id="quality"', 'id="seed"', 'id="map"',
                    'id="reproducibility"', 'id="references"', 'id="native"', 'id="config"'):
        assert section in html
    assert "Research use only" in html and "SIMULATED DATA" in html and data["simulated"]
    assert "native-space step not run" in html
    assert html.count("Neurological convention") >= 4  # every MNI image states orientation
    assert any("edge of the search region" in w for w in data["warnings"])
    assert any("weighted target is unreliable" in w and "12.0 mm exceeds 10 mm" in w
               for w in data["warnings"])
    assert data["data_quality"]["retained_volumes"] == 143
    assert data["reproducibility"]["methods"]["weighted"]["reliability"] == "unreliable"
    assert 'id="verdict-rule"' in html and "6.5 mm" in html  # the limits are stated
    # the verdict is the participant's own: the contradicting targets.tsv is not read
    assert data["reproducibility"]["methods"]["classic"]["reliability"] == "reliable"
    assert not any("classic target is unreliable" in w for w in data["warnings"])
    assert set(data["figures"]) >= {"fd", "seed_ts", "seed_loc", "map", "zoom", "glass", "cloud"}
    assert "a" * 64 in html  # input SHA-256 shown


def test_native_section_rendered_when_present(reports):
    html, data = reports["hostile_html"], reports["hostile_data"]
    assert data["native"]["available"] and "native" in data["figures"]
    assert "Depth adjustment advice" in html and "x_brainsight.txt" in html
    assert "cluster (primary)" in html


def test_scalp_rules_section_with_head_mask_figure(reports):
    html, data = reports["hostile_html"], reports["hostile_data"]
    assert {"native_scalp_model_figure", "native_landmarks_figure"} <= set(data["figures"])
    assert "Scalp model and scalp-rule targets" in html and "scalp_model_figure caption" in html
    assert "(-38.8, 39.4, 36.6)" in html and "not computed: no motor hotspot" in html
    assert "Estimated (no scalp in the image): nasion" in html
    assert HOSTILE not in html  # the warning text is escaped like everything else
    assert "Scalp model" not in reports["plain_html"]  # no native, no section


def test_cohort_links_all_reports_and_sorts(reports):
    html = reports["cohort"].read_text()
    links = set(re.findall(r'href="([^"]+)"', html))
    for key in ("plain", "hostile"):
        rel = reports[key]["out_html"].relative_to(reports["root"]).as_posix()
        assert rel in links
        assert (reports["root"] / rel).is_file()
    assert 'id="cohort-table"' in html and "addEventListener(\"click\"" in html


def _blue_columns(rgba: np.ndarray, bbox) -> np.ndarray:
    h = rgba.shape[0]
    x0, x1 = int(bbox.x0), int(bbox.x1)
    y0, y1 = int(h - bbox.y1), int(h - bbox.y0)
    sub = rgba[y0:y1, x0:x1, :3].astype(float) / 255
    blue = (sub[..., 2] - sub[..., 0] > 0.4) & (sub[..., 2] > 0.6)
    return np.nonzero(blue)[1] + x0


def test_left_target_appears_on_the_side_labelled_L(tmp_path):
    """A left-only planted blob must be drawn on the side of the 'L' label (coronal, axial)."""
    unit = make_unit(tmp_path, "09")
    rmap = nb.load(unit["rmap_path"])
    rdata = np.asarray(rmap.dataobj)
    rdata = np.where(rdata < -0.5, rdata, 0).astype(np.float32)  # the planted blob only
    blob = nb.Nifti1Image(rdata, rmap.affine)
    display = R.map_figure(blob, TARGET)
    fig = display.frame_axes.figure
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text() in ("L", "R")]
    renderer = fig.canvas.get_renderer()
    for panel in ("y", "z"):  # coronal and axial show left/right
        ax = display.axes[panel].ax
        bbox = ax.get_window_extent()
        cols = _blue_columns(rgba, bbox)
        assert cols.size > 5, f"blob not drawn on panel {panel}"
        lab = {}
        for t in texts:
            e = t.get_window_extent(renderer)
            cx = (e.x0 + e.x1) / 2
            if bbox.x0 - 5 <= cx <= bbox.x1 + 5:
                lab[t.get_text()] = cx
        assert set(lab) == {"L", "R"}, (panel, lab)
        blob_x = float(np.mean(cols))
        assert abs(blob_x - lab["L"]) < abs(blob_x - lab["R"]), (panel, blob_x, lab)
        assert lab["L"] < lab["R"]  # neurological: L on the left
    matplotlib.pyplot.close(fig)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None,
                    reason="headless Chromium not installed (Debian package 'chromium'; "
                           ".ci/run installs it); the report is checked without a browser above")
def test_report_loads_in_headless_chromium(reports, tmp_path):
    """Loads with no network request and every image decoded; printed coordinates as in JSON."""
    probe = ("<script>window.addEventListener('load', function () {"
             "var o = document.createElement('pre'); o.id = 'load-probe';"
             "var broken = Array.prototype.filter.call(document.images, function (i) {"
             "return !i.complete || i.naturalWidth === 0; }).length;"
             "o.textContent = JSON.stringify({resources: performance.getEntriesByType('resource')"
             ".map(function (e) { return e.name; }), images: document.images.length,"
             "broken: broken}); document.body.appendChild(o); });</script>")
    for key in ("plain", "hostile"):
        html_path = tmp_path / f"{key}.html"
        html_path.write_text(reports[f"{key}_html"].replace("</body>", probe + "</body>"))
        res = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                              f"--user-data-dir={tmp_path / 'profile'}",
                              "--virtual-time-budget=5000", "--dump-dom", html_path.as_uri()],
                             capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0, res.stderr[-2000:]
        dom = res.stdout
        m = re.search(r'<pre id="load-probe">(.*?)</pre>', dom, re.DOTALL)
        assert m, "the page did not finish loading"
        probe_out = json.loads(m.group(1))
        assert probe_out["resources"] == [], probe_out  # no request at all (images are data:)
        assert probe_out["images"] >= 7 and probe_out["broken"] == 0, probe_out
        tj = json.loads(reports[key]["target_json"].read_text())
        for meth, t in tj["targets"].items():
            row = re.search(rf'<tr[^>]*data-method="{meth}">(.*?)</tr>', dom, re.DOTALL).group(1)
            for ax in ("x", "y", "z"):
                assert re.search(rf'coord-{ax}">([^<]*)<', row).group(1) == f"{t[ax]:.2f}"


def test_minimal_inputs_without_reproducibility_or_native(reports, tmp_path):
    unit = dict(reports["plain"], repro_json=None, cloud_tsv=None, targets_tsv=None,
                out_html=tmp_path / "min_report.html", out_json=tmp_path / "min_report.json")
    data = R.subject_report_step(cfg={"fmriprep_dir": None}, native_note="native-space step "
                                 "not run: no T1w <b>found</b>", **unit)
    html = unit["out_html"].read_text()
    assert data["reproducibility"] is None and "Reproducibility step not run" in html
    assert "no T1w &lt;b&gt;found&lt;/b&gt;" in html
    assert not data["simulated"] and "SIMULATED DATA" not in html


@pytest.mark.skipif(_chromium() is None,
                    reason="headless Chromium not installed (Debian package 'chromium'; "
                           ".ci/run installs it)")
def test_cohort_table_sorts_in_headless_chromium(reports, tmp_path):
    """Clicking the 'x' header sorts the rows by x (ascending, then descending), offline."""
    probe = ("<script>window.addEventListener('load', function () {"
             "var th = document.querySelector('#cohort-table th[data-col=\"3\"]');"
             "function col() { return Array.prototype.map.call("
             "document.querySelectorAll('#cohort-table tbody tr'), function (r) {"
             "return parseFloat(r.cells[3].getAttribute('data-v')); }); }"
             "th.click(); var up = col(); th.click(); var down = col();"
             "var o = document.createElement('pre'); o.id = 'sort-probe';"
             "o.textContent = JSON.stringify({up: up, down: down});"
             "document.body.appendChild(o); });</script>")
    page = tmp_path / "cohort_report.html"
    page.write_text(reports["cohort"].read_text().replace("</body>", probe + "</body>"))
    res = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=False)
    m = re.search(r'<pre id="sort-probe">(.*?)</pre>', res.stdout, re.DOTALL)
    assert m, res.stderr[-2000:]
    got = json.loads(m.group(1))
    assert len(got["up"]) == 6 and got["up"] == sorted(got["up"])
    assert got["down"] == sorted(got["up"], reverse=True)


def test_summary_card_leads_with_the_answer(reports):
    html, data = reports["hostile_html"], reports["hostile_data"]
    card = data["summary"]
    # the fixture's native JSON: primary cluster, its T1w coordinate and the T1w's hash
    native = json.loads(Path(reports["hostile"]["native_json"]).read_text())
    assert card["method"] == "cluster" == native["primary_method"]
    assert card["coordinate_mm"] == native["targets"]["cluster"]["t1w_mm"]
    assert card["t1w"]["sha256"] == "c" * 64
    assert card["coil_entry_mm"] == native["coil"]["entry_mm"]
    # cluster: split half 2.0 mm, map r 0.7, bootstrap 3.0 mm, all inside the default limits
    assert card["verdict"] == "reliable" and card["reasons"] == []
    assert card["warnings"] == data["warnings"] and card["n_warnings"] >= 1
    assert card["exports_folder"] == "sub-01/anat"
    top = html.index('id="summary"')
    assert top < html.index('class="research"') and top < html.index('id="warnings"')
    assert "c" * 64 in html[top:html.index('id="warnings"')]
    # without native step: no T1w coordinate, and the card says so
    plain = reports["plain_data"]["summary"]
    assert plain["coordinate_mm"] is None and plain["method"] in reports["plain_data"]["targets"]
    assert "native-space step not run" in reports["plain_html"][:reports["plain_html"].index(
        'id="warnings"')]


# --------------------------------------------------------------------------------------------
# issue 16: one marker per method, primary on top, legends, wide figures, navigation, laterality
# beside the T1w figure, methods paragraph, sign-off
# --------------------------------------------------------------------------------------------

def _figures(html: str) -> dict[str, np.ndarray]:
    """alt text -> RGB pixels of every embedded PNG."""
    from PIL import Image
    import io

    out = {}
    for alt, b64 in re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', html):
        out[alt] = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))
    return out


def _count(rgb: np.ndarray, colour: str, tol: int = 40) -> int:
    want = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb.astype(int) - want).max(axis=-1) <= tol).sum())


def test_primary_marker_on_top_when_targets_coincide(tmp_path):
    """Cluster (primary) and weighted at the same voxel, weighted listed last: the primary's
    colour is still visible on every slice panel of the zoom (drawn last and larger); before,
    the later marker covered it completely (0 visible pixels, issue 16)."""
    unit = make_unit(tmp_path, "08")
    same = TARGET
    markers = {"cluster": (same,), "weighted": (same,), "classic": (same,)}
    display = R.map_figure(nb.load(unit["rmap_path"]), same, markers, zoom_mm=30,
                           primary="cluster")
    fig = display.frame_axes.figure
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    h = rgba.shape[0]
    magenta, orange = R.METHOD_COLOURS["cluster"], R.METHOD_COLOURS["weighted"]
    for k in ("x", "y", "z"):
        bb = display.axes[k].ax.get_window_extent()
        panel = rgba[int(h - bb.y1):int(h - bb.y0), int(bb.x0):int(bb.x1)]
        assert _count(panel, magenta, 30) > 60, k  # the primary is visible on this panel
        assert _count(panel, orange, 30) < 5, k  # the others are under it, not over it
        # the primary is on top: the pixels at the common centre are its colour
        cx, cy = display.axes[k].ax.transData.transform(R._project(same, k))
        centre = rgba[int(h - cy) - 2:int(h - cy) + 3, int(cx) - 2:int(cx) + 3]
        assert _count(centre, magenta, 30) == centre.shape[0] * centre.shape[1], k
    # a legend names every method, the primary marked as such
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "weighted" in texts and "classic" in texts
    assert any(t.startswith("cluster") and "primary" in t for t in texts)
    matplotlib.pyplot.close(fig)


def test_same_marker_per_method_in_every_report_figure(tmp_path):
    """A report whose cluster (exported) and weighted targets coincide: in the MNI slices, zoom,
    glass brain and bootstrap cloud the cluster colour is visible, in the T1w figure the cortical
    target has the exported method's colour (cluster magenta, not the old green that meant
    'classic' elsewhere) and the scalp entry its own red."""
    unit = make_unit(tmp_path, "07", native=True)
    tj = json.loads(unit["target_json"].read_text())
    for ax in ("x", "y", "z"):
        tj["targets"]["weighted"][ax] = tj["targets"]["cluster"][ax]
    unit["target_json"].write_text(json.dumps(tj))
    html, data = _render(unit)
    assert data["primary_method"] == "cluster"
    figs = _figures(html)
    magenta = R.METHOD_COLOURS["cluster"]
    for alt in ("seed-correlation map, orthogonal slices", "DLPFC zoom", "glass brain",
                "bootstrap cloud"):
        rgb = figs[alt]
        panels = rgb[: int(rgb.shape[0] * 0.78)]  # above the legend row
        assert _count(panels, magenta, 30) > 60, alt
    t1 = figs["target on T1w"]
    assert _count(t1, magenta, 30) > 60
    assert _count(t1, "#00ff00", 30) == 0 and _count(t1, R.METHOD_COLOURS["classic"], 20) == 0
    assert _count(t1, R.ENTRY_STYLE[0], 30) > 30  # the scalp entry, in its own colour
    assert R.ENTRY_STYLE[1] not in {mk for _, mk in R.METHOD_STYLES.values()}  # its own shape
    # every method has one colour and one shape, all different
    styles = list(R.METHOD_STYLES.values())
    assert len({c for c, _ in styles}) == len(styles) == len({m for _, m in styles})


def test_report_figures_are_at_least_900_px_wide(reports):
    """Every figure the report draws is >= 900 px wide (the scalp figures of the fixture come
    from the native step and are not the report's)."""
    not_ours = {"head mask and coil entries on T1w", "landmarks and scalp measurements"}
    seen = 0
    for html in _all_html(reports):
        for alt, rgb in _figures(html).items():
            if alt in not_ours:
                continue
            assert rgb.shape[1] >= R.MIN_FIGURE_WIDTH_PX >= 900, (alt, rgb.shape)
            seen += 1
    assert seen >= 17  # 7 + 8 (with the T1w figure) + 2 (cohort)


def test_navigation_links_resolve_to_sections(reports):
    for key in ("plain_html", "hostile_html"):
        html = reports[key]
        nav = re.search(r'<nav id="nav"[^>]*>(.*?)</nav>', html, re.DOTALL)
        assert nav and html.index('<nav id="nav"') < html.index('id="summary"')
        links = re.findall(r'<a href="#([^"]+)">([^<]+)</a>', nav.group(1))
        names = [n.replace("&amp;", "&") for _, n in links]
        assert names == ["Summary", "Target", "Reliability", "Native/T1w & exports",
                         "Quality", "Methods", "Sign-off"]
        ids = re.findall(r'\bid="([^"]+)"', html)
        for anchor, _ in links:
            assert ids.count(anchor) == 1, anchor
        assert "<script" not in html.lower()  # no JavaScript needed
    # the cohort report has one too, whose anchors resolve
    html = reports["cohort"].read_text()
    nav = re.search(r'<nav id="nav"[^>]*>(.*?)</nav>', html, re.DOTALL)
    links = re.findall(r'<a href="#([^"]+)">', nav.group(1))
    assert {"reports", "all-targets", "distances"} <= set(links)
    ids = re.findall(r'\bid="([^"]+)"', html)
    for anchor in links:
        assert ids.count(anchor) == 1, anchor


def test_laterality_panel_beside_the_t1w_figure(reports):
    html, data = reports["hostile_html"], reports["hostile_data"]
    lat = data["native"]["laterality"]
    assert lat["passed"] and lat["hemisphere"] == "left" and lat["side_word"] == "left"
    assert lat["side_mm"] == 38.0 and lat["mni_x"] < 0
    assert lat["panel_label"].startswith("LEFT hemisphere (x = ")
    assert "scanner frame" in lat["panel_label"]
    side = re.search(r'<div class="side-by-side">(.*?)</div>\s*</div>', html, re.DOTALL).group(1)
    assert 'alt="target on T1w"' in side and 'id="laterality-panel"' in side
    assert "<strong>LEFT</strong>" in side and "38.0 mm left" in side and "x &lt; 0: left" in side
    assert "Laterality check" not in reports["plain_html"]  # no native step, no panel


def _safety_checks() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "SAFETY.md").read_text(encoding="utf-8")
    sec = text.split("## Checks a clinician must still make", 1)[1].split("\n## ", 1)[0]
    items = [re.sub(r"^\d+\.\s+", "", it.strip())
             for it in re.split(r"\n(?=\d+\. )", "\n" + sec.strip()) if it.strip()]
    return [re.sub(r"\s+", " ", it).replace("**", "").replace("`", "") for it in items]


def test_signoff_lists_every_safety_check(reports):
    import html as htmllib

    checks = _safety_checks()
    assert len(checks) == 10 and list(R.CLINICIAN_CHECKS) == checks
    for key in ("plain_html", "hostile_html"):
        html = reports[key]
        block = html[html.index('id="signoff"'):]
        assert html.index('id="methods"') < html.index('id="signoff"')  # at the end
        items = re.findall(r'<li><span class="box"[^>]*></span><span class="check-text">(.*?)'
                           r'</span></li>', block, re.DOTALL)
        assert [htmllib.unescape(i) for i in items] == checks
        for word in ("Reviewer name", "Date", "Signature", "Target approved for use"):
            assert word in block
    css = reports["plain_html"]
    assert "@media print" in css and "break-inside: avoid" in css and "@page" in css


def test_methods_paragraph_follows_the_configuration(reports, tmp_path):
    html, data = reports["plain_html"], reports["plain_data"]
    text = " ".join(data["methods_text"]["paragraphs"])
    refs = " ".join(data["methods_text"]["references"])
    assert "SIMULATED" in text  # the plain fixture's input says it is simulated
    assert "above 0.5 mm" in text and "'fox2012' strategy (Fox et al. 2012)" in text
    assert "20 resamples" in text and "6.5 mm" in text
    assert "Biol Psychiatry 72(7):595" in refs and "Hum Brain Mapp 42(13):4155" in refs
    assert "Weigand" in refs and "nilearn" in refs and "nibabel" in refs
    section = html[html.index('id="methods"'):html.index('id="signoff"')]
    assert "above 0.5 mm" in section and "72(7):595" in section
    # another FD threshold in the configuration: the text says so (and that the runs differ)
    unit = dict(reports["plain"], out_html=tmp_path / "fd_report.html",
                out_json=tmp_path / "fd_report.json")
    other = R.subject_report_step(cfg={"fmriprep_dir": None, "seed": {"kind": "sphere"},
                                       "denoise": {"fd_threshold": 0.3}}, **unit)
    other_text = " ".join(other["methods_text"]["paragraphs"])
    assert "above 0.3 mm" in other_text and "above 0.5 mm" not in other_text
    assert "the runs record 0.5 mm" in other_text
    assert "treated as real scanner data" in other_text  # no simulated dataset description


def _pdf_pages(html: str, tmp_path: Path, name: str) -> int:
    page = tmp_path / f"{name}.html"
    page.write_text(html)
    pdf = tmp_path / f"{name}.pdf"
    res = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path / 'profile'}", "--no-pdf-header-footer",
                          f"--print-to-pdf={pdf}", page.as_uri()],
                         capture_output=True, text=True, timeout=180, check=False)
    assert pdf.is_file(), res.stderr[-2000:]
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", pdf.read_bytes()))


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed")
def test_signoff_fits_one_printed_page(reports, tmp_path):
    """Chromium prints the sign-off block (with the report's own CSS) on exactly one A4 page;
    the whole report prints it on a page of its own (more pages than without it)."""
    html = reports["hostile_html"]
    head = html[:html.index("<body>")]
    block = re.search(r'<section class="signoff" id="signoff">.*?</section>', html,
                      re.DOTALL).group(0)
    assert _pdf_pages(head + "<body>" + block + "</body></html>", tmp_path, "signoff") == 1
    # the same block with three times the checks does not fit: the count can fail
    many = block.replace("</ol>", "".join(re.findall(r"<li>.*?</li>", block, re.DOTALL)) * 2
                         + "</ol>")
    assert _pdf_pages(head + "<body>" + many + "</body></html>", tmp_path, "many") > 1


def test_figure_fonts_are_at_least_10_pt(tmp_path):
    """Every text in the report's figures is >= 10 pt (at 100 dpi, >= 900 px wide figures)."""
    unit = make_unit(tmp_path, "05")
    rmap = nb.load(unit["rmap_path"])
    mk = {"cluster": (TARGET,), "classic": (TARGET,), "ref F3": ((-37.0, 26.0, 49.0),
                                                                 *R.REFERENCE_STYLE)}
    t1 = nb.Nifti1Image(np.ones((40, 40, 40), np.float32), np.diag([4.0, 4, 4, 1]))
    figs = {
        "map": R.map_figure(rmap, TARGET, mk, primary="cluster").frame_axes.figure,
        "zoom": R.map_figure(rmap, TARGET, mk, zoom_mm=30, primary="cluster").frame_axes.figure,
        "glass": R.glass_figure(rmap, mk, primary="cluster").frame_axes.figure,
        "cloud": R.cloud_figure({"cluster": np.array([TARGET] * 3)}, {"cluster": TARGET},
                                {"cluster": (TARGET, TARGET)}, primary="cluster"),
        "fd": R.fd_figure([{"fd": [0.1, 0.2], "fd_threshold": 0.5, "bold": "x"}]),
        "seed_ts": R.timeseries_figure(np.arange(10.0), 2.0),
        "distances": R.distance_figure({"cluster": [1.0, 2.0]}, {"cluster": [3.0]}),
        "native": R.native_figure(t1, [10, 10, 10], [20, 20, 20], [0, 0, 1], [1, 0, 0],
                                  "cluster").frame_axes.figure,
        "cohort": R.cohort_glass_figure([{"unit": "sub-01", "method": "cluster",
                                          "xyz": TARGET, "primary": True}]).frame_axes.figure,
    }
    for name, fig in figs.items():
        fig.canvas.draw()
        texts = [t for t in fig.findobj(matplotlib.text.Text)
                 if t.get_visible() and t.get_text().strip()]
        assert texts, name
        small = [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < 10]
        assert not small, (name, small)
        assert fig.get_size_inches()[0] * R.DPI >= R.MIN_FIGURE_WIDTH_PX, name
        matplotlib.pyplot.close(fig)
