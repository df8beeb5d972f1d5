"""Neuronavigation exports: vendor golden files, independent round trips, laterality canaries,
refusals and hostile labels.

The readers in ``tmstarget.navreaders`` are written independently of the writers; Slicer files
are also read with ``slicerio``. Vendor files live in ``tests/data/navigation`` (see its README).
"""

from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from conftest import storage_affine

from tmstarget import navigation as nav
from tmstarget import navreaders as rd
from tmstarget.errors import InputError

DATA = Path(__file__).parent / "data" / "navigation"
BRAINSIGHT_VENDOR = DATA / "brainsight" / "Subj1PMC_Hotspot+Block1_Brainsight2.5b2_vendor.txt"
LOCALITE_IM = DATA / "localite" / "InstrumentMarker20240902120310221_MNI.xml"
LOCALITE_TM = DATA / "localite" / "TriggerMarkers_Coil0_20240905174623052_MNI.xml"
SLICER_FCSV = DATA / "slicer" / "F_1_slicerio.fcsv"

#: Rough head centre in MNI space (mm) for the Localite "MNI" files.
MNI_HEAD_CENTRE = np.array([0.0, -20.0, 20.0])

LEFT_DLPFC = np.array([-40.0, 30.0, 35.0])
HEAD_CENTRE = np.array([0.0, -10.0, 20.0])


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def rot_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (rad) of the rotation taking a to b (3x3)."""
    c = (np.trace(a.T @ b) - 1.0) / 2.0
    return float(math.acos(max(-1.0, min(1.0, c))))


def assert_same_pose(
    read: np.ndarray, want: np.ndarray, tol_mm: float = 1e-4, tol_rad: float = 1e-4
) -> None:
    assert np.linalg.norm(read[:3, 3] - want[:3, 3]) < tol_mm
    assert rot_angle(read[:3, :3], want[:3, :3]) < tol_rad
    assert np.allclose(read[3], [0, 0, 0, 1])


RAS_BASE = np.array([[2.0, 0, 0, -96.0], [0, 2.0, 0, -120.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1]])
SHAPE = (97, 113, 97)


def affine_for(orient: str) -> np.ndarray:
    """Voxel-to-world affines storing the same world box in different voxel orders."""
    return storage_affine(orient, RAS_BASE, SHAPE)


def make_t1w(
    path: Path,
    orient: str = "RAS",
    *,
    qcode: int = 1,
    scode: int = 1,
    sform: np.ndarray | None = None,
) -> Path:
    """Small synthetic head (ellipsoid) whose world content is the same in every orientation."""
    aff = affine_for(orient)
    ijk = np.indices(SHAPE).reshape(3, -1).T.astype(float)
    xyz = ijk @ aff[:3, :3].T + aff[:3, 3]
    inside = (
        (xyz[:, 0] / 75) ** 2 + ((xyz[:, 1] + 10) / 95) ** 2 + ((xyz[:, 2] - 20) / 80) ** 2
    ) <= 1
    data = (inside.reshape(SHAPE) * 100).astype(np.int16)
    img = nb.Nifti1Image(data, aff)
    img.set_qform(aff, code=qcode)
    img.set_sform(aff if sform is None else sform, code=scode)
    nb.save(img, str(path))
    return path


def left_dlpfc_pose(t1w: Path, name: str = "L-DLPFC") -> nav.CoilPose:
    normal = (LEFT_DLPFC - HEAD_CENTRE) / np.linalg.norm(LEFT_DLPFC - HEAD_CENTRE)
    centre = LEFT_DLPFC + 18.0 * normal
    handle = nav.handle_direction(normal, 45.0, "left")
    return nav.pose_from_geometry(
        centre, normal, handle, LEFT_DLPFC, t1w=t1w, name=name, entry=LEFT_DLPFC + 15.0 * normal
    )


@pytest.fixture
def t1w_ras(tmp_path: Path) -> Path:
    return make_t1w(tmp_path / "sub-01_T1w.nii.gz", "RAS")


# ------------------------------------------------------------------------------------------
# vendor files
# ------------------------------------------------------------------------------------------


def test_vendor_brainsight_matrices_axes_and_repaired_target() -> None:
    f = rd.read_brainsight(BRAINSIGHT_VENDOR)
    assert f.version == 12 and f.coordinate_system == "Brainsight"
    assert not f.is_nifti_world  # Brainsight's own LPS frame, not NIfTI world
    assert [t.name for t in f.targets] == ["PMC", "Sample 7", "Sample 12", "PMC0.5"]
    assert len(f.samples) == 338
    assert f.head_centre is not None and len(f.landmarks) == 5
    # "X=right->left": the left tragus has the larger x.
    assert f.landmarks["Left tragus"][0] > f.landmarks["right tragus"][0]

    rows = f.targets + f.samples
    for row in rows:
        assert row.det == pytest.approx(1.0, abs=1e-3), row.name  # 4-decimal rounding
        assert row.orthonormality_error < 1e-3, row.name
        assert not row.left_handed
        assert np.linalg.det(row.matrix[:3, :3]) > 0

    # Brainsight z points OUT of the head, i.e. SimNIBS z into it. Sample 1 was recorded with
    # the tracker lost (~500 mm from the head) and is the only row excluded; samples 4-5
    # (~300 mm, coil lifted away) still point outward.
    far = [r.name for r in rows if np.linalg.norm(r.position - f.head_centre) > 400]
    assert far == ["Sample 1"]
    for row in rows:
        if row.name in far or row.name == "PMC0.5":
            continue
        outward = (row.position - f.head_centre) / np.linalg.norm(row.position - f.head_centre)
        assert row.brainsight_matrix[:3, 2] @ outward > 0, row.name
        assert row.matrix[:3, 2] @ outward < 0, row.name

    by_name = {t.name: t for t in f.targets}
    bad = by_name["PMC0.5"]
    assert bad.repaired_suspect and bad.samples_flipped and bad.z_points_inward
    assert "reversed" in bad.evidence
    for good in ("PMC", "Sample 7", "Sample 12"):
        assert not by_name[good].repaired_suspect, by_name[good].evidence
    # Undoing the repair (negating x back) gives a det -1 matrix whose x, y agree with how the
    # coil was actually held and whose z is reversed: the left-handed import.
    held = np.median(
        [s.brainsight_matrix[:3, :3] for s in f.samples if s.fields["Assoc. Target"] == "PMC0.5"],
        axis=0,
    )
    original = bad.brainsight_matrix[:3, :3] @ np.diag([-1.0, 1, 1])
    assert np.linalg.det(original) < 0
    assert [float(original[:, a] @ held[:, a]) > 0.9 for a in range(3)] == [True, True, False]


def test_vendor_localite_instrument_marker_into_head() -> None:
    f = rd.read_localite_instrument_markers(LOCALITE_IM)
    assert f.root_tag == "InstrumentMarkerList" and f.coordinate_space == "MNI"
    assert not f.is_ras
    (m,) = f.markers
    assert m.name == "HOTSPOT" and m.kind == "InstrumentMarker" and not m.untracked
    assert m.det == pytest.approx(1.0, abs=1e-4) and m.orthonormality_error < 1e-4
    inward = MNI_HEAD_CENTRE - m.localite_matrix[:3, 3]
    inward /= np.linalg.norm(inward)
    assert m.localite_matrix[:3, 0] @ inward > 0.9  # Localite x into the head
    assert m.matrix[:3, 2] @ inward > 0.9  # = SimNIBS z
    assert np.linalg.det(m.matrix[:3, :3]) > 0
    assert m.localite_matrix[0, 3] < 0  # left motor hotspot


def test_vendor_localite_trigger_markers_into_head() -> None:
    f = rd.read_localite_markers(LOCALITE_TM)
    assert f.root_tag == "TriggerMarkerList" and len(f.markers) == 361
    for m in f.markers:
        assert m.kind == "TriggerMarker"
        assert m.det == pytest.approx(1.0, abs=5e-4) and m.orthonormality_error < 5e-4
        v = MNI_HEAD_CENTRE - m.localite_matrix[:3, 3]
        dist = np.linalg.norm(v)
        cos = m.localite_matrix[:3, 0] @ v / dist
        assert cos > 0
        if dist < 150:  # coil on the head (a few markers were recorded with the coil lifted)
            assert cos > 0.7
        assert np.allclose(m.matrix[:3, 2], m.localite_matrix[:3, 0])


def test_vendor_slicer_fcsv_extra_fields_and_lps() -> None:
    import slicerio

    f = rd.read_fcsv(SLICER_FCSV)
    assert f.coordinate_system == "LPS" and len(f.columns) == 14
    assert len(f.points) == 12
    assert all(len(p.extra) == 2 for p in f.points)  # 16 fields on 14 declared columns
    labels = [p.label for p in f.points]
    assert "Different name" in labels
    assert f.points[1].description == "Some description"
    ref = slicerio.read_markups_fcsv(str(SLICER_FCSV))["markups"][0]
    assert ref["coordinateSystem"] == "LPS"
    for p, cp in zip(f.points, ref["controlPoints"]):
        assert p.label == cp["label"]
        assert np.allclose(p.position_in_file, cp["position"])
        assert np.allclose(p.position, np.array(cp["position"]) * [-1, -1, 1])  # LPS -> RAS


# ------------------------------------------------------------------------------------------
# pose construction
# ------------------------------------------------------------------------------------------


def test_pose_axes_and_handle_convention(t1w_ras: Path) -> None:
    pose = left_dlpfc_pose(t1w_ras)
    m = pose.matrix
    normal = (LEFT_DLPFC - HEAD_CENTRE) / np.linalg.norm(LEFT_DLPFC - HEAD_CENTRE)
    assert np.allclose(m[:3, 2], -normal)  # z into the head
    assert np.allclose(m[:3, :3].T @ m[:3, :3], np.eye(3)) and np.linalg.det(
        m[:3, :3]
    ) == pytest.approx(1)
    assert np.allclose(np.cross(m[:3, 1], m[:3, 2]), m[:3, 0])
    h = nav.handle_direction(normal, 45.0, "left")
    assert abs(h @ normal) < 1e-12
    assert h[1] < 0 and h[0] < 0  # posterior and to the left
    assert np.allclose(m[:3, 1], -h)  # y away from the handle
    post = np.array([0, -1.0, 0]) - (np.array([0, -1.0, 0]) @ normal) * normal
    post /= np.linalg.norm(post)
    assert math.degrees(math.acos(h @ post)) == pytest.approx(45.0)
    mirror = np.array([-1.0, 1.0, 1.0])  # right-hemisphere twin: the convention is mirror-symmetric
    h_right = nav.handle_direction(normal * mirror, 45.0, "right")
    assert h_right[0] > 0 and np.allclose(h_right, h * mirror)
    assert np.allclose(nav.handle_direction(normal, 0.0), post)
    assert (pose.target_mm - pose.center_mm) @ m[:3, 2] > 0


# ------------------------------------------------------------------------------------------
# write -> independent read
# ------------------------------------------------------------------------------------------


def test_roundtrip_every_format(tmp_path: Path, t1w_ras: Path) -> None:
    import slicerio

    pose = left_dlpfc_pose(t1w_ras)
    out = nav.write_all(pose, t1w_ras, tmp_path / "nav", "sub-01_target-dlpfc")
    assert set(out) == set(nav.ALL_FORMATS)
    assert not [p for p in (tmp_path / "nav").iterdir() if p.name.startswith(".")]  # no temp files
    M = pose.matrix

    for key, version, coord in (
        ("brainsight", 14, "NIfTI:Q:Scanner"),
        ("brainsight_v12", 12, "NIfTI:Scanner"),
    ):
        b = rd.read_brainsight(out[key])
        assert b.version == version and b.coordinate_system == coord and b.is_nifti_world
        t, tc = b.targets
        assert t.name == "L-DLPFC" and not t.repaired_suspect and t.det == pytest.approx(1)
        assert_same_pose(t.matrix, M)
        # the cortical target: a trajectory target with the coil's orientation
        assert tc.name == "L-DLPFC trajectory" and not tc.repaired_suspect
        assert np.allclose(tc.matrix[:3, 3], pose.target_mm, atol=1e-5)
        assert np.allclose(tc.matrix[:3, :3], M[:3, :3], atol=1e-6)
        assert "sub-01_T1w.nii.gz" in b.header["Notes"] and "space T1w" in b.header["Notes"]

    lf = rd.read_localite_instrument_markers(out["localite_instrument_markers"])
    assert lf.coordinate_space == "RAS"
    assert_same_pose(lf.markers[0].matrix, M)
    assert lf.markers[0].name == "L-DLPFC"
    assert any("sub-01_T1w.nii.gz" in c and "T1w" in c for c in lf.comments)

    pairs, comments = rd.read_localite_entry_target(out["localite_entry_target"])
    (pair,) = pairs
    assert np.allclose(pair.entry, pose.entry_mm, atol=1e-6) and np.allclose(
        pair.target, pose.target_mm, atol=1e-6
    )
    assert any("sub-01_T1w.nii.gz" in c for c in comments)

    ant = rd.read_ant_mrk(out["ant_mrk"])
    (am,) = ant.markers
    assert am.name == "L-DLPFC"
    assert_same_pose(am.matrix, M)
    assert np.allclose(ant.qform, nb.load(str(t1w_ras)).header.get_qform(), atol=1e-4)
    assert ant.source_info["AssociatedImageFile"] == "sub-01_T1w.nii.gz"

    pts = rd.read_slicer_markups_json(out["slicer_mrk_json"])
    assert [p.label for p in pts] == ["L-DLPFC", "L-DLPFC entry"]
    assert np.allclose(pts[0].position, pose.target_mm) and np.allclose(
        pts[1].position, pose.entry_mm
    )
    assert rot_angle(pts[0].orientation, M[:3, :3]) < 1e-6
    assert "sub-01_T1w.nii.gz" in pts[0].description
    # Our JSON has the same skeleton slicerio writes when converting our .fcsv.
    ref_json = slicerio.fcsv_to_markups_json(out["fcsv"], tmp_path / "ref.mrk.json")
    ref = json.loads(Path(ref_json).read_text())
    ours = json.loads(out["slicer_mrk_json"].read_text())
    assert ours["@schema"] == ref["@schema"]
    assert ours["markups"][0]["type"] == ref["markups"][0]["type"] == "Fiducial"
    assert ours["markups"][0]["coordinateSystem"] == ref["markups"][0]["coordinateSystem"] == "RAS"
    assert [cp["label"] for cp in ours["markups"][0]["controlPoints"]] == [
        cp["label"] for cp in ref["markups"][0]["controlPoints"]
    ]

    fc = rd.read_fcsv(out["fcsv"])
    assert fc.coordinate_system == "RAS"
    assert np.allclose(fc.points[0].position, pose.target_mm) and np.allclose(
        fc.points[1].position, pose.entry_mm
    )
    ref_fcsv = slicerio.read_markups_fcsv(str(out["fcsv"]))["markups"][0]
    assert ref_fcsv["coordinateSystem"] == "RAS"
    assert np.allclose(ref_fcsv["controlPoints"][0]["position"], pose.target_mm)
    assert np.allclose(ref_fcsv["controlPoints"][1]["position"], pose.entry_mm)

    with open(out["csv"], newline="", encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))
    got = np.eye(4)
    for i in range(4):
        for j in range(4):
            got[i, j] = float(row[f"coil_matrix_{i}{j}"])
    assert_same_pose(got, M)
    assert row["space"] == "T1w" and row["image_name"] == "sub-01_T1w.nii.gz"
    assert row["image_sha256"] == pose.image_sha256 and row["qform_code"] == "1"
    vec = {
        k: np.array([float(row[f"{k}_{a}"]) for a in "xyz"])
        for k in ("target", "entry", "coil_center", "normal_out", "handle")
    }
    assert np.allclose(vec["target"], pose.target_mm) and np.allclose(vec["entry"], pose.entry_mm)
    assert np.allclose(-vec["normal_out"], M[:3, 2]) and np.allclose(-vec["handle"], M[:3, 1])

    doc = json.loads(out["json"].read_text(encoding="utf-8"))
    assert_same_pose(np.array(doc["coil_matrix"]), M)
    assert doc["image_name"] == "sub-01_T1w.nii.gz" and doc["space"] == "T1w"
    assert np.allclose(doc["qform"], nb.load(str(t1w_ras)).header.get_qform())

    sph = nb.load(str(out["nifti_sphere"]))
    assert sph.get_data_dtype() == np.uint8
    assert np.allclose(sph.header.get_qform(), nb.load(str(t1w_ras)).header.get_qform())
    assert int(sph.header["qform_code"]) == 1 and int(sph.header["sform_code"]) == 1


def test_localite_lps_roundtrip(tmp_path: Path, t1w_ras: Path) -> None:
    pose = left_dlpfc_pose(t1w_ras)
    p = nav.write_localite_instrument_markers(pose, tmp_path / "im.xml", coordinate_space="LPS")
    f = rd.read_localite_instrument_markers(p)
    assert f.coordinate_space == "LPS"
    m = f.markers[0]
    assert m.localite_matrix[0, 3] == pytest.approx(-pose.center_mm[0])  # raw LPS: x sign flips
    assert m.localite_matrix[1, 3] == pytest.approx(-pose.center_mm[1])
    assert_same_pose(m.matrix, pose.matrix)
    pairs, _ = rd.read_localite_entry_target(
        nav.write_localite_entry_target(pose, tmp_path / "et.xml", coordinate_space="LPS")
    )
    assert np.allclose(pairs[0].target, pose.target_mm)
    raw = ET.parse(tmp_path / "et.xml").getroot()
    assert (
        float(next(raw.iter("Target")).find("Marker/ColVec3D").get("data0")) > 0
    )  # left = +x in LPS


def test_brainsight_names_follow_header_codes(tmp_path: Path) -> None:
    t1 = make_t1w(tmp_path / "t1.nii.gz", qcode=2, scode=4)
    pose = left_dlpfc_pose(t1)
    assert nav.brainsight_coordinate_system(pose, 14) == "NIfTI:Q:Aligned"
    assert nav.brainsight_coordinate_system(pose, 14, "s") == "NIfTI:S:MNI-152"
    assert nav.brainsight_coordinate_system(pose, 12) == "NIfTI:Aligned"
    p = nav.write_brainsight(pose, tmp_path / "bs.txt", version=14, form="s")
    assert rd.read_brainsight(p).coordinate_system == "NIfTI:S:MNI-152"
    t3 = make_t1w(tmp_path / "t3.nii.gz", qcode=3, scode=3)
    assert nav.brainsight_coordinate_system(left_dlpfc_pose(t3), 12) == "NIfTI:Talairach"


# ------------------------------------------------------------------------------------------
# laterality canaries
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orient", ["RAS", "LAS", "LPS", "oblique"])
def test_laterality_canary(tmp_path: Path, orient: str) -> None:
    t1 = make_t1w(tmp_path / f"sub-01_acq-{orient}_T1w.nii.gz", orient)
    img = nb.load(str(t1))
    if orient == "LAS":
        assert nb.aff2axcodes(img.affine) == ("L", "A", "S")
    if orient == "LPS":
        assert nb.aff2axcodes(img.affine) == ("L", "P", "S")
    pose = left_dlpfc_pose(t1)
    out = nav.write_all(pose, t1, tmp_path / "out", "canary", localite_space="RAS")
    lps = nav.write_localite_instrument_markers(
        pose, tmp_path / "out" / "lps.xml", coordinate_space="LPS"
    )

    found: dict[str, np.ndarray] = {}
    found["brainsight"] = rd.read_brainsight(out["brainsight"]).targets[0].matrix[:3, 3]
    found["brainsight_v12"] = rd.read_brainsight(out["brainsight_v12"]).targets[0].matrix[:3, 3]
    found["brainsight_cortical_target"] = rd.read_brainsight(out["brainsight"]).targets[1].matrix[:3, 3]
    found["localite"] = (
        rd.read_localite_instrument_markers(out["localite_instrument_markers"])
        .markers[0]
        .matrix[:3, 3]
    )
    found["localite_lps"] = rd.read_localite_instrument_markers(lps).markers[0].matrix[:3, 3]
    pair = rd.read_localite_entry_target(out["localite_entry_target"])[0][0]
    found["localite_target"], found["localite_entry"] = pair.target, pair.entry
    found["ant"] = rd.read_ant_mrk(out["ant_mrk"]).markers[0].matrix[:3, 3]
    pts = rd.read_slicer_markups_json(out["slicer_mrk_json"])
    found["slicer_target"], found["slicer_entry"] = pts[0].position, pts[1].position
    fc = rd.read_fcsv(out["fcsv"]).points
    found["fcsv_target"], found["fcsv_entry"] = fc[0].position, fc[1].position
    with open(out["csv"], newline="", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    found["csv_target"] = np.array([float(row[f"target_{a}"]) for a in "xyz"])
    found["json_target"] = np.array(json.loads(out["json"].read_text())["target_mm"])

    sph = nb.load(str(out["nifti_sphere"]))
    ijk = np.argwhere(np.asarray(sph.dataobj) > 0).astype(float)
    assert len(ijk) > 20
    world = ijk @ sph.affine[:3, :3].T + sph.affine[:3, 3]
    found["sphere_centroid"] = world.mean(axis=0)
    assert np.linalg.norm(found["sphere_centroid"] - LEFT_DLPFC) < 0.5
    assert np.linalg.norm(world - LEFT_DLPFC, axis=1).max() <= 5.0 + 1e-6

    expected = {"target": LEFT_DLPFC, "entry": pose.entry_mm, "centre": pose.center_mm}
    for key, pos in found.items():
        kind = (
            "target"
            if ("target" in key or key == "sphere_centroid")
            else "entry"
            if "entry" in key
            else "centre"
        )
        assert np.linalg.norm(pos - expected[kind]) < 0.5, (orient, key, pos)
        assert pos[0] < 0, (orient, key, pos)  # left hemisphere stays left

    # The ANT file binds to this image's qform; the sphere carries this image's header.
    assert np.allclose(rd.read_ant_mrk(out["ant_mrk"]).qform, img.header.get_qform(), atol=1e-4)
    assert np.allclose(sph.affine, img.affine, atol=1e-5)


# ------------------------------------------------------------------------------------------
# refusals
# ------------------------------------------------------------------------------------------


def _no_files(d: Path) -> bool:
    return not d.exists() or not any(d.iterdir())


def test_refuse_qform_sform_disagree(tmp_path: Path, t1w_ras: Path) -> None:
    shifted = RAS_BASE.copy()
    shifted[0, 3] += 2.0
    bad = make_t1w(tmp_path / "shifted_T1w.nii.gz", sform=shifted)
    with pytest.raises(
        InputError, match=r"shifted_T1w\.nii\.gz: .*qform and sform disagree by up to 2 mm"
    ):
        left_dlpfc_pose(bad)
    mirrored = RAS_BASE @ np.array(
        [[-1.0, 0, 0, SHAPE[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    bad2 = make_t1w(tmp_path / "mirror_T1w.nii.gz", sform=mirrored)
    with pytest.raises(InputError, match="mirrored"):
        nav.read_t1w_info(bad2)
    # A good pose exported against the bad image: refused, nothing written.
    pose = left_dlpfc_pose(t1w_ras)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="shifted_T1w"):
        nav.write_all(pose, bad, out, "x")
    assert _no_files(out)


@pytest.mark.parametrize("qcode,scode", [(0, 0), (0, 1), (1, 0)])
def test_refuse_zero_codes(tmp_path: Path, qcode: int, scode: int) -> None:
    bad = make_t1w(tmp_path / "nocode_T1w.nii.gz", qcode=qcode, scode=scode)
    with pytest.raises(InputError, match=r"nocode_T1w\.nii\.gz: .*code 0"):
        left_dlpfc_pose(bad)
    with pytest.raises(InputError, match="What to do"):
        nav.read_t1w_info(bad)


def _pose_kwargs(pose: nav.CoilPose) -> dict:
    return {
        "target_mm": pose.target_mm,
        "entry_mm": pose.entry_mm,
        "name": pose.name,
        "image_name": pose.image_name,
        "image_sha256": pose.image_sha256,
        "image_shape": pose.image_shape,
        "qform_code": pose.qform_code,
        "sform_code": pose.sform_code,
        "qform": pose.qform,
        "sform": pose.sform,
    }


def test_refuse_left_handed_matrix(tmp_path: Path, t1w_ras: Path) -> None:
    good = left_dlpfc_pose(t1w_ras)
    left = good.matrix @ np.diag([-1.0, 1, 1, 1])
    with pytest.raises(InputError, match="left-handed"):
        nav.CoilPose(matrix=left, **_pose_kwargs(good))
    # the "Brainsight repair" of a z-only flip is right-handed but puts the coil upside down
    upside = good.matrix @ np.diag([-1.0, 1, -1, 1])
    with pytest.raises(InputError, match="outside of the coil"):
        nav.CoilPose(matrix=upside, **_pose_kwargs(good))
    with pytest.raises(InputError, match="outside of the coil"):  # inward normal passed by mistake
        nav.pose_from_geometry(
            good.center_mm, good.matrix[:3, 2], good.handle, good.target_mm, t1w=t1w_ras
        )
    with pytest.raises(ValueError):  # arrays are read-only: a valid pose cannot be bent later
        good.matrix[0, 0] = -good.matrix[0, 0]
    assert _no_files(tmp_path / "none")


def test_refuse_non_orthonormal_matrix(t1w_ras: Path) -> None:
    good = left_dlpfc_pose(t1w_ras)
    scaled = good.matrix.copy()
    scaled[:3, :3] *= 1.01
    with pytest.raises(InputError, match="not orthonormal"):
        nav.CoilPose(matrix=scaled, **_pose_kwargs(good))
    sheared = good.matrix.copy()
    sheared[:3, 0] += 1e-3 * sheared[:3, 1]
    with pytest.raises(InputError, match="not orthonormal"):
        nav.CoilPose(matrix=sheared, **_pose_kwargs(good))
    bottom = good.matrix.copy()
    bottom[3, 0] = 0.1
    with pytest.raises(InputError, match="last matrix row"):
        nav.CoilPose(matrix=bottom, **_pose_kwargs(good))


def test_qform_quaternion_fields_checked(tmp_path: Path) -> None:
    t1 = make_t1w(tmp_path / "las_T1w.nii.gz", "LAS")  # qfac -1
    good = left_dlpfc_pose(t1)
    derived = nav.CoilPose(matrix=good.matrix, **_pose_kwargs(good))  # fields derived from qform
    qd = rd.nifti_quaternion_to_affine(derived.quatern, derived.qoffset, derived.pixdim)
    assert np.allclose(qd, good.qform, atol=1e-4)
    with pytest.raises(InputError, match="ANT visor2 file would be bound"):
        nav.CoilPose(
            matrix=good.matrix,
            quatern=good.quatern,
            qoffset=good.qoffset,
            pixdim=(1.0, *good.pixdim[1:]),  # qfac sign lost: a mirrored qform
            **_pose_kwargs(good),
        )


def test_refuse_other_t1w_at_export(tmp_path: Path, t1w_ras: Path) -> None:
    pose = left_dlpfc_pose(t1w_ras)
    other = make_t1w(tmp_path / "other_T1w.nii.gz", "LAS")
    out = tmp_path / "out"
    with pytest.raises(InputError, match="not the file the pose was planned on"):
        nav.write_all(pose, other, out, "x")
    assert _no_files(out)


def test_atomic_replace_keeps_no_temp(tmp_path: Path, t1w_ras: Path) -> None:
    pose = left_dlpfc_pose(t1w_ras)
    p = tmp_path / "x.txt"
    p.write_text("old")
    nav.write_brainsight(pose, p)
    assert p.read_text().startswith("# Version: 14")
    assert sorted(q.name for q in tmp_path.iterdir() if q.name.startswith(".")) == []


# ------------------------------------------------------------------------------------------
# hostile labels
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ['sub-<b>&"x"', "it's <&> 'q'\nline2, a;b\tc -- ]]>"])
def test_hostile_labels_roundtrip(tmp_path: Path, name: str) -> None:
    t1 = make_t1w(tmp_path / "sub-<01>&--x_T1w.nii.gz")
    pose = left_dlpfc_pose(t1, name=name)
    out = nav.write_all(pose, t1, tmp_path / "out", "hostile")
    lps = nav.write_localite_instrument_markers(
        pose, tmp_path / "out" / "lps.xml", coordinate_space="LPS"
    )

    for key in ("localite_instrument_markers", "localite_entry_target"):
        ET.parse(out[key])  # well-formed
    ET.parse(lps)
    assert (
        rd.read_localite_instrument_markers(out["localite_instrument_markers"]).markers[0].name
        == name
    )
    assert rd.read_localite_entry_target(out["localite_entry_target"])[0][0].name == name
    comments = rd.read_localite_instrument_markers(out["localite_instrument_markers"]).comments
    assert any("sub-<01>&- -x_T1w.nii.gz" in c for c in comments)  # "--" defused in the comment

    assert rd.read_ant_mrk(out["ant_mrk"]).markers[0].name == name
    assert rd.read_slicer_markups_json(out["slicer_mrk_json"])[0].label == name
    assert json.loads(out["json"].read_text(encoding="utf-8"))["name"] == name
    with open(out["csv"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert (
        len(rows) == 1
        and rows[0]["name"] == name
        and rows[0]["image_name"] == "sub-<01>&--x_T1w.nii.gz"
    )

    # Line-based formats: line breaks (and Brainsight's tab/semicolon) become spaces.
    one_line = name.replace("\n", " ").replace("\t", " ")
    fc = rd.read_fcsv(out["fcsv"])
    assert [p.label for p in fc.points] == [one_line, f"{one_line} entry"]
    bs = rd.read_brainsight(out["brainsight"])
    assert len(bs.targets) == 2  # the coil pose, then the cortical target (same orientation)
    assert bs.targets[0].name == one_line.replace(";", " ")
    assert bs.targets[1].name == f"{one_line.replace(';', ' ')} trajectory"
    assert_same_pose(bs.targets[0].matrix, pose.matrix)
    assert np.allclose(bs.targets[1].matrix[:3, 3], pose.target_mm, atol=1e-5)
    assert np.allclose(bs.targets[1].matrix[:3, :3], pose.matrix[:3, :3], atol=1e-6)


# ------------------------------------------------------------------------------------------
# the repair detector on our own files
# ------------------------------------------------------------------------------------------


def test_repair_detector_on_synthetic_brainsight(tmp_path: Path, t1w_ras: Path) -> None:
    pose = left_dlpfc_pose(t1w_ras)
    p = nav.write_brainsight(pose, tmp_path / "bs.txt")
    text = p.read_text(encoding="utf-8")
    b = pose.matrix @ np.diag([-1.0, 1, -1, 1])  # as held (Brainsight axes)
    repaired = b @ np.diag([-1.0, 1, -1, 1])  # x and z reversed: the repair signature

    def row(name: str, m: np.ndarray) -> str:
        return "\t".join(
            [name]
            + [f"{m[k, 3]:.4f}" for k in range(3)]
            + [f"{m[j, i]:.4f}" for i in range(3) for j in range(3)]
        )

    sample_cols = (
        "# Sample Name\tSession Name\tIndex\tAssoc. Target\tLoc. X\tLoc. Y\tLoc. Z\t"
        + "\t".join(f"m{i}n{j}" for i in range(3) for j in range(3))
    )
    samples = [
        "\t".join([f"Sample {k}", "Session 1", str(k), "bad"] + row("", b).split("\t")[1:])
        for k in range(1, 4)
    ]
    lines = text.rstrip("\n").split("\n") + [row("bad", repaired), sample_cols] + samples
    q = tmp_path / "bs_repaired.txt"
    q.write_text("\n".join(lines) + "\n", encoding="utf-8")
    f = rd.read_brainsight(q)
    by = {t.name: t for t in f.targets}
    assert not by["L-DLPFC"].repaired_suspect
    assert by["bad"].repaired_suspect and by["bad"].samples_flipped
    assert by["bad"].z_points_inward is None  # no landmarks in this file
