"""Built-in (ANTsPy) preprocessing: unit tests on small images with known answers.

The end-to-end acceptance run on ``data_sample_raw`` is in ``tests/test_e2e_raw.py``.
ANTsPy is an optional extra (``pip install 'tmstarget[preproc]'``): without it these tests are
skipped, unless ``TMSTARGET_REQUIRE_PREPROC=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import HAVE_ANTS, needs_ants, storage_affine
from scipy import ndimage as ndi

from tmstarget.builtin import (
    _from_ants,
    _to_ants,
    detect_dummy_volumes,
    itk_threads,
    motion_parameters,
    settings_from_config,
)
from tmstarget.errors import ConfigError, InputError
from tmstarget.preproc import resolve_method
from tmstarget.simulate_raw import motion_matrices

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- pure helpers
def test_dummy_volumes_detected_like_fmriprep(target_rng):
    data = 1000 + target_rng.normal(0, 5, size=(6, 6, 6, 80))
    assert detect_dummy_volumes(data) == 0
    data[..., 0] *= 1.6
    data[..., 1] *= 1.25
    data[..., 2] *= 1.1
    assert detect_dummy_volumes(data) == 3
    # a bright volume later in the run is not a dummy: only leading outliers count
    data2 = 1000 + target_rng.normal(0, 5, size=(6, 6, 6, 80))
    data2[..., 10] *= 1.5
    assert detect_dummy_volumes(data2) == 0


def test_motion_parameters_invert_the_simulated_motion(target_rng):
    truth = np.column_stack([target_rng.normal(0, 1.0, (20, 3)),
                             target_rng.normal(0, 0.01, (20, 3))])
    centre = (12.0, -30.0, 25.0)
    mats = motion_matrices(truth, centre)
    np.testing.assert_allclose(motion_parameters(mats, centre), truth, atol=1e-10)
    # another centre changes the translations (a rotation moves a remote centre)
    other = motion_parameters(mats, (60.0, -30.0, 25.0))
    np.testing.assert_allclose(other[:, 3:], truth[:, 3:], atol=1e-10)
    assert np.abs(other[:, :3] - truth[:, :3]).max() > 0.05


def test_settings_defaults_and_refusals():
    s = settings_from_config({})
    assert s["motion_resolution_mm"] == 4.0 and s["dummy_scans"] is None
    assert settings_from_config({"dummy_scans": 4})["dummy_scans"] == 4
    with pytest.raises(ConfigError, match="interpolation_order must be 1 or 3"):
        settings_from_config({"interpolation_order": 2})
    with pytest.raises(ConfigError, match="resolutions must be positive"):
        settings_from_config({"motion_resolution_mm": 0})
    # deterministic (default): ITK single-threaded whatever the rule was given
    assert s["deterministic"] is True
    assert itk_threads(s, 8) == 1
    assert itk_threads(settings_from_config({"deterministic": False}), 8) == 8


def test_method_resolution(monkeypatch):
    import tmstarget.builtin

    assert resolve_method({}) == ("builtin" if HAVE_ANTS else pytest.skip("no ANTsPy"))
    assert resolve_method({"fmriprep_image": "/x.sif"}) == "fmriprep"
    assert resolve_method({"method": "builtin", "fmriprep_image": "/x.sif"}) == "builtin"
    with pytest.raises(ConfigError, match="method is fmriprep but"):
        resolve_method({"method": "fmriprep"})
    with pytest.raises(ConfigError, match="Use auto, fmriprep or builtin"):
        resolve_method({"method": "spm"})
    monkeypatch.setattr(tmstarget.builtin, "builtin_available", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'tmstarget\[preproc\]'"):
        resolve_method({})


# --------------------------------------------------------------------------- ANTs I/O
@needs_ants
def test_ants_round_trip_keeps_world_and_side():
    """Laterality canary: a left-hemisphere blob stays left through nibabel -> ANTs -> nibabel
    for every storage orientation (RAS, LAS, LPS, oblique)."""
    import ants

    for orient in ("RAS", "LAS", "LPS", "oblique"):
        base = np.diag([3.0, 3.0, 3.0, 1.0])
        base[:3, 3] = (-45.0, -50.0, -40.0)
        aff = storage_affine(orient, base, (30, 34, 28))
        inv = np.linalg.inv(aff)
        data = np.zeros((30, 34, 28), dtype=np.float32)
        ijk = np.round(inv[:3, :3] @ np.array([-40.0, 10.0, 20.0]) + inv[:3, 3]).astype(int)
        data[tuple(ijk)] = 100.0
        img = nib.Nifti1Image(data, aff)
        back = _from_ants(_to_ants(img))
        np.testing.assert_allclose(back.affine, aff, atol=1e-4)
        peak = np.unravel_index(np.argmax(back.get_fdata()), back.shape)
        world = nib.affines.apply_affine(back.affine, peak)
        assert world[0] < -35, f"{orient}: canary moved to x={world[0]:.1f}"
        # and ANTs' own physical point (LPS) of that voxel is on the left (LPS x > 0)
        phys = ants.transform_index_to_physical_point(_to_ants(img), tuple(int(v) for v in peak))
        assert phys[0] > 35, f"{orient}: ANTs physical x (LPS) {phys[0]:.1f}"


def _textured_head(rng, shape=(40, 44, 36), vs=4.0):
    aff = np.diag([vs, vs, vs, 1.0])
    aff[:3, 3] = -(np.array(shape) - 1) / 2 * vs
    base = ndi.gaussian_filter(rng.random(shape).astype(np.float32), 1.0)
    grid = np.indices(shape).reshape(3, -1).T
    xyz = nib.affines.apply_affine(aff, grid)
    r = np.linalg.norm(xyz / np.array([70.0, 85.0, 65.0]), axis=1).reshape(shape)
    base = (base - base.min()) / np.ptp(base) * 800 + 400 * (r < 1)
    return ndi.gaussian_filter(base * (r < 1), 0.7), aff


def _moved(base, aff, truth, centre):
    """Volumes showing the head moved by each row of ``truth`` (an independent forward model:
    the value at p is the base image at M^-1 p, cubic B-spline)."""
    inv = np.linalg.inv(aff)
    vols = []
    for m in motion_matrices(truth, centre):
        src = inv @ np.linalg.inv(m) @ aff
        vols.append(ndi.affine_transform(base, src[:3, :3], src[:3, 3], order=3))
    return np.stack(vols, axis=-1).astype(np.float32)


@pytest.mark.parametrize("estimator", ["gauss-newton", "ants"])
def test_motion_correction_recovers_known_rigid_motion(target_rng, estimator):
    """A textured 4 mm head moved by known rigid motions (up to 1.2 mm / 0.7 deg): estimates
    match to 0.1 mm and 0.25 deg (rotations are the harder part at 4 mm)."""
    from tmstarget.builtin import _motion_correct

    if estimator == "ants":
        pytest.importorskip("ants")
    base, aff = _textured_head(target_rng)
    truth = np.array([[0, 0, 0, 0, 0, 0], [1.0, -0.5, 0.3, 0.01, 0, -0.005],
                      [-0.6, 0.8, -1.2, 0, 0.012, 0.008], [0.3, 0.3, 0.9, -0.009, -0.006, 0]])
    centre = (0.0, 0.0, 0.0)
    data = _moved(base, aff, truth, centre)
    img = nib.Nifti1Image(data, aff)
    est = motion_parameters(_motion_correct(img, data, base.astype(np.float32), 4.0,
                                            estimator), centre)
    np.testing.assert_allclose(est[:, :3], truth[:, :3], atol=0.1)
    np.testing.assert_allclose(np.rad2deg(est[:, 3:]), np.rad2deg(truth[:, 3:]), atol=0.25)


def test_gauss_newton_recovers_large_motion_drift_and_a_cut_field_of_view(target_rng):
    """Harder cases for the Gauss-Newton estimator: 4 mm / 3 deg jumps between volumes, a 15 %
    global intensity drift, and a head cut by the field of view (top slices missing, as in a
    real acquisition). Known answer: the applied motion, to 0.15 mm and 0.3 deg."""
    from tmstarget.builtin import _motion_correct

    base, aff = _textured_head(target_rng)
    base[..., -6:] = 0  # the top of the head is outside the field of view
    centre = (0.0, 0.0, 0.0)
    truth = np.array([[0, 0, 0, 0, 0, 0], [4.0, -2.0, 1.0, 0.03, -0.05, 0.02],
                      [-3.0, 3.5, -2.5, -0.05, 0.03, 0.052], [0.5, 0.2, 0.1, 0, 0, 0]])
    data = _moved(base, aff, truth, centre)
    data *= np.array([1.0, 1.15, 0.9, 1.05], np.float32)  # global intensity drift
    img = nib.Nifti1Image(data, aff)
    est = motion_parameters(_motion_correct(img, data, base.astype(np.float32), 4.0), centre)
    np.testing.assert_allclose(est[:, :3], truth[:, :3], atol=0.15)
    np.testing.assert_allclose(np.rad2deg(est[:, 3:]), np.rad2deg(truth[:, 3:]), atol=0.3)


def test_gauss_newton_estimate_does_not_depend_on_storage_orientation(target_rng):
    """The same head stored RAS and LPS (flipped axes, same world): the same world motion."""
    from tmstarget.builtin import _motion_correct

    base, aff = _textured_head(target_rng)
    centre = (0.0, 0.0, 0.0)
    truth = np.array([[0, 0, 0, 0, 0, 0], [1.0, -0.5, 0.3, 0.01, 0, -0.005],
                      [-0.6, 0.8, -1.2, 0, 0.012, 0.008]])
    data = _moved(base, aff, truth, centre)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(base.shape[:2]) - 1
    aff_lps = aff @ flip  # voxel (i, j) of the LPS copy is voxel (n-1-i, n-1-j) of the RAS one
    data_lps = np.ascontiguousarray(data[::-1, ::-1])
    ras = motion_parameters(_motion_correct(nib.Nifti1Image(data, aff), data, base, 4.0), centre)
    lps = motion_parameters(_motion_correct(nib.Nifti1Image(data_lps, aff_lps), data_lps,
                                            np.ascontiguousarray(base[::-1, ::-1]), 4.0), centre)
    np.testing.assert_allclose(lps, ras, atol=1e-6)
    np.testing.assert_allclose(ras[:, :3], truth[:, :3], atol=0.1)


@pytest.mark.parametrize("estimator", ["gauss-newton", "ants"])
def test_motion_correction_is_deterministic(estimator):
    """Same input, same settings -> identical estimates (ANTs' sampling is seeded)."""
    from tmstarget.builtin import _bold_reference, _motion_correct

    if estimator == "ants":
        pytest.importorskip("ants")
    img = nib.load(REPO / "data_sample_raw" / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz")
    data = np.asarray(img.dataobj, dtype=np.float32)[..., 60:65]
    ref = _bold_reference(data, 0)
    a = _motion_correct(img, data, ref, 4.0, estimator)
    b = _motion_correct(img, data, ref, 4.0, estimator)
    assert np.array_equal(a, b)


# --------------------------------------------------------------------------- workflow
@needs_ants
def test_dry_run_plans_builtin_stage(tmp_path):
    from test_preproc import make_raw_bids

    bids = make_raw_bids(tmp_path / "raw")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"bids_dir": str(bids), "output_dir": str(tmp_path / "o")}))
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "fmriprep.smk"), "-n",
         "--cores", "2", "--configfile", str(cfg), "--directory", str(tmp_path)],
        check=False, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "builtin_preproc" in res.stdout and "fmriprep " not in res.stdout
    assert res.stdout.count("rule builtin_preproc:") == 2  # one job per participant
    assert "sourcedata/builtin/sub-01" in res.stdout


