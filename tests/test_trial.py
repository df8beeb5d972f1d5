"""Trial mode: allocation (seeded, stable, read not redrawn), reveal-nothing blinded exports for
both arms, and a known-answer pre/post engagement test (plain numpy oracle)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from test_navigation import HEAD_CENTRE, LEFT_DLPFC, make_t1w

from tmstarget import navigation as nav
from tmstarget import navreaders as rd
from tmstarget import trial
from tmstarget.errors import InputError

ARMS = {"connectivity": "cluster", "scalp": "beam_f3"}


def cfg(**kw):
    base = {"enabled": True, "arms": ARMS, "seed": 1234, "block_size": 4}
    base.update(kw)
    return trial.settings(base)


def read_key(p: Path) -> list[dict[str, str]]:
    with open(p, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


# ------------------------------------------------------------------------------------------
# allocation
# ------------------------------------------------------------------------------------------


def test_block_sequence_balanced_and_prefix_stable() -> None:
    seq = trial.block_sequence(list(ARMS), 7, 4, 40)
    for k in range(10):  # every block of 4 holds two of each arm
        blk = seq[4 * k: 4 * k + 4]
        assert blk.count("connectivity") == 2 and blk.count("scalp") == 2
    assert trial.block_sequence(list(ARMS), 7, 4, 13) == seq[:13]
    assert trial.block_sequence(list(ARMS), 8, 4, 40) != seq  # the seed matters


def test_seeded_allocation_written_once_and_extended(tmp_path: Path) -> None:
    key = tmp_path / "unblinded" / "trial_key.tsv"
    first = trial.load_or_create_allocation(["01", "02", "03"], cfg(), key)
    assert [r["participant_id"] for r in first] == ["01", "02", "03"]
    assert {r["arm"] for r in first} <= set(ARMS)
    before = key.read_bytes()
    # rerun: read, not redrawn (file unchanged, same rows)
    again = trial.load_or_create_allocation(["03", "01", "02"], cfg(), key)
    assert again == first and key.read_bytes() == before
    # adding participants (even ones sorting first) never changes existing rows
    more = trial.load_or_create_allocation(["00", "01", "02", "03", "04", "05"], cfg(), key)
    old = {r["participant_id"]: (r["position"], r["code"], r["arm"]) for r in first}
    for r in more:
        if r["participant_id"] in old:
            assert (r["position"], r["code"], r["arm"]) == old[r["participant_id"]]
    assert {r["participant_id"] for r in more} == {"00", "01", "02", "03", "04", "05"}
    assert [r["position"] for r in more] == list(range(1, 7))
    # the stored allocation wins over a changed seed: refused, not redrawn
    tampered = read_key(key)
    with pytest.raises(InputError, match="seed"):
        trial.load_or_create_allocation(["01", "02", "03", "04", "05", "06", "07", "08"],
                                        cfg(seed=999), key)
    assert read_key(key) == tampered


def test_existing_allocation_read_even_if_seed_would_differ(tmp_path: Path) -> None:
    """An existing key is the allocation: a rerun with the same participants returns it."""
    key = tmp_path / "trial_key.tsv"
    key.write_text("participant_id\tposition\tcode\tarm\n01\t1\tA\tscalp\n")
    rows = trial.load_or_create_allocation(["01"], cfg(), key)
    assert rows == [{"participant_id": "01", "position": 1, "code": "A", "arm": "scalp"}]


def test_allocation_from_trial_tsv(tmp_path: Path) -> None:
    src = tmp_path / "randomisation.tsv"
    src.write_text("participant_id\tarm\nsub-01\tscalp\nsub-02\tconnectivity\n")
    key = tmp_path / "key.tsv"
    rows = trial.load_or_create_allocation(["01", "02"], cfg(allocation_file=str(src),
                                                                seed=None), key)
    assert {r["participant_id"]: r["arm"] for r in rows} == {"01": "scalp", "02": "connectivity"}
    assert len({r["code"] for r in rows}) == 2
    with pytest.raises(InputError, match="no allocation for sub-03"):
        trial.load_or_create_allocation(["01", "02", "03"],
                                        cfg(allocation_file=str(src), seed=None), key)
    src.write_text("participant_id\tarm\n01\tsham\n")
    with pytest.raises(InputError, match="not one of trial.arms"):
        trial.load_or_create_allocation(["01"], cfg(allocation_file=str(src), seed=None), key)


def test_settings_refusals() -> None:
    assert trial.settings(None)["enabled"] is False
    with pytest.raises(InputError, match="at least two arms"):
        trial.settings({"enabled": True, "arms": {"a": "cluster"}, "seed": 1})
    with pytest.raises(InputError, match="multiple"):
        trial.settings({"enabled": True, "arms": ARMS, "seed": 1, "block_size": 3})
    with pytest.raises(InputError, match="allocation_file or trial.seed"):
        trial.settings({"enabled": True, "arms": ARMS})


# ------------------------------------------------------------------------------------------
# blinded exports reveal nothing
# ------------------------------------------------------------------------------------------


def _pose(t1w: Path, target: np.ndarray, name: str) -> nav.CoilPose:
    normal = (target - HEAD_CENTRE) / np.linalg.norm(target - HEAD_CENTRE)
    return nav.pose_from_geometry(target + 18.0 * normal, normal,
                                  nav.handle_direction(normal, 45.0, "left"), target, t1w=t1w,
                                  name=name, entry=target + 15.0 * normal)


#: Revealing names the unblinded poses carry (must never reach a blinded file).
ARM_POSES = {
    "connectivity": (LEFT_DLPFC, "cluster r=-0.43 sgACC fMRI connectivity target 12.3 mm from F3"),
    "scalp": (np.array([-37.1, 41.6, 30.2]), "Beam F3 scalp rule (EEG 10-20 F3 nearby)"),
}


def _blinded_files(tmp_path: Path, arm: str) -> tuple[Path, dict[str, Path]]:
    t1w = make_t1w(tmp_path / "sub-01_desc-preproc_T1w.nii.gz")
    target, name = ARM_POSES[arm]
    pose = _pose(t1w, target, name)
    # via the coilpose JSON record, as the workflow does
    rec = json.loads(nav._render_json(pose))
    out = tmp_path / f"out-{arm}"
    files = trial.write_blinded(trial.pose_from_record(rec), t1w, out, "01", "1", "A")
    return out, files


@pytest.mark.parametrize("arm", list(ARM_POSES))
def test_blinded_files_reveal_nothing(tmp_path: Path, arm: str) -> None:
    out, files = _blinded_files(tmp_path, arm)
    d = out / "blinded" / "sub-01" / "ses-1"
    on_disk = sorted(p for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted(files.values()) and all(p.parent == d for p in on_disk)
    assert len(on_disk) == len(trial.BLINDED_SUFFIXES)
    for p in on_disk:
        hits = trial.reveal_scan(p.read_bytes())
        hits += trial.reveal_scan(p.name.encode())
        assert not hits, f"{p.name} reveals {hits}"
        if p.name.endswith(".nii.gz"):  # header and any extensions
            img = nb.load(str(p))
            raw = img.header.binaryblock + b"".join(e.get_content() if isinstance(
                e.get_content(), bytes) else b"" for e in img.header.extensions)
            assert not trial.reveal_scan(raw)
            assert len(img.header.extensions) == 0
    sheet = files["technician_txt"].read_text()
    assert "Checks before every session" in sheet
    # not even the neutral allocation code (it would let the technician group participants)
    assert "Allocation" not in sheet and '"A"' not in files["technician_json"].read_text()
    for c in trial.TECHNICIAN_CHECKS:
        assert c in sheet
    # the name is neutral in every navigator format
    assert json.loads(files["json"].read_text())["name"] == "Target"
    assert "Target" in files["brainsight"].read_text()
    # Brainsight: the coil pose and the cortical point (a trajectory target), neutrally named
    assert [t.name for t in rd.read_brainsight(files["brainsight"]).targets] == [
        "Target", "Target trajectory"]


def test_blinding_drops_the_labels_and_notes_a_pose_carries(tmp_path: Path) -> None:
    """A pose handed over with its unblinded entry labels and verdict note (as the native
    step makes them) still gives blinded files that reveal nothing."""
    from dataclasses import replace

    t1w = make_t1w(tmp_path / "sub-01_desc-preproc_T1w.nii.gz")
    target, name = ARM_POSES["connectivity"]
    pose = replace(_pose(t1w, target, name), target_label=f"{name} cortical target",
                   entry_label=f"{name} coil on scalp",
                   note="UNRELIABLE: cluster split-half 9.1 mm (sgACC connectivity)")
    files = trial.write_blinded(pose, t1w, tmp_path / "out", "01", "1", "A")
    for p in files.values():
        assert not trial.reveal_scan(p.read_bytes()), p.name


def test_reveal_scan_catches_the_unblinded_names(tmp_path: Path) -> None:
    """The oracle works: the same pose through the ordinary writers is caught."""
    for arm, (target, name) in ARM_POSES.items():
        t1w = make_t1w(tmp_path / f"{arm}_T1w.nii.gz")
        written = nav.write_all(_pose(t1w, target, name), t1w, tmp_path / arm, "x")
        assert any(trial.reveal_scan(p.read_bytes()) for p in written.values()), arm
    assert trial.reveal_scan(b"a3f3e9 sha") == []  # hex digests do not count
    assert trial.reveal_scan(b"near F3.") == ["f3"]


def test_both_arms_same_layout_and_format(tmp_path: Path) -> None:
    """Same file names, and the same text once numbers are masked; same precision."""
    a_out, a = _blinded_files(tmp_path, "connectivity")
    b_out, b = _blinded_files(tmp_path, "scalp")
    ra = sorted(p.relative_to(a_out) for p in a.values())
    rb = sorted(p.relative_to(b_out) for p in b.values())
    assert ra == rb
    for k in a:
        assert trial.structure(a[k].read_bytes()) == trial.structure(b[k].read_bytes()), k
    for f in (a, b):
        rec = json.loads(f["json"].read_text())
        for v in rec["target_mm"] + rec["entry_mm"] + [r[3] for r in rec["coil_matrix"][:3]]:
            assert round(v, 2) == v
    ha, hb = (nb.load(str(f["nifti_sphere"])).header for f in (a, b))
    assert ha.binaryblock == hb.binaryblock  # identical NIfTI headers


def test_ordinary_exports_unchanged_by_the_description_parameter(tmp_path: Path) -> None:
    t1w = make_t1w(tmp_path / "t.nii.gz")
    pose = _pose(t1w, LEFT_DLPFC, "L-DLPFC")
    assert b"cortical target; " in nav._render_fcsv(pose)
    assert b"scalp entry; " in nav._render_slicer_json(pose)


# ------------------------------------------------------------------------------------------
# engagement known answer
# ------------------------------------------------------------------------------------------


def _session(rng: np.random.Generator, coupling: float, affine: np.ndarray,
             target: np.ndarray, n_t: int = 3000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape = (7, 7, 7)
    seed = rng.standard_normal(n_t)
    data = rng.standard_normal(shape + (n_t,))
    shared = rng.standard_normal(n_t)
    ijk = np.indices(shape).reshape(3, -1).T
    near = []
    for i, j, k in ijk:  # independent sphere: explicit loop over voxel centres
        x = affine @ np.array([i, j, k, 1.0])
        if np.sqrt(((x[:3] - target) ** 2).sum()) <= 4.5:
            near.append((i, j, k))
    for v in near:  # planted: population correlation ~ coupling for the sphere mean
        data[v] = coupling * seed + np.sqrt(1 - coupling ** 2) * shared \
            + 0.05 * rng.standard_normal(n_t)
    return seed, data, np.array(near)


def test_engagement_known_answer() -> None:
    rng = np.random.default_rng(19)
    affine = np.array([[2.0, 0, 0, -6], [0, 2.0, 0, -6], [0, 0, 2.0, -6], [0, 0, 0, 1]])
    target = np.array([0.0, 0.0, 0.0])
    planted = {"pre": -0.2, "post": -0.55}
    res = {}
    for ses, c in planted.items():
        seed, data, near = _session(rng, c, affine, target)
        e = trial.engagement(seed, data, affine, target, 4.5)
        # independent computation: np.corrcoef on the planted voxels' mean
        oracle = np.corrcoef(seed, data[tuple(near.T)].mean(axis=0))[0, 1]
        assert e.n_voxels == len(near)
        assert e.r == pytest.approx(oracle, abs=1e-9)
        assert e.r == pytest.approx(c, abs=0.05)
        h = len(seed) // 2
        assert e.r_half1 == pytest.approx(
            np.corrcoef(seed[:h], data[tuple(near.T)].mean(axis=0)[:h])[0, 1], abs=1e-9)
        res[ses] = e
    ch = trial.engagement_change(res["pre"], res["post"])
    assert ch["delta_r"] < 0  # sign: coupling became more negative
    assert ch["delta_r"] == pytest.approx(planted["post"] - planted["pre"], abs=0.06)
    dz_true = np.arctanh(planted["post"]) - np.arctanh(planted["pre"])
    assert ch["delta_z"] == pytest.approx(dz_true, abs=0.08)
    assert abs(ch["delta_z_over_noise"]) > 3  # a real change stands out of the split-half noise


def test_engagement_no_change_is_within_noise() -> None:
    rng = np.random.default_rng(5)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -6
    out = []
    for _ in range(2):
        seed, data, _ = _session(rng, -0.3, affine, np.zeros(3), n_t=600)
        out.append(trial.engagement(seed, data, affine, np.zeros(3), 4.5))
    ch = trial.engagement_change(*out)
    assert abs(ch["delta_z"]) < 4 * max(ch["delta_z_noise"], 0.02)


def test_cohort_table_blinded_until_unblinded() -> None:
    key = [{"participant_id": "01", "code": "B", "arm": "scalp"},
           {"participant_id": "02", "code": "A", "arm": "connectivity"}]
    rows = [{"participant_id": "01", "delta_r": -0.1}, {"participant_id": "02", "delta_r": 0.0}]
    blind = trial.cohort_table(rows, key, unblind=False)
    assert [r["arm"] for r in blind] == ["A", "B"]
    assert not {"scalp", "connectivity"} & {str(v) for r in blind for v in r.values()}
    assert {r["arm"] for r in trial.cohort_table(rows, key, unblind=True)} == set(ARMS.keys())


# ------------------------------------------------------------------------------------------
# workflow refusals (dry runs)
# ------------------------------------------------------------------------------------------


def test_dry_run_refuses_an_arm_that_is_not_exported(tmp_path: Path) -> None:
    from test_workflow_dryrun import dry_run, make_tree

    src = make_tree(tmp_path / "fmriprep", {"01": {None: [None]}})
    res = dry_run(src, tmp_path / "out", {"trial": {
        "enabled": True, "arms": {"a": "classic", "b": "beam_f3"}, "seed": 1}})
    assert res.returncode != 0
    assert "trial arm a: method classic is not the exported connectivity method" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out" / "unblinded").exists()


def _eng_tree(tmp_path: Path) -> Path:
    from test_workflow_dryrun import ANAT, make_tree

    from conftest import tiny_file

    src = make_tree(tmp_path / "fmriprep", {
        "01": {None: [None]},                  # no sessions
        "02": {"pre": [None]},                 # pre only
        "03": {"pre": [None], "post": [None]},  # both
        "04": {"pre": ["1", "2"], "post": [None], "fu": [None]},  # both, two pre runs
        "05": {"pre": [None], "post": [None]},  # both, but no anatomy: not allocated
    })
    for sub in ("01", "02", "03", "04"):
        d = src / f"sub-{sub}" / "anat"
        d.mkdir(parents=True)
        for f in ANAT:
            tiny_file(d / f.format(p=f"sub-{sub}"))
    return src


ENG_CFG = {"trial": {"enabled": True, "arms": {"connectivity": "cluster", "scalp": "beam_f3"},
                     "seed": 7, "block_size": 2, "engagement": {"pre": "pre", "post": "post"}}}


def test_dry_run_plans_engagement_only_with_both_sessions(tmp_path: Path) -> None:
    from test_workflow_dryrun import dry_run

    src = _eng_tree(tmp_path)
    res = dry_run(src, tmp_path / "out", ENG_CFG)
    assert res.returncode == 0, res.stderr
    jobs = re.findall(r"^\s*rule trial_engagement:\s*$", res.stdout, re.MULTILINE)
    assert len(jobs) == 2
    made = set(re.findall(r"(sub-\d\d/func/sub-\d\d_task-rest_desc-engagement_stat\.tsv)",
                          res.stdout))
    assert made == {"sub-03/func/sub-03_task-rest_desc-engagement_stat.tsv",
                    "sub-04/func/sub-04_task-rest_desc-engagement_stat.tsv"}
    assert len(re.findall(r"^\s*rule trial_engagement_cohort:\s*$", res.stdout, re.M)) == 1
    assert "unblinded/trial_engagement.tsv" in res.stdout
    # the post session's own denoise outputs are reused (one denoise job per run, no extra)
    assert len(re.findall(r"^\s*rule denoise_run:\s*$", res.stdout, re.M)) == 10
    # sub-04's pre session has two runs: both feed its engagement job
    block = res.stdout.split("sub-04_task-rest_desc-engagement_stat.tsv")[0].rsplit(
        "rule trial_engagement:", 1)[1]
    assert "sub-04_ses-pre_task-rest_run-1_desc-denoised" in block
    assert "sub-04_ses-pre_task-rest_run-2_desc-denoised" in block
    assert "sub-04_ses-post_task-rest_desc-denoised" in block
    assert "sub-04_ses-pre_task-rest_space-MNI152NLin2009cAsym_desc-target_coords" in block
    # skipped with a note, not an error
    assert re.search(r"sub-01: pre/post engagement skipped: no usable ses-pre and ses-post "
                     r"\(has no sessions\)", res.stderr)
    assert re.search(r"sub-02: pre/post engagement skipped: no usable ses-post \(has ses-pre\)",
                     res.stderr)
    assert re.search(r"sub-05: pre/post engagement skipped: not allocated", res.stderr)
    off = dry_run(src, tmp_path / "out2", {"trial": {**ENG_CFG["trial"], "engagement": None}})
    assert off.returncode == 0, off.stderr
    assert "trial_engagement" not in off.stdout


def test_dry_run_engagement_refusals(tmp_path: Path) -> None:
    from test_workflow_dryrun import dry_run

    src = _eng_tree(tmp_path)
    same = dry_run(src, tmp_path / "o1", {"trial": {**ENG_CFG["trial"],
                                                    "engagement": {"pre": "pre", "post": "pre"}}})
    assert same.returncode != 0 and "pre and post are the same session" in same.stderr
    off = dry_run(src, tmp_path / "o2", {"trial": {"engagement": {"pre": "pre", "post": "post"}}})
    assert off.returncode != 0
    assert "trial.engagement is set but trial.enabled is false" in off.stderr
    assert "Traceback" not in same.stderr + off.stderr


# ------------------------------------------------------------------------------------------
# engagement step (the workflow's function) on simulated denoised sessions
# ------------------------------------------------------------------------------------------

GRID = (12, 12, 12)
GRID_AFFINE = np.array([[3.0, 0, 0, -18], [0, 3.0, 0, -18], [0, 0, 3.0, -18], [0, 0, 0, 1]])
SEED_CENTRE = np.array([0.0, 0.0, 0.0])
ENG_TARGET = np.array([-12.0, 9.0, 6.0])


def _ball(centre: np.ndarray, radius: float) -> list[tuple[int, int, int]]:
    out = []
    for i in range(GRID[0]):  # explicit loop over voxel centres: an independent sphere
        for j in range(GRID[1]):
            for k in range(GRID[2]):
                x = GRID_AFFINE @ np.array([i, j, k, 1.0])
                if np.sqrt(((x[:3] - centre) ** 2).sum()) <= radius:
                    out.append((i, j, k))
    return out


def _write_session(tmp: Path, name: str, rng: np.random.Generator, coupling: float,
                   run_lengths: list[int]) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Denoised runs (the denoise step's .npz format) with a planted seed-target coupling."""
    from tmstarget.denoise import DenoisedRun, save_denoised

    seed_vox, tgt_vox = _ball(SEED_CENTRE, 4.0), _ball(ENG_TARGET, 4.0)
    brain = np.zeros(GRID, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    voxels = np.argwhere(brain).astype(np.int32)
    index = {tuple(v): n for n, v in enumerate(voxels.tolist())}
    paths, seeds, tgts = [], [], []
    for ri, n_t in enumerate(run_lengths):
        s = rng.standard_normal(n_t)
        shared = rng.standard_normal(n_t)
        data = rng.standard_normal((n_t, len(voxels))).astype(np.float32)
        for v in seed_vox:
            data[:, index[v]] = s + 0.3 * rng.standard_normal(n_t)
        for v in tgt_vox:
            data[:, index[v]] = coupling * s + np.sqrt(1 - coupling ** 2) * shared \
                + 0.05 * rng.standard_normal(n_t)
        bold = tmp / f"{name}_run-{ri + 1}_bold.nii.gz"
        bold.write_bytes(f"fake bold {name} {ri}".encode())
        import hashlib
        run = DenoisedRun(data=data, voxels=voxels, affine=GRID_AFFINE, shape=GRID,
                          kept=np.arange(n_t), tr=2.0,
                          qc={"inputs": [{"path": str(bold), "sha256": hashlib.sha256(
                              bold.read_bytes()).hexdigest()}]})
        p = tmp / f"{name}_run-{ri + 1}_desc-denoised_timeseries.npz"
        save_denoised(run, p)
        paths.append(p)
        seeds.append(data[:, [index[v] for v in seed_vox]].astype(float).mean(axis=1))
        tgts.append(data[:, [index[v] for v in tgt_vox]].astype(float).mean(axis=1))
    return paths, np.concatenate(seeds), np.concatenate(tgts)


def _eng_cfg() -> dict:
    return {"seed": {"kind": "sphere", "center_mm": SEED_CENTRE.tolist(), "radius_mm": 4.0,
                     "space": "MNI152NLin2009cAsym"},
            "space": "MNI152NLin2009cAsym", "trial": {"engagement_radius_mm": 4.0},
            "native": {"method": None}}


def _target_json(path: Path, xyz: np.ndarray, status: str = "ok") -> Path:
    t = {"x": float(xyz[0]), "y": float(xyz[1]), "z": float(xyz[2]), "r": -0.3,
         "status": status, "space": "MNI152NLin2009cAsym"}
    path.write_text(json.dumps({"space": "MNI152NLin2009cAsym", "targets": {
        "classic": {**t, "x": 30.0}, "cluster": t},
        "reference_image": {"path": "pre_map.nii.gz", "sha256": "0" * 64}}))
    return path


def _oracle(s: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    h = len(s) // 2
    return (np.corrcoef(s, t)[0, 1], np.corrcoef(s[:h], t[:h])[0, 1],
            np.corrcoef(s[h:], t[h:])[0, 1])


def _run_step(tmp: Path, planted: dict[str, float], seed: int = 19, pid: str = "03"):
    rng = np.random.default_rng(seed)
    pre, s_pre, t_pre = _write_session(tmp, f"{pid}pre", rng, planted["pre"], [900, 700])
    post, s_post, t_post = _write_session(tmp, f"{pid}post", rng, planted["post"], [1600])
    maps = []
    for n in ("pre", "post"):
        m = tmp / f"{pid}{n}_map.nii.gz"
        nb.save(nb.Nifti1Image(rng.standard_normal(GRID).astype(np.float32), GRID_AFFINE), m)
        maps.append(m)
    tj = _target_json(tmp / f"{pid}_target.json", ENG_TARGET)
    out_tsv = tmp / f"sub-{pid}_task-rest_desc-engagement_stat.tsv"
    row = trial.engagement_step(pre, post, tj, maps[0], maps[1], pid, "1", "2", _eng_cfg(),
                                out_tsv, out_tsv.with_suffix(".json"), tmp)
    return row, out_tsv, (s_pre, t_pre, s_post, t_post), maps, pre + post


def test_engagement_step_recovers_a_planted_change(tmp_path: Path) -> None:
    import hashlib

    planted = {"pre": -0.15, "post": -0.5}
    row, tsv, (s_pre, t_pre, s_post, t_post), maps, npz = _run_step(tmp_path, planted)
    with open(tsv, newline="") as fh:
        got = list(csv.DictReader(fh, delimiter="\t"))
    assert len(got) == 1 and tuple(got[0]) == trial.ENGAGEMENT_COLUMNS
    g = {k: (float(v) if k not in ("participant_id", "pre_session_id", "post_session_id",
                                   "method", "space") else v) for k, v in got[0].items()}
    assert g["participant_id"] == "sub-03" and g["method"] == "cluster"
    assert [g["x"], g["y"], g["z"]] == ENG_TARGET.tolist()
    # plain-numpy oracle on the planted voxels (seed sphere and target sphere means)
    r_pre, h1_pre, h2_pre = _oracle(s_pre, t_pre)
    r_post, h1_post, h2_post = _oracle(s_post, t_post)
    assert g["r_pre"] == pytest.approx(r_pre, abs=2e-5)
    assert g["r_post"] == pytest.approx(r_post, abs=2e-5)
    assert g["r_pre_half1"] == pytest.approx(h1_pre, abs=2e-5)
    assert g["r_post_half2"] == pytest.approx(h2_post, abs=2e-5)
    spread_pre = abs(np.arctanh(h1_pre) - np.arctanh(h2_pre)) / np.sqrt(2)
    assert g["spread_pre"] == pytest.approx(spread_pre, abs=1e-4)
    assert g["n_voxels_pre"] == len(_ball(ENG_TARGET, 4.0)) == 7
    assert g["n_volumes_pre"] == 1600 and g["n_volumes_post"] == 1600
    # the planted change: sign and size
    assert g["delta_r"] < 0
    assert g["delta_r"] == pytest.approx(planted["post"] - planted["pre"], abs=0.07)
    dz = np.arctanh(planted["post"]) - np.arctanh(planted["pre"])
    assert g["delta_z"] == pytest.approx(dz, abs=0.08)
    assert g["delta_z_over_noise"] < -3
    # provenance: coordinates with space and convention, SHA-256 of images and maps
    side = json.loads(tsv.with_suffix(".json").read_text())
    assert side["Target"]["coordinates_mm"] == ENG_TARGET.tolist()
    assert side["Target"]["space"] == "MNI152NLin2009cAsym"
    assert "RAS+" in side["Target"]["convention"]
    assert side["Maps"]["post"]["sha256"] == hashlib.sha256(maps[1].read_bytes()).hexdigest()
    imgs = side["Sessions"]["pre"]["images"] + side["Sessions"]["post"]["images"]
    assert len(imgs) == 3
    for i in imgs:
        assert i["sha256"] == hashlib.sha256(Path(i["path"]).read_bytes()).hexdigest()
    assert set(trial.ENGAGEMENT_COLUMNS) <= set(side)
    assert "not a clinical measure" in side["ResearchUseOnly"]


def test_engagement_step_no_change_stays_within_noise(tmp_path: Path) -> None:
    row, *_ = _run_step(tmp_path, {"pre": -0.3, "post": -0.3}, seed=3)
    assert abs(row["delta_z"]) < 3 * row["delta_z_noise"] + 0.02
    assert abs(row["delta_r"]) < 0.1


def test_spread_estimates_the_half_session_standard_error() -> None:
    """The documented meaning of ``spread``: E[spread^2] = Var(z of a half) = 1/(n/2 - 3)."""
    rng = np.random.default_rng(11)
    n = 400
    sq = [trial.engagement_of_series(rng.standard_normal(n), rng.standard_normal(n), 1).spread
          ** 2 for _ in range(3000)]
    assert np.mean(sq) == pytest.approx(1 / (n / 2 - 3), rel=0.08)


def test_engagement_step_errors_name_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pre, _, _ = _write_session(tmp_path, "pre", rng, -0.3, [200])
    m = tmp_path / "m.nii.gz"
    nb.save(nb.Nifti1Image(np.zeros(GRID, np.float32), GRID_AFFINE), m)
    bad = _target_json(tmp_path / "bad.json", ENG_TARGET, status="no_negative")
    with pytest.raises(InputError) as e:
        trial.engagement_step(pre, pre, bad, m, m, "03", "1", "2", _eng_cfg(),
                              tmp_path / "o.tsv", tmp_path / "o.json", tmp_path)
    assert e.value.path == str(bad) and "no cluster target" in str(e.value)
    far = _target_json(tmp_path / "far.json", np.array([80.0, 0.0, 0.0]))
    with pytest.raises(InputError) as e:
        trial.engagement_step(pre, pre, far, m, m, "03", "1", "2", _eng_cfg(),
                              tmp_path / "o.tsv", tmp_path / "o.json", tmp_path)
    assert "no brain voxel" in str(e.value) and e.value.hint
    assert not (tmp_path / "o.tsv").exists()


def test_engagement_cohort_blinded_until_unblind(tmp_path: Path) -> None:
    tsvs = []
    for pid, seed in (("03", 19), ("04", 20)):
        d = tmp_path / pid
        d.mkdir()
        _, tsv, *_ = _run_step(d, {"pre": -0.2, "post": -0.4}, seed=seed, pid=pid)
        tsvs.append(tsv)
    key = tmp_path / "trial_key.tsv"
    key.write_text("participant_id\tposition\tcode\tarm\n03\t1\tB\tconnectivity\n"
                   "04\t2\tA\tscalp\n05\t3\tA\tscalp\n")
    skipped = [{"participant_id": "sub-05", "reason": "no usable ses-2 (has ses-1)"}]
    out = tmp_path / "cohort.tsv"
    trial.engagement_cohort_step(tsvs, key, False, skipped, out, tmp_path / "cohort.json")
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [(r["participant_id"], r["arm"]) for r in rows] == [("sub-04", "A"), ("sub-03", "B")]
    blob = out.read_bytes() + (tmp_path / "cohort.json").read_bytes()
    for word in (b"connectivity", b"scalp", b"cluster", b"beam"):
        assert word not in blob.lower(), word
    side = json.loads((tmp_path / "cohort.json").read_text())
    assert side["Blinded"] is True and set(side["ByArm"]) == {"A", "B"}
    assert side["Skipped"] == skipped
    trial.engagement_cohort_step(tsvs, key, True, skipped, out, tmp_path / "cohort.json")
    with open(out, newline="") as fh:
        assert {r["arm"] for r in csv.DictReader(fh, delimiter="\t")} == {"connectivity",
                                                                          "scalp"}
    with pytest.raises(InputError) as e:
        trial.engagement_cohort_step(tsvs, tmp_path / "nokey.tsv", False, [], out,
                                     tmp_path / "c.json")
    assert "allocation key is missing" in str(e.value)
