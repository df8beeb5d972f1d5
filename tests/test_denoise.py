"""Denoising (tmstarget.denoise): equality with nilearn, strategies, validation of inputs."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from tmstarget.denoise import (STRATEGIES, denoise_run, load_denoised, resolve_strategy,
                               save_denoised)
from tmstarget.errors import ConfigError, InputError
from tmstarget.seedmap import combine_runs, correlation_map, seed_timeseries
from tmstarget.simulate import compute_confounds, write_confounds

SHAPE = (11, 13, 10)
N_T = 90
TR = 2.0
AFF = np.array([[4.0, 0, 0, -20], [0, 4.0, 0, -24], [0, 0, 4.0, -18], [0, 0, 0, 1]])
STEM = "sub-01_task-rest"


def make_run(root: Path, rng: np.random.Generator, spikes: bool = True,
             global_amp: float = 0.0, affine: np.ndarray = AFF) -> dict[str, Path]:
    """A tiny fMRIPrep-named run with realistic confounds (seeded)."""
    func = root / "sub-01" / "func"
    func.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(SHAPE, bool)
    mask[1:-1, 1:-1, 1:-1] = True
    vox = np.argwhere(mask)
    n_v = len(vox)
    motion = np.cumsum(rng.normal(0, 0.0005, (N_T, 6)), axis=0)
    if spikes:
        for t in (20, 21, 55):
            motion[t:, 0] += 0.8  # FD > 0.5 mm at these volumes
    gs = rng.standard_normal(N_T)
    wm = rng.random(n_v) < 0.2
    csf = (~wm) & (rng.random(n_v) < 0.1)
    data = 1000 + rng.standard_normal((N_T, n_v)) * 10
    data += global_amp * gs[:, None] * ~(wm | csf)  # a grey-matter-wide (global) signal
    data += motion[:, :1] * 20
    df, meta = compute_confounds(data, wm, csf, motion, TR, n_nss=2)
    vol = np.zeros((*SHAPE, N_T), np.float32)
    vol[tuple(vox.T)] = data.T
    img = nb.Nifti1Image(vol, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = TR
    img.set_qform(affine, 4)
    img.set_sform(affine, 4)
    paths = {
        "bold": func / f"{STEM}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz",
        "mask": func / f"{STEM}_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz",
        "confounds": func / f"{STEM}_desc-confounds_timeseries.tsv",
        "bold_json": func / f"{STEM}_space-MNI152NLin2009cAsym_desc-preproc_bold.json",
    }
    nb.save(img, paths["bold"])
    m = nb.Nifti1Image(mask.astype(np.uint8), affine)
    m.set_qform(affine, 4)
    m.set_sform(affine, 4)
    nb.save(m, paths["mask"])
    write_confounds(df, meta, paths["confounds"])
    paths["bold_json"].write_text(json.dumps({"RepetitionTime": TR}))
    return paths


def nilearn_reference(p: dict[str, Path], strategy, fd_threshold: float = 0.5) -> np.ndarray:
    """The straightforward nilearn computation (NiftiMasker + load_confounds)."""
    from nilearn.interfaces.fmriprep import load_confounds
    from nilearn.maskers import NiftiMasker

    kw = {"strategy": strategy.confounds, "motion": strategy.motion, "wm_csf": strategy.wm_csf,
          "global_signal": strategy.global_signal, "scrub": 5, "fd_threshold": fd_threshold,
          "std_dvars_threshold": np.inf}
    if "compcor" in strategy.confounds:
        kw.update(compcor=strategy.compcor, n_compcor=strategy.n_compcor)
    conf, sm = load_confounds(str(p["bold"]), **kw)
    masker = NiftiMasker(mask_img=str(p["mask"]), smoothing_fwhm=strategy.smoothing_fwhm,
                         standardize="zscore_sample", detrend=True, low_pass=strategy.low_pass,
                         high_pass=strategy.high_pass, t_r=TR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return masker.fit_transform(str(p["bold"]), confounds=conf, sample_mask=sm)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("censor", [True, False])
def test_equals_nilearn_reference(tmp_path, rng, name, censor):
    p = make_run(tmp_path, rng)
    strategy = resolve_strategy(name)
    fd = 0.5 if censor else 100.0
    ours = denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"], strategy,
                       fd_threshold=fd, chunk_volumes=17)  # chunks that do not divide N_T
    ref = nilearn_reference(p, strategy, fd_threshold=fd)
    assert ours.data.shape == ref.shape
    if censor:
        assert ours.qc["n_censored"] >= 3 and ours.qc["n_non_steady_state"] == 2
    else:
        assert ours.qc["n_censored"] == 0
    # z-scored series: both sides smooth float32 data, each ~2e-4 from a float64 computation
    np.testing.assert_allclose(ours.data, ref, atol=1e-3)
    # the seed map (what the target is chosen on) agrees to |dr| < 1e-4
    seed = np.zeros(ref.shape[1], bool)
    seed[:40] = True
    r_ours = correlation_map(ours.data, ours.data[:, seed].mean(axis=1))
    r_ref = correlation_map(ref.astype(np.float32), ref[:, seed].mean(axis=1))
    assert np.abs(r_ours - r_ref).max() < 1e-4


def test_global_signal_regression_removes_planted_global_signal(tmp_path, rng):
    p = make_run(tmp_path, rng, spikes=False, global_amp=30.0)
    with_gsr = denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"],
                           resolve_strategy("fox2012", {"smoothing_fwhm": 0}))
    no_gsr = replace(resolve_strategy("fox2012", {"smoothing_fwhm": 0}), name="fox2012-noGSR",
                     confounds=("motion", "wm_csf", "scrub", "non_steady_state"))
    without = denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"], no_gsr)
    # mean inter-voxel correlation: large when the global signal stays, ~0 after GSR
    def mean_corr(d):
        m = d.mean(axis=1)
        return float(np.mean(correlation_map(d, m)))
    assert mean_corr(without.data) > 0.5
    assert abs(mean_corr(with_gsr.data)) < 0.15


def test_output_is_zscored_and_roundtrips(tmp_path, rng):
    p = make_run(tmp_path, rng)
    r = denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"],
                    resolve_strategy("fox2012"))
    np.testing.assert_allclose(r.data.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(r.data.std(axis=0, ddof=1), 1, atol=1e-4)
    assert r.data.dtype == np.float32 and r.voxels.dtype == np.int32
    assert r.qc["strategy"]["name"] == "fox2012"
    assert r.qc["n_retained"] + r.qc["n_censored"] + r.qc["n_non_steady_state"] == N_T
    save_denoised(r, tmp_path / "x.npz")
    back = load_denoised(tmp_path / "x.npz")
    np.testing.assert_array_equal(back.data, r.data)
    np.testing.assert_array_equal(back.voxels, r.voxels)
    assert back.qc == json.loads(json.dumps(r.qc))
    comb = combine_runs([back])
    w = np.zeros(SHAPE)
    w[4:7, 4:7, 4:7] = 1
    ts, n = seed_timeseries(comb, w)
    assert n == 27 and ts.shape == (r.data.shape[0],)


def test_flipped_storage_gives_the_same_numbers_per_world_voxel(tmp_path, rng):
    """An LAS-stored copy of the run must be denoised identically at each mm position."""
    p = make_run(tmp_path / "ras", rng)
    ras = denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"],
                      resolve_strategy("fox2012"))
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = SHAPE[0] - 1
    q = {k: tmp_path / "las" / v.relative_to(tmp_path / "ras") for k, v in p.items()}
    for k in ("confounds", "bold_json"):
        q[k].parent.mkdir(parents=True, exist_ok=True)
        q[k].write_bytes(p[k].read_bytes())
    Path(str(q["confounds"]).replace(".tsv", ".json")).write_bytes(
        Path(str(p["confounds"]).replace(".tsv", ".json")).read_bytes())
    for k in ("bold", "mask"):
        img = nb.load(p[k])
        new_aff = AFF @ flip
        out = nb.Nifti1Image(np.asarray(img.dataobj)[::-1], new_aff, img.header)
        out.set_qform(new_aff, 4)
        out.set_sform(new_aff, 4)
        nb.save(out, q[k])
    las = denoise_run(q["bold"], q["mask"], q["confounds"], q["bold_json"],
                      resolve_strategy("fox2012"))
    world = lambda r: (r.voxels @ r.affine[:3, :3].T + r.affine[:3, 3]).round(3)  # noqa: E731
    a = {tuple(x): i for i, x in enumerate(world(ras))}
    order = [a[tuple(x)] for x in world(las)]
    np.testing.assert_allclose(las.data, ras.data[:, order], atol=1e-4)


def test_strategy_overrides_and_errors():
    s = resolve_strategy("fox2012", {"smoothing_fwhm": 4, "high_pass": None, "low_pass": 0.1})
    assert (s.smoothing_fwhm, s.high_pass, s.low_pass) == (4.0, 0.009, 0.1)
    with pytest.raises(ConfigError, match="not known"):
        resolve_strategy("fox2013")
    with pytest.raises(ConfigError, match="below"):
        resolve_strategy("36p", {"high_pass": 0.1, "low_pass": 0.08})


# --------------------------------------------------------------------------- bad inputs
def _expect(match, p, **kw):
    with pytest.raises(InputError, match=match) as ei:
        denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"],
                    resolve_strategy(kw.pop("strategy", "fox2012")), **kw)
    return ei.value


def test_bad_3d_image(tmp_path, rng):
    p = make_run(tmp_path, rng)
    img = nb.load(p["bold"])
    nb.save(nb.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), p["bold"])
    e = _expect("3D", p)
    assert p["bold"].name in str(e)


def test_bad_nan_inside_mask(tmp_path, rng):
    p = make_run(tmp_path, rng)
    img = nb.load(p["bold"])
    d = np.asarray(img.dataobj).copy()
    d[5, 5, 5, 10] = np.nan
    nb.save(nb.Nifti1Image(d, img.affine, img.header), p["bold"])
    _expect("NaN", p)


def test_bad_tr(tmp_path, rng):
    p = make_run(tmp_path, rng)
    p["bold_json"].write_text("{}")
    _expect("RepetitionTime is missing", p)
    p["bold_json"].write_text(json.dumps({"RepetitionTime": 2.5}))
    e = _expect("disagrees", p)
    assert "2.5" in str(e)


def test_bad_confounds_rows_columns_values(tmp_path, rng):
    p = make_run(tmp_path, rng)
    text = p["confounds"].read_text().splitlines()
    p["confounds"].write_text("\n".join(text[:-3]) + "\n")
    _expect("rows", p)
    p = make_run(tmp_path / "b", rng)
    import pandas as pd

    df = pd.read_csv(p["confounds"], sep="\t")
    df.drop(columns=["global_signal"]).to_csv(p["confounds"], sep="\t", index=False,
                                              na_rep="n/a")
    _expect("strategy 'fox2012'", p)
    df["csf"] = df["csf"].astype(str)
    df.loc[3, "csf"] = "oops"
    df.to_csv(p["confounds"], sep="\t", index=False, na_rep="n/a")
    _expect("non-numeric", p)


def test_bad_too_few_volumes_after_scrubbing(tmp_path, rng):
    p = make_run(tmp_path, rng)
    _expect("every volume of this run is censored", p, fd_threshold=1e-9)


def test_bad_mask_grid_and_qform_sform(tmp_path, rng):
    p = make_run(tmp_path, rng)
    m = nb.load(p["mask"])
    nb.save(nb.Nifti1Image(np.asarray(m.dataobj)[:-1], m.affine), p["mask"])
    _expect("does not match", p)
    p = make_run(tmp_path / "b", rng)
    img = nb.load(p["bold"])
    q = img.affine.copy()
    q[0, 3] += 5
    img.set_qform(q, 4)
    nb.save(img, p["bold"])
    _expect("qform and sform disagree", p)


def test_bad_truncated_gzip(tmp_path, rng):
    p = make_run(tmp_path, rng)
    raw = p["bold"].read_bytes()
    p["bold"].write_bytes(raw[: len(raw) // 2])
    e = _expect("corrupt or truncated", p)
    assert p["bold"].name in str(e)


def test_bad_constant_voxels(tmp_path, rng):
    p = make_run(tmp_path, rng)
    img = nb.load(p["bold"])
    d = np.asarray(img.dataobj).copy()
    d[1:6] = 500.0  # half the brain flat
    nb.save(nb.Nifti1Image(d, img.affine, img.header), p["bold"])
    _expect("constant signal", p, strategy="fox2012", fd_threshold=100)


@pytest.mark.parametrize("dtype", [">i2", "<i2", ">f4"])
def test_streamed_reader_scaling_and_byte_order(tmp_path, rng, dtype):
    """The sequential reader applies scl_slope/scl_inter and byte order exactly as nibabel."""
    p = make_run(tmp_path, rng, spikes=False)
    img = nb.load(p["bold"])
    hdr = img.header.as_byteswapped(dtype[0])  # a big-endian file has a big-endian header
    hdr.set_data_dtype(np.dtype(dtype))
    nb.save(nb.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine, hdr),
            p["bold"])
    back = nb.load(p["bold"])
    assert back.get_data_dtype() == np.dtype(dtype) and back.header.endianness == dtype[0]
    if np.dtype(dtype).kind == "i":  # nibabel chose a scaling to store the floats as int16
        assert back.dataobj.slope != 1.0
    got = denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"],
                      resolve_strategy("fox2012"), fd_threshold=100.0, chunk_volumes=17)
    # reference: the values nibabel reads, stored as plain little-endian float32
    nb.save(nb.Nifti1Image(np.asarray(back.dataobj, dtype=np.float32), img.affine,
                           img.header), p["bold"])
    ref = denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"],
                      resolve_strategy("fox2012"), fd_threshold=100.0, chunk_volumes=17)
    np.testing.assert_allclose(got.data, ref.data, atol=2e-4)  # float32 rounding of scaling