@needs_ants
def test_cli_says_which_preprocessing(tmp_path, capsys):
    from test_preproc import make_raw_bids

    from tmstarget.cli import main

    bids = make_raw_bids(tmp_path / "raw")
    rc = main([str(bids), str(tmp_path / "out"), "participant", "-n"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "raw BIDS dataset found; preprocessing: tmstarget built-in (ANTsPy" in err
    assert "no distortion or slice-timing correction" in err
    assert str(tmp_path / "out" / "sourcedata" / "builtin") in err


def _small_raw_bids(root: Path) -> Path:
    """One participant of data_sample_raw, made small: T1w at 2 mm, the first 14 volumes."""
    src = REPO / "data_sample_raw" / "sub-01"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "sub-01" / "func").mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "small", "BIDSVersion": "1.9.0", "DatasetType": "raw"}))
    t1 = nib.load(src / "anat" / "sub-01_T1w.nii.gz")
    small = nib.Nifti1Image(np.asarray(t1.dataobj)[::2, ::2, ::2],
                            t1.affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
    nib.save(small, root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    bold = nib.load(src / "func" / "sub-01_task-rest_bold.nii.gz")
    nib.save(bold.slicer[..., :14], root / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz")
    shutil.copy(src / "func" / "sub-01_task-rest_bold.json", root / "sub-01" / "func")
    return root


def _output_digests(root: Path) -> dict[str, str]:
    """Content digest of every output (NIfTI voxel data, HDF5 transform arrays, text files)."""
    import hashlib

    import h5py

    out = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        if f.name.endswith(".nii.gz"):
            blob = np.asarray(nib.load(f).dataobj).tobytes()
        elif f.suffix == ".h5":
            with h5py.File(f) as h5:
                names: list[str] = []
                h5.visit(names.append)
                blob = b"".join(np.asarray(h5[n]).tobytes() for n in sorted(names)
                                if isinstance(h5[n], h5py.Dataset) and "Transform" in n
                                and h5[n].dtype.kind == "f")
        elif f.suffix in (".tsv", ".txt"):
            blob = f.read_bytes()
        else:
            continue
        out[str(f.relative_to(root))] = hashlib.sha256(blob).hexdigest()
    return out


@needs_ants
def test_builtin_stage_reruns_are_bit_identical(tmp_path):
    """Two runs of the whole built-in stage (fresh processes, as the rule runs them) give the
    same transforms, tissue classes, BOLD series and confounds: ITK single-threaded and
    Atropos seeded (``deterministic``, the default). With two ITK threads the SyN transforms
    differed between runs (measured), which this test would catch."""
    bids = _small_raw_bids(tmp_path / "raw")
    cfg = {"registration_resolution_mm": 4.0, "syn_iterations": [20, 10],
           "motion_resolution_mm": 8.0}
    code = ("import sys, json; from tmstarget.builtin import preprocess_participant as p; "
            "p(sys.argv[1], sys.argv[2], '01', sys.argv[3], json.loads(sys.argv[4]), "
            "threads=2)")
    digests = []
    for k in (1, 2):
        out = tmp_path / f"out{k}"
        res = subprocess.run([sys.executable, "-c", code, str(bids), str(out),
                              str(tmp_path / f"done{k}.json"), json.dumps(cfg)],
                             capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr[-3000:]
        digests.append(_output_digests(out))
        assert json.loads((tmp_path / f"done{k}.json").read_text())["itk_threads"] == 1
    assert any(name.endswith("_xfm.h5") for name in digests[0])
    assert any(name.endswith("desc-preproc_bold.nii.gz") for name in digests[0])
    differ = [n for n in digests[0] if digests[0][n] != digests[1].get(n)]
    assert not differ, f"outputs differ between two identical runs: {differ}"


def test_functions_swapped_by_the_benchmark_diagnostics_still_exist():
    """``benchmarks/ablate_raw_target.py`` and ``raw_target_realisations.py`` (not run in CI)
    replace these private functions by the truth or capture the simulated signal through them; a
    rename would otherwise break them only when someone next needs them."""
    import tmstarget.builtin as bi
    import tmstarget.simulate as sim
    import tmstarget.simulate_raw as sr

    swapped = {
        "ablate_raw_target.py": {bi: ("_motion_correct", "_coregister"),
                                 sr: ("_raw_motion",)},
        "raw_target_realisations.py": {bi: ("_motion_correct", "_coregister"),
                                       sr: ("simulate_run",), sim: ("_write_run",)},
    }
    for script_name, modules in swapped.items():
        script = (REPO / "benchmarks" / script_name).read_text()
        assert "functional_workflow" in script
        for module, names in modules.items():
            for name in names:
                assert callable(getattr(module, name, None)), f"{module.__name__}.{name} is gone"
                assert f".{name}" in script, f"{script_name} no longer uses {name}"


# --------------------------------------------------------------------------- storage order
def _restore(img: nib.Nifti1Image, codes: str) -> nib.Nifti1Image:
    """The same image stored in another voxel order (plain numpy flips/transposes)."""
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                           nib.orientations.axcodes2ornt(tuple(codes)))
    data = nib.orientations.apply_orientation(np.asarray(img.dataobj), ornt)
    aff = img.affine @ nib.orientations.inv_ornt_aff(ornt, img.shape[:3])
    return nib.Nifti1Image(data, aff)


def test_conform_gives_one_storage_for_every_storage_order(target_rng):
    """Any storage of the same world (RAS, LAS, LPS, a flipped slice axis, permuted axes; and
    oblique) conforms to the same array and affine, and every voxel keeps its world position
    and value. Without conforming the arrays differ (the guard against a no-op)."""
    from tmstarget.builtin import conform, storage_info

    base = np.diag([3.0, 3.0, 3.3, 1.0])
    base[:3, 3] = (-100.0, -110.0, -50.0)
    for oblique in (False, True):
        aff = storage_affine("oblique", base, (20, 22, 12)) if oblique else base
        ref = nib.Nifti1Image(target_rng.normal(size=(20, 22, 12, 3)).astype(np.float32), aff)
        ref_c = conform(ref)
        assert "".join(nib.aff2axcodes(ref_c.affine)) == "RAS"
        for codes in ("LAS", "LPS", "LAI", "ASR", "PIL"):
            other = _restore(ref, codes)
            assert not np.array_equal(np.asarray(other.dataobj), np.asarray(ref.dataobj))
            c = conform(other)
            np.testing.assert_allclose(c.affine, ref_c.affine, atol=1e-4)
            assert np.array_equal(np.asarray(c.dataobj), np.asarray(ref_c.dataobj)), codes
            # a voxel's world position and value survive
            ijk = np.array([3, 5, 7])
            world = nib.affines.apply_affine(other.affine, ijk)
            back = np.round(nib.affines.apply_affine(np.linalg.inv(c.affine), world)).astype(int)
            assert np.allclose(np.asarray(c.dataobj)[tuple(back)],
                               np.asarray(other.dataobj)[tuple(ijk)])
        info = storage_info(_restore(ref, "LPS"))
        assert info["orientation"] == "LPS"
        assert (info["oblique_deg"] > 5) == oblique


def test_conform_applies_the_vendor_scaling(tmp_path):
    """int16 storage with a scale slope (as Philips data): the conformed values are scaled."""
    from tmstarget.builtin import conform

    raw = np.arange(2 * 3 * 4 * 10, dtype=np.int16).reshape(2, 3, 4, 10)
    img = nib.Nifti1Image(raw, np.diag([-3.0, 3.0, 3.3, 1.0]))
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(75.5, 0.0)
    nib.save(img, tmp_path / "b.nii.gz")
    loaded = nib.load(tmp_path / "b.nii.gz")
    c = np.asarray(conform(loaded).dataobj)
    assert c.dtype == np.float32
    assert np.isclose(c.max(), 75.5 * raw.max())


def test_tr_from_sidecar_refused_when_the_header_disagrees(tmp_path):
    """The real participant's trap: dcm2niix wrote 1.79 s, the true TR is 2.0 s."""
    from tmstarget.builtin import check_tr, header_tr

    bold = tmp_path / "sub-01_task-x_bold.nii.gz"
    assert check_tr(bold, 2.0, 2.0) == 2.0
    assert check_tr(bold, 2.0, None) == 2.0
    assert check_tr(bold, None, 2.5) == 2.5
    with pytest.raises(InputError, match=r"RepetitionTime 2 s disagrees with the NIfTI header") as e:
        check_tr(bold, 2.0, 1.79355)
    assert "sub-01_task-x_bold.json" in str(e.value)
    with pytest.raises(InputError, match="no RepetitionTime"):
        check_tr(bold, None, None)
    img = nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4))
    img.header.set_zooms((1, 1, 1, 2000.0))
    img.header.set_xyzt_units("mm", "msec")
    assert header_tr(img) == pytest.approx(2.0)
