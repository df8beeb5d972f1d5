"""Scalp rules (tmstarget.scalp): arcs along the scalp, 10-20 F3, Beam F3, 5 cm rule, landmarks,
and the scalp model on real heads.

Oracles are independent of the implementation: closed-form geometry on a spherical head (great
and small circles computed here with plain numpy), a line-intersection re-derivation of the
Beam F3 construction, FieldTrip's published 10-20 positions on the Colin27-based MNI head
(Oostenveld & Praamstra 2001, computed by FieldTrip's own code), the T1w intensities themselves
(air outside the coil entry, tissue inside) and published adult head-size ranges.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from tmstarget import itk
from tmstarget import scalp as sc
from tmstarget.errors import InputError
from tmstarget.native import build_head_model, load_point_transform, scalp_geometry

REPO = Path(__file__).resolve().parents[1]
HEADS = REPO / "tests" / "data" / "heads"
COLIN = REPO / "src" / "tmstarget" / "data" / "colin27_ch2_head.nii.gz"

# ------------------------------------------------------------------------------------------
# a spherical head (closed-form answers)
# ------------------------------------------------------------------------------------------

R_TRUE, R_BRAIN = 90.0, 75.0
C0 = np.array([2.0, -10.0, 12.0])
VOX = 1.5
#: A voxel is head when its centre is within R_TRUE; the mask boundary (half-way between the
#: last voxel centre in and the first out) is at R_TRUE on average.
R_HEAD = R_TRUE


def sphere_head(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    n = int(2 * (R_TRUE + 15) / VOX)
    aff = np.eye(4)
    aff[:3, :3] *= VOX
    aff[:3, 3] = C0 - VOX * (n - 1) / 2
    ijk = np.indices((n, n, n)).reshape(3, -1).T.astype(float)
    r = np.linalg.norm(ijk @ aff[:3, :3].T + aff[:3, 3] - C0, axis=1).reshape(n, n, n)
    data = np.where(r <= R_BRAIN, 150, np.where(r <= R_TRUE, 100, 0)).astype(np.int16)
    out = {"t1w": folder / "t1w.nii.gz", "mask": folder / "mask.nii.gz"}
    for key, arr in (("t1w", data), ("mask", (r <= R_BRAIN).astype(np.uint8))):
        img = nb.Nifti1Image(arr, aff)
        img.set_qform(aff, 1)
        img.set_sform(aff, 1)
        nb.save(img, str(out[key]))
    return out


def on_sphere(elev_deg: float, azim_deg: float, r: float = R_HEAD) -> np.ndarray:
    """Point on the head sphere: azimuth 0 = anterior (+y), 90 = left (-x); elevation from the
    equator (z)."""
    e, a = math.radians(elev_deg), math.radians(azim_deg)
    return C0 + r * np.array([-math.cos(e) * math.sin(a), math.cos(e) * math.cos(a),
                              math.sin(e)])


def sphere_landmarks() -> dict[str, np.ndarray]:
    return {"nasion": on_sphere(0, 0), "inion": on_sphere(0, 180), "lpa": on_sphere(0, 90),
            "rpa": on_sphere(0, -90), "vertex": on_sphere(80, 20)}  # vertex deliberately off


def circle_arc_length(a: np.ndarray, b: np.ndarray, via: np.ndarray) -> float:
    """Length on the head sphere from a to b through via, along the circle where the plane of
    the three points cuts the sphere (closed form)."""
    n = np.cross(a - via, b - via)
    n /= np.linalg.norm(n)
    cc = C0 + ((a - C0) @ n) * n
    rc = math.sqrt(R_HEAD ** 2 - float((a - C0) @ n) ** 2)

    def ang(p: np.ndarray) -> float:
        u = (a - cc) / np.linalg.norm(a - cc)
        w = np.cross(n, u)
        return math.atan2((p - cc) @ w, (p - cc) @ u) % (2 * math.pi)

    tb, tv = ang(b), ang(via)
    return rc * (tb if tv < tb else 2 * math.pi - tb)


def rotate_toward(p: np.ndarray, q: np.ndarray, dist: float) -> np.ndarray:
    """Walk ``dist`` mm from p toward q on the great circle of the head sphere."""
    u, v = (p - C0) / R_HEAD, (q - C0) / R_HEAD
    w = v - (v @ u) * u
    w /= np.linalg.norm(w)
    t = dist / R_HEAD
    return C0 + R_HEAD * (math.cos(t) * u + math.sin(t) * w)


@pytest.fixture(scope="module")
def sphere(tmp_path_factory) -> tuple[sc.ScalpSurface, dict]:
    paths = sphere_head(tmp_path_factory.mktemp("sphere"))
    model = build_head_model(paths["t1w"], paths["mask"])
    surf = sc.ScalpSurface(model)
    lm = {k: sc.Landmark(k, surf.snap(v)[0], "user") for k, v in sphere_landmarks().items()}
    return surf, lm


def test_arc_lengths_along_the_scalp_on_a_sphere(sphere) -> None:
    """Arcs and rings of the sphere measured along the scalp (within 0.3 %)."""
    surf, lm = sphere
    a, b = lm["nasion"].t1w_mm, lm["inion"].t1w_mm
    arc = sc.surface_arc(surf, a, b, via=on_sphere(90, 0))
    assert arc.length == pytest.approx(circle_arc_length(a, b, on_sphere(90, 0)), rel=3e-3)
    assert arc.length == pytest.approx(math.pi * R_HEAD, rel=1e-2)
    ring = sc.surface_ring(surf, C0 + [0, 0, R_HEAD * math.sin(math.radians(18))],
                           on_sphere(18, 0), on_sphere(18, 90))
    assert ring.length == pytest.approx(2 * math.pi * R_HEAD * math.cos(math.radians(18)),
                                        rel=3e-3)
    # the point at a quarter of the ring is 90 degrees round, on the left (toward 'toward')
    assert np.linalg.norm(ring.at(ring.length / 4) - on_sphere(18, 90)) < 2.0
    # straight chords would be far shorter: the length is measured along the scalp
    assert arc.length > 1.5 * np.linalg.norm(lm["nasion"].t1w_mm - lm["inion"].t1w_mm)


def test_ten_twenty_positions_on_a_sphere(sphere) -> None:
    """Cz at the pole (from an off-centre start), Fpz/T3 at 18 deg, F7 at 54 deg azimuth, and
    F3 halfway along the F7-Fz-F8 circle, all computed here in closed form."""
    surf, lm = sphere
    res = sc.ten_twenty(surf, lm)
    pos = res["positions"]
    tol = 2.0
    assert np.linalg.norm(pos["Cz"] - on_sphere(90, 0)) < tol
    nz, iz, lpa, rpa = (lm[k].t1w_mm for k in ("nasion", "inion", "lpa", "rpa"))
    assert res["ni_mm"] == pytest.approx(circle_arc_length(nz, iz, pos["Cz"]), rel=3e-3)
    assert res["tt_mm"] == pytest.approx(circle_arc_length(lpa, rpa, pos["Cz"]), rel=3e-3)
    assert res["hc_mm"] == pytest.approx(
        circle_arc_length(pos["Fpz"], pos["Oz"], pos["T3"])
        + circle_arc_length(pos["Fpz"], pos["Oz"], pos["T4"]), rel=3e-3)
    assert res["hc_mm"] == pytest.approx(2 * math.pi * R_HEAD * math.cos(math.radians(18)),
                                         rel=1e-2)
    for name, (el, az) in {"Fpz": (18, 0), "Fz": (54, 0), "Oz": (18, 180), "T3": (18, 90),
                           "C3": (54, 90), "Fp1": (18, 18), "F7": (18, 54),
                           "F8": (18, -54)}.items():
        assert np.linalg.norm(pos[name] - on_sphere(el, az)) < tol, name
    f7, fz, f8 = on_sphere(18, 54), on_sphere(54, 0), on_sphere(18, -54)
    n = np.cross(fz - f7, f8 - f7)
    n /= np.linalg.norm(n)
    cc = C0 + ((f7 - C0) @ n) * n  # centre of the circle where the plane cuts the sphere
    a, b = f7 - cc, fz - cc
    half = math.acos(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) / 2
    w = b - (b @ a) / (a @ a) * a
    f3 = cc + math.cos(half) * a + math.sin(half) * np.linalg.norm(a) * w / np.linalg.norm(w)
    assert np.linalg.norm(pos["F3"] - f3) < tol
    assert pos["F3"][0] < C0[0] - 30  # the left side of the head


def beam_by_line_intersection(hc: float, ni: float, tt: float) -> tuple[float, float]:
    """Beam F3 re-derived as the crossing of two lines (numpy solve), not the closed form."""
    r1, r2 = 0.4 * ni, 0.4 * tt
    fz, c3 = np.array([0.0, -r1 / 2]), np.array([r2 / 2, 0.0])
    p1 = np.array([r2, r2 * math.sin(math.radians(324))])  # the calculator's Fz-line point
    p2 = r1 * np.array([math.cos(math.radians(298)), math.sin(math.radians(298))])
    d1, d2 = p1 - fz, p2 - c3
    t = np.linalg.solve(np.column_stack([d1, -d2]), c3 - fz)
    f3 = fz + t[0] * d1
    theta = math.degrees(math.atan(f3[1] / f3[0]))
    return hc / 4 * (90 + theta) / 90, 0.91 * float(np.linalg.norm(f3))


@pytest.mark.parametrize("hc, ni, tt", [(57.0, 35.0, 35.0), (54.0, 33.5, 34.0),
                                        (61.0, 38.0, 37.0), (58.4, 35.7, 36.4)])
def test_beam_f3_distances_match_an_independent_derivation(hc, ni, tt) -> None:
    x, y = sc.beam_f3_distances(hc, ni, tt)
    xi, yi = beam_by_line_intersection(hc, ni, tt)
    assert x == pytest.approx(xi, abs=1e-9) and y == pytest.approx(yi, abs=1e-9)
    # plausible BeamF3 outputs for adult heads: X a few cm round from the midline, Y ~9-10 cm
    assert 5.0 < x < 8.5 and 8.0 < y < 11.5
    # lengths in, lengths out: the result scales with the head (no hidden absolute constant)
    x2, y2 = sc.beam_f3_distances(10 * hc, 10 * ni, 10 * tt)
    assert x2 == pytest.approx(10 * x) and y2 == pytest.approx(10 * y)


def test_beam_f3_refuses_nonsense() -> None:
    with pytest.raises(InputError, match="must be positive"):
        sc.beam_f3_distances(0.0, 35.0, 35.0)


def test_beam_f3_walked_on_a_sphere(sphere) -> None:
    """X along the left half circumference from Fpz, then Y from Cz on the great circle."""
    surf, lm = sphere
    res = sc.ten_twenty(surf, lm)
    b = sc.beam_f3_on_scalp(surf, res, lm)
    x, y = sc.beam_f3_distances(res["hc_mm"], res["ni_mm"], res["tt_mm"])
    rc = R_HEAD * math.cos(math.radians(18))  # radius of the 18-degree circle
    a_pt = on_sphere(18, math.degrees(x / rc))
    assert np.linalg.norm(b["circumference_point_mm"] - a_pt) < 2.0
    want = rotate_toward(on_sphere(90, 0), a_pt, y)
    assert np.linalg.norm(b["scalp_mm"] - want) < 2.0
    assert b["scalp_mm"][0] < C0[0]  # left


def test_five_cm_rule_on_a_sphere(sphere) -> None:
    surf, _ = sphere
    hs = on_sphere(55, 60)  # left, a little anterior of the ear line
    f = sc.five_cm_rule(surf, surf.snap(hs)[0], np.array([0.0, 1.0, 0.0]), 50.0)
    p = f["scalp_mm"]
    ang = math.acos(((p - C0) @ (hs - C0)) / (np.linalg.norm(p - C0) * R_HEAD))
    assert R_HEAD * ang == pytest.approx(50.0, abs=1.0)  # 50 mm along the scalp
    assert p[1] > hs[1] + 30  # anterior
    # the walk stays in the parasagittal plane through the hotspot (spanned by the normal and
    # the anterior tangent): p is in that plane
    n = (hs - C0) / R_HEAD
    t = np.array([0.0, 1.0, 0.0]) - n[1] * n
    plane_n = np.cross(n, t / np.linalg.norm(t))
    assert abs((p - hs) @ plane_n) < 1.0


# ------------------------------------------------------------------------------------------
# landmarks
# ------------------------------------------------------------------------------------------


def write_landmarks(path: Path, rows: list[tuple]) -> Path:
    lines = ["participant_id\tsession_id\tname\tx\ty\tz"]
    lines += ["\t".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_landmarks_file(tmp_path: Path) -> None:
    p = write_landmarks(tmp_path / "lm.tsv", [
        ("sub-01", "", "Nz", 1, 2, 3), ("01", "", "LPA", -70, 0, 0),
        ("sub-01", "ses-2", "nasion", 4, 5, 6), ("sub-02", "", "nasion", 9, 9, 9),
        ("sub-01", "", "hotspot", -30, -20, 70)])
    got = sc.read_landmarks_tsv(p, "sub-01", None)
    assert set(got) == {"nasion", "lpa", "hotspot"} and got["nasion"].tolist() == [1, 2, 3]
    assert sc.read_landmarks_tsv(p, "01", "2")["nasion"].tolist() == [4, 5, 6]  # session wins
    write_landmarks(tmp_path / "bad.tsv", [("sub-01", "", "ear", 1, 2, 3)])
    with pytest.raises(InputError, match="unknown landmark name 'ear'"):
        sc.read_landmarks_tsv(tmp_path / "bad.tsv", "sub-01")
    write_landmarks(tmp_path / "twice.tsv", [("sub-01", "", "nz", 1, 2, 3),
                                             ("sub-01", "", "nasion", 1, 2, 4)])
    with pytest.raises(InputError, match="given twice"):
        sc.read_landmarks_tsv(tmp_path / "twice.tsv", "sub-01")


def test_user_landmarks_override_and_swapped_ears_are_refused(sphere, tmp_path) -> None:
    surf, _ = sphere
    ident = load_point_transform(itk.write_itk_txt_affine(tmp_path / "id.txt", np.eye(4)))
    user = sphere_landmarks()
    lm, warn = sc.find_landmarks(surf, ident, user=user)
    assert all(v.status == "user" for v in lm.values())
    # the small sphere is far from the template head: the deviations are reported
    assert warn and all("from where the template puts it" in w for w in warn)
    assert np.linalg.norm(lm["lpa"].t1w_mm - user["lpa"]) < 1.5
    swapped = dict(user, lpa=user["rpa"], rpa=user["lpa"])
    with pytest.raises(InputError, match="left and right are swapped"):
        sc.find_landmarks(surf, ident, user=swapped)


def test_template_landmark_without_scalp_is_estimated(sphere, tmp_path) -> None:
    """On the small sphere the template nasion (MNI 0, 87, -40) has no scalp near: it must be
    kept where the template puts it and flagged, not silently snapped far away."""
    surf, _ = sphere
    ident = load_point_transform(itk.write_itk_txt_affine(tmp_path / "id.txt", np.eye(4)))
    lm, warn = sc.find_landmarks(surf, ident, max_snap_mm=5.0)
    est = [k for k, v in lm.items() if v.status == "estimated"]
    assert est and all(any(k in w for w in warn) for k in est)
    for k in est:
        assert np.allclose(lm[k].t1w_mm, sc.TEMPLATE_FIDUCIALS_MNI[k])


# ------------------------------------------------------------------------------------------
# Colin27 (the sample anatomy) against FieldTrip's published 10-20 positions on that head
# ------------------------------------------------------------------------------------------

#: FieldTrip template/electrode/standard_1020.elc (Oostenveld & Praamstra 2001), MNI mm, on the
#: scalp of the Colin27-based MNI head of FieldTrip's standard BEM; computed by FieldTrip's own
#: 10-20 code from the same Nz/Iz/LPA/RPA.
FIELDTRIP_1020 = {
    "Fpz": (0.1123, 88.2470, -1.7130), "Fp1": (-29.4367, 83.9171, -6.9900),
    "F7": (-70.2629, 42.4743, -11.4200), "F3": (-50.2438, 53.1112, 42.1920),
    "Fz": (0.3122, 58.5120, 66.4620), "T3": (-84.1611, -16.0187, -9.3460),
    "C3": (-65.3581, -11.6317, 64.3580), "Cz": (0.4009, -9.1670, 100.2440),
    "Oz": (0.1076, -114.8920, 14.6570),
}


@pytest.fixture(scope="module")
def colin(tmp_path_factory):
    d = tmp_path_factory.mktemp("colin")
    model = build_head_model(COLIN)
    ident = load_point_transform(itk.write_itk_txt_affine(d / "id.txt", np.eye(4)))
    return model, sc.ScalpSurface(model), ident


def test_template_fiducials_on_colin27_scalp(colin) -> None:
    """The FieldTrip fiducials lie on this project's Colin27 scalp (so they are skin points of
    the head they were defined on, and the snapping moves them little)."""
    _, surf, ident = colin
    lm, warn = sc.find_landmarks(surf, ident)
    assert not warn
    for k, v in lm.items():
        assert v.status == "snapped" and v.snap_distance_mm < 3.0, (k, v.snap_distance_mm)


def test_ten_twenty_on_colin27_matches_fieldtrip(colin) -> None:
    _, surf, ident = colin
    lm, _ = sc.find_landmarks(surf, ident)
    pos = sc.ten_twenty(surf, lm)["positions"]
    for name, want in FIELDTRIP_1020.items():
        d = float(np.linalg.norm(pos[name] - np.asarray(want)))
        assert d < 5.0, (name, d, pos[name])


# ------------------------------------------------------------------------------------------
# the three heads: measurements against published adult ranges, F3 in the left DLPFC
# ------------------------------------------------------------------------------------------

#: Plausibility bands (mm), deliberately wide: adult head circumference is about 57 cm (men) and
#: 55 cm (women) with a standard deviation near 1.5-2 cm (Bushby et al. 1992, Arch Dis Child
#: 67:1286); nasion-inion and tragus-tragus over the vertex are typically 33-38 cm in adults.
#: Colin27 is stored in MNI space, which is larger than the average head, so its band reaches
#: higher.
ADULT = {"head_circumference_mm": (500.0, 625.0), "nasion_inion_mm": (300.0, 400.0),
         "tragus_tragus_mm": (300.0, 400.0)}


def _fixed_header_copy(src: Path, dest: Path) -> Path:
    img = nb.load(str(src))
    a = img.get_sform()
    img.set_qform(a, 1)
    img.set_sform(a, 1)
    nb.save(img, str(dest))
    return dest


def head_inputs(name: str, tmp: Path) -> dict[str, Path]:
    if name == "colin27":
        a = REPO / "data_sample" / "sub-01" / "anat" / "sub-01_"
        return {"t1w": Path(f"{a}desc-preproc_T1w.nii.gz"),
                "mask": Path(f"{a}desc-brain_mask.nii.gz"),
                "fwd": Path(f"{a}from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5"),
                "inv": Path(f"{a}from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.h5")}
    stem = {"pycortex": "pycortex-S1", "studyforrest": "studyforrest-sub-02"}[name]
    t1 = (HEADS / "pycortex-S1_T1w.nii.gz" if name == "pycortex"
          else _fixed_header_copy(REPO / "data_real" / "sub-02" / "anat" / "sub-02_T1w.nii.gz",
                                  tmp / "sub-02_T1w.nii.gz"))  # raw qform/sform differ 2e-3 mm
    return {"t1w": t1, "mask": HEADS / f"{stem}_desc-brain_mask.nii.gz",
            "fwd": HEADS / f"{stem}_from-T1w_to-MNI152NLin2009cAsym_desc-affine_xfm.txt",
            "inv": HEADS / f"{stem}_from-MNI152NLin2009cAsym_to-T1w_desc-affine_xfm.txt"}


@pytest.fixture(scope="module", params=["colin27", "pycortex", "studyforrest"])
def head(request, tmp_path_factory):
    from tmstarget.navigation import read_t1w_info

    p = head_inputs(request.param, tmp_path_factory.mktemp(request.param))
    model = build_head_model(p["t1w"], p["mask"])
    fwd, inv = load_point_transform(p["fwd"]), load_point_transform(p["inv"])
    plan = sc.plan_scalp_rules(model, fwd, inv, read_t1w_info(p["t1w"]), {}, {},
                               participant_id="sub-x", session_id=None, t1w_path=p["t1w"])
    return request.param, p, model, fwd, inv, plan


def test_head_measurements_in_adult_ranges(head) -> None:
    name, _, _, _, _, plan = head
    m = plan.record["measurements"]
    for k, (lo, hi) in ADULT.items():
        hi = hi + (20.0 if name == "colin27" else 0.0)
        assert lo <= m[k] <= hi, (name, k, m[k])
    print(f"\n{name}: HC {m['head_circumference_mm'] / 10:.1f} cm, NI "
          f"{m['nasion_inion_mm'] / 10:.1f} cm, TT {m['tragus_tragus_mm'] / 10:.1f} cm")


def test_f3_lands_in_the_left_dlpfc(head) -> None:
    """Both F3s: cortical point in the left-DLPFC search region, scalp point within 12 mm of
    FieldTrip's template F3 (MNI), and the two F3s close (Beam's method approximates 10-20)."""
    name, _, _, _, _, plan = head
    rules = plan.record["rules"]
    for m in ("beam_f3", "eeg_f3"):
        r = rules[m]
        assert r["hemisphere"] == "left" and r["in_left_dlpfc_search_region"], (name, m, r)
        assert r["cortical_mni_mm"][0] < -20
        d = np.linalg.norm(np.asarray(r["scalp_mni_mm"]) - FIELDTRIP_1020["F3"])
        assert d < 12.0, (name, m, r["scalp_mni_mm"])
        assert 8.0 <= r["scalp_to_cortex_mm"] <= 30.0, (name, m, r["scalp_to_cortex_mm"])
        print(f"\n{name} {m}: cortical MNI {r['cortical_mni_mm']}, scalp-to-cortex "
              f"{r['scalp_to_cortex_mm']} mm")
    gap = np.linalg.norm(np.asarray(rules["beam_f3"]["scalp_t1w_mm"])
                         - np.asarray(rules["eeg_f3"]["scalp_t1w_mm"]))
    assert gap < 15.0, (name, gap)
    assert rules["5cm"]["status"].startswith("not computed")


def test_defaced_head_flags_its_missing_nasion(head) -> None:
    name, _, _, _, _, plan = head
    lm = plan.record["landmarks"]
    if name == "studyforrest":  # defaced: no skin at the nasion
        assert lm["nasion"]["status"] == "estimated"
        assert "nasion" in plan.record["measurements"]["estimated_from_template"]
        assert any("nasion" in w for w in plan.record["warnings"])
    else:
        assert all(v["status"] == "snapped" for v in lm.values()), name


def _t1(p: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, float]:
    img = nb.load(str(p["t1w"]))
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data, np.asarray(img.affine, float), float(np.percentile(data[data > 0], 99))


def _sample(data: np.ndarray, aff: np.ndarray, pts: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    ijk = np.atleast_2d(pts) @ np.linalg.inv(aff)[:3, :3].T + np.linalg.inv(aff)[:3, 3]
    return ndi.map_coordinates(data, ijk.T, order=1, cval=0.0)


#: A left-DLPFC target (Fox et al. 2012 optimised coordinate, MNI) and the hand knob.
DLPFC_MNI = (-38.0, 44.0, 26.0)
HAND_MNI = (-37.0, -21.0, 58.0)


def test_coil_entry_on_the_scalp_normal_into_the_head(head) -> None:
    """At a left-DLPFC target and at the hand knob: the entry is where the T1w goes from
    tissue to air (intensity oracle, not the head mask), the into-head normal points at the
    target, and the scalp-to-cortex distance is adult-like (10-25 mm typical; 8-30 allowed)."""
    name, p, model, fwd, _, _ = head
    data, aff, p99 = _t1(p)
    air, tissue = 0.06 * p99, 0.10 * p99
    for where, mni in (("DLPFC", DLPFC_MNI), ("hand knob", HAND_MNI)):
        t = fwd.map(np.array([mni]))[0]
        geo = scalp_geometry(model, t, where=where)
        e, n = geo["entry_normal"], geo["normal_out"]
        outside = _sample(data, aff, e + np.outer([2.0, 3.0, 4.0], n))
        inside = _sample(data, aff, e - np.outer([1.5, 2.5, 3.5], n))
        assert np.all(outside < air), (name, where, outside)
        assert np.max(inside) > tissue, (name, where, inside)
        assert (t - e) @ (-n) > 0  # the into-head axis points at the target
        assert np.degrees(np.arccos(min(1.0, (t - e) @ (-n) / np.linalg.norm(t - e)))) < 5.0
        assert 8.0 <= geo["scalp_to_cortex_mm"] <= 30.0, (name, where,
                                                          geo["scalp_to_cortex_mm"])
        print(f"\n{name} {where}: scalp-to-cortex {geo['scalp_to_cortex_mm']:.1f} mm, "
              f"scalp-to-target {geo['scalp_to_target_normal_mm']:.1f} mm")


def test_head_mask_follows_the_scalp(head) -> None:
    """Above the ears, along rays from the head centre, the head-mask boundary is where the
    T1w intensity falls to the air level for good (within 3 mm in 95 % of rays): the mask does
    not stop inside the scalp nor spread into the background noise. No scalp point lies on
    the image border (the field of view cut is not scalp)."""
    name, p, model, _, _, plan = head
    data, aff, p99 = _t1(p)
    lm = plan.landmarks
    o, rot = sc.head_frame(lm)
    centre = o + 0.4 * (plan.ten_twenty["positions"]["Cz"] - o)
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(400, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    dirs = dirs[(dirs @ rot[2]) > 0.2]  # upward of the ear plane
    mask_edge, _ = plan.surface.edge(centre, dirs)
    t = np.arange(0.0, 200.0, 0.5)
    errs = []
    for d, me in zip(dirs, mask_edge):
        prof = _sample(data, aff, centre + np.outer(t, d))
        low = prof < 0.06 * p99
        # the last sample that is tissue with nothing but air for the next 10 mm
        k = next(i for i in range(len(t) - 20) if low[i:i + 20].all() and i > 0)
        errs.append(abs(t[k] - np.linalg.norm(me - centre)))
    errs = np.asarray(errs)
    assert np.quantile(errs, 0.95) < 3.0, (name, np.quantile(errs, [0.5, 0.95, 1.0]))
    ijk = np.rint(nb.affines.apply_affine(np.linalg.inv(model.affine), model.surface))
    assert not np.any((ijk == 0) | (ijk == np.asarray(model.head.shape) - 1))


def _restore(src: Path, dest: Path, orient: str) -> Path:
    """The same image (same world coordinates) stored in another voxel order."""
    img = nb.load(str(src))
    if orient == "RAS":
        out = nb.as_closest_canonical(img)
    else:  # LPS: flip the first two axes of the canonical image
        can = nb.as_closest_canonical(img)
        data = np.asarray(can.dataobj)[::-1, ::-1, :]
        aff = can.affine @ np.array([[-1, 0, 0, data.shape[0] - 1],
                                     [0, -1, 0, data.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
        out = nb.Nifti1Image(data, aff)
    out.set_qform(out.affine, 1)
    out.set_sform(out.affine, 1)
    nb.save(out, str(dest))
    return dest


def test_real_head_storage_order_does_not_move_the_scalp_rules(tmp_path: Path) -> None:
    """pycortex (stored LIA) re-stored RAS and LPS: same landmarks, F3s and coil centres (world
    mm) within a voxel, and F3 stays on the left in MNI."""
    from tmstarget.navigation import read_t1w_info

    p = head_inputs("pycortex", tmp_path)
    fwd, inv = load_point_transform(p["fwd"]), load_point_transform(p["inv"])
    got = {}
    for orient in ("LIA", "RAS", "LPS"):
        if orient == "LIA":
            t1, mask = p["t1w"], p["mask"]
        else:
            t1 = _restore(p["t1w"], tmp_path / f"t1_{orient}.nii.gz", orient)
            mask = _restore(p["mask"], tmp_path / f"mask_{orient}.nii.gz", orient)
            assert "".join(nb.aff2axcodes(nb.load(str(t1)).affine)) == orient
        model = build_head_model(t1, mask)
        plan = sc.plan_scalp_rules(model, fwd, inv, read_t1w_info(t1), {"methods": [
            "beam_f3", "eeg_f3"]}, {}, participant_id="sub-x", session_id=None)
        got[orient] = plan.record
    for orient in ("RAS", "LPS"):
        for m in ("beam_f3", "eeg_f3"):
            a, b = got["LIA"]["rules"][m], got[orient]["rules"][m]
            for k in ("scalp_t1w_mm", "cortical_t1w_mm"):
                assert np.linalg.norm(np.subtract(a[k], b[k])) < 1.0, (orient, m, k)
            assert b["cortical_mni_mm"][0] < -20
        for k in ("head_circumference_mm", "nasion_inion_mm", "tragus_tragus_mm"):
            assert abs(got["LIA"]["measurements"][k] - got[orient]["measurements"][k]) < 2.0


def test_r_at_the_cortical_point_and_inverse_without_the_inverse_file(tmp_path: Path) -> None:
    """r is read from the MNI map at the cortical point mapped back to MNI: a map whose value is
    x/100 gives cortical_mni_x/100. Without the T1w->MNI file, the MNI->T1w map is inverted
    numerically and gives the same MNI point."""
    from tmstarget.navigation import read_t1w_info

    p = head_inputs("colin27", tmp_path)
    model = build_head_model(p["t1w"], p["mask"])
    fwd, inv = load_point_transform(p["fwd"]), load_point_transform(p["inv"])
    shape, aff = (97, 115, 97), np.array([[2.0, 0, 0, -96], [0, 2, 0, -132], [0, 0, 2, -78],
                                           [0, 0, 0, 1]])
    ijk = np.indices(shape).reshape(3, -1).T
    x = (ijk @ aff[:3, :3].T + aff[:3, 3])[:, 0].reshape(shape)
    rmap = nb.Nifti1Image((x / 100.0).astype(np.float32), aff)
    info = read_t1w_info(p["t1w"])
    cfg = {"methods": ["eeg_f3"]}
    a = sc.plan_scalp_rules(model, fwd, inv, info, cfg, {}, participant_id="sub-x",
                            session_id=None, rmap=rmap).record["rules"]["eeg_f3"]
    b = sc.plan_scalp_rules(model, fwd, None, info, cfg, {}, participant_id="sub-x",
                            session_id=None, rmap=rmap).record["rules"]["eeg_f3"]
    assert np.linalg.norm(np.subtract(a["cortical_mni_mm"], b["cortical_mni_mm"])) < 0.05
    vox_x = round((a["cortical_mni_mm"][0] + 96) / 2) * 2 - 96  # nearest voxel centre
    assert a["r"] == pytest.approx(vox_x / 100, abs=1e-4)
    assert a["r_mean_5mm"] == pytest.approx(a["cortical_mni_mm"][0] / 100, abs=0.01)


@pytest.mark.parametrize("vox", [1.3, 1.37, 1.45])
def test_head_model_figure_on_any_grid_draws_the_scalp_where_it_is(tmp_path: Path, vox) -> None:
    """The QC figure's contours share the slice grid (a 0.7 mm real T1w once failed with
    "Length of x (276) must match number of columns in z (277)"), and the red scalp contour
    lies on the sphere's true radius in every view (closed form, not our head model)."""
    from types import SimpleNamespace

    import matplotlib

    matplotlib.use("Agg")
    r_head, c0 = 40.0, np.array([3.3, -7.1, 5.2])
    n = int(2 * (r_head + 8) / vox)
    aff = np.eye(4)
    aff[:3, :3] *= vox
    aff[:3, 3] = c0 - vox * (n - 1) / 2
    ijk = np.indices((n, n, n)).reshape(3, -1).T.astype(float)
    r = np.linalg.norm(ijk @ aff[:3, :3].T + aff[:3, 3] - c0, axis=1).reshape(n, n, n)
    head = r <= r_head
    t1 = tmp_path / "t1w.nii.gz"
    nb.save(nb.Nifti1Image(np.where(head, 100, 0).astype(np.int16), aff), str(t1))
    model = SimpleNamespace(head=head, brain=r <= r_head - 10, affine=aff)
    fig = sc.head_model_figure(t1, model, {}, c0)
    try:
        for ax in fig.axes[:3]:
            red = [c for c in ax.collections if hasattr(c, "get_paths")][0]
            pts = np.concatenate([p.vertices for p in red.get_paths() if len(p.vertices)])
            centre2 = np.median(pts, axis=0)
            radius = np.linalg.norm(pts - pts.mean(axis=0), axis=1)
            # the slice passes through the sphere's centre in each view: a circle of r_head
            assert np.all(np.abs(radius - r_head) < 1.5 * vox), (vox, radius.min(), radius.max())
            assert np.linalg.norm(centre2 - pts.mean(axis=0)) < 1.5 * vox
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_scalp_rule_colours_are_not_method_colours():
    """One colour per method across the report's figures: the scalp-model figure's scalp rules
    use colours no target method uses, and the connectivity marker takes the colour it is
    given (the exported method's)."""
    from tmstarget import scalp
    from tmstarget.report import METHOD_COLOURS

    rules = {k: v for k, v in scalp._COLOURS.items() if k != "connectivity"}
    assert not set(rules.values()) & set(METHOD_COLOURS.values())
    assert scalp._marker_colour("connectivity", {"colour": METHOD_COLOURS["cluster"]}) == \
        METHOD_COLOURS["cluster"]
    assert scalp._marker_colour("beam_f3", {}) == rules["beam_f3"]
