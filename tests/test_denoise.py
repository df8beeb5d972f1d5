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
             global_amp: float = 0.0, affine: np.ndarray = AFF, n_nss: int = 2,
             spike_at: tuple[int, ...] = (20, 21, 55), n_t: int = N_T) -> dict[str, Path]:
    """A tiny fMRIPrep-named run with realistic confounds (seeded).

    ``spike_at``: volumes whose framewise displacement exceeds 0.5 mm (censored by default).
    """
    func = root / "sub-01" / "func"
    func.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(SHAPE, bool)
    mask[1:-1, 1:-1, 1:-1] = True
    vox = np.argwhere(mask)
    n_v = len(vox)
    motion = np.cumsum(rng.normal(0, 0.0005, (n_t, 6)), axis=0)
    if spikes:
        for t in spike_at:
            motion[t:, 0] += 0.8  # FD > 0.5 mm at these volumes
    gs = rng.standard_normal(n_t)
    wm = rng.random(n_v) < 0.2
    csf = (~wm) & (rng.random(n_v) < 0.1)
    data = 1000 + rng.standard_normal((n_t, n_v)) * 10
    data += global_amp * gs[:, None] * ~(wm | csf)  # a grey-matter-wide (global) signal
    data += motion[:, :1] * 20
    df, meta = compute_confounds(data, wm, csf, motion, TR, n_nss=n_nss)
    vol = np.zeros((*SHAPE, n_t), np.float32)
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


def nilearn_reference(p: dict[str, Path], strategy, columns: list[str]) -> np.ndarray:
    """nilearn's NiftiMasker with the same regressors, for runs WITHOUT any censoring.

    (With censoring, nilearn's sample_mask path is wrong: README, "Known upstream issues".)
    """
    import pandas as pd
    from nilearn.maskers import NiftiMasker

    conf = pd.read_csv(p["confounds"], sep="\t", na_values=["n/a"]).fillna(0)[columns]
    masker = NiftiMasker(mask_img=str(p["mask"]), smoothing_fwhm=strategy.smoothing_fwhm,
                         standardize="zscore_sample", detrend=True, low_pass=strategy.low_pass,
                         high_pass=strategy.high_pass, t_r=TR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return masker.fit_transform(str(p["bold"]), confounds=conf.to_numpy())


def oracle(p: dict[str, Path], strategy, fd_threshold: float = 0.5,
           min_segment: int = 5) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The cleaning, written from its description, one voxel series at a time (numpy/scipy).

    Independent of tmstarget's operator construction: censoring from the FD column and the
    non-steady-state columns by hand; data-level cubic-spline interpolation of interior
    censored volumes; scipy.signal.detrend; a Butterworth band-pass (order 5, forward-backward);
    regression by least squares (numpy.linalg.lstsq) on z-scored filtered confounds; censored
    volumes removed; z-scored (ddof=1). Smoothing: scipy.ndimage.gaussian_filter on each whole
    volume (sigma = FWHM / sqrt(8 ln 2) / voxel size, truncate 4, mode reflect).
    """
    import pandas as pd
    from scipy import ndimage
    from scipy import signal as sps
    from scipy.interpolate import CubicSpline

    df = pd.read_csv(p["confounds"], sep="\t", na_values=["n/a"])
    n = len(df)
    nss = np.zeros(n, bool)
    for c in df.columns:
        if c.startswith("non_steady_state_outlier"):
            nss |= df[c].to_numpy() == 1
    fd = df["framewise_displacement"].fillna(0).to_numpy()
    ok = ~nss & ~(fd > fd_threshold)
    # stretches of ok volumes shorter than min_segment are censored too
    keep = ok.copy()
    t = 0
    while t < n:
        if ok[t]:
            u = t
            while u < n and ok[u]:
                u += 1
            if u - t < min_segment:
                keep[t:u] = False
            t = u
        else:
            t += 1
    cols = list(strategy.columns)
    for mask_name, k in strategy.compcor:
        prefix = {"WM": "w_comp_cor_", "CSF": "c_comp_cor_"}[mask_name]
        cols += sorted(c for c in df.columns if c.startswith(prefix))[:k]
    if strategy.cosines:
        cols += sorted(c for c in df.columns if c.startswith("cosine"))
    conf = df[cols].fillna(0).to_numpy(float)

    img = nb.load(p["bold"])
    vol = np.asarray(img.dataobj, dtype=np.float64)
    if strategy.smoothing_fwhm:
        vs = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
        sig = strategy.smoothing_fwhm / np.sqrt(8 * np.log(2)) / vs
        vol = np.stack([ndimage.gaussian_filter(vol[..., i], sig, truncate=4.0, mode="reflect")
                        for i in range(n)], axis=-1)
    mask = np.asarray(nb.load(p["mask"]).dataobj) > 0
    x = vol[mask].T  # (n, voxels)
    idx = np.flatnonzero(keep)
    s, e = idx[0], idx[-1]
    seg_t = np.arange(s, e + 1)
    inside = keep[s:e + 1]

    def fill(a):
        a = a[s:e + 1].copy()
        if not inside.all():
            a[~inside] = CubicSpline(seg_t[inside], a[inside], axis=0)(seg_t[~inside])
        return a

    def filt(a):
        a = sps.detrend(a, axis=0, type="linear")
        sos = sps.butter(5, [strategy.high_pass, strategy.low_pass], btype="bandpass",
                         fs=1 / TR, output="sos")
        return sps.sosfiltfilt(sos, a, axis=0)

    xs, cs = filt(fill(x)), filt(fill(conf))
    cs = (cs - cs.mean(0)) / cs.std(0)
    beta = np.linalg.lstsq(cs, xs, rcond=None)[0]
    res = (xs - cs @ beta)[inside]
    res = (res - res.mean(0)) / res.std(0, ddof=1)
    return res, cols, idx


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("censor", [True, False])
def test_equals_independent_oracle(tmp_path, rng, name, censor):
    """Every named strategy, with and without censoring, against the oracle written above."""
    p = make_run(tmp_path, rng, spike_at=(20, 21, 55, 89) if censor else ())
    strategy = resolve_strategy(name)
    ours = denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"], strategy,
                       chunk_volumes=17)  # chunks that do not divide N_T
    ref, cols, idx = oracle(p, strategy)
    assert ours.qc["confound_columns"] == cols
    np.testing.assert_array_equal(ours.kept, idx)
    if censor:  # 2 non-steady-state, FD spikes (89 = the last volume: an edge, dropped)
        assert ours.qc["n_non_steady_state"] == 2 and ours.qc["n_censored"] >= 4
        assert N_T - 1 not in ours.kept
    assert ours.data.shape == ref.shape
    np.testing.assert_allclose(ours.data, ref, atol=2e-3)
    seed = np.zeros(ref.shape[1], bool)
    seed[:40] = True
    r_ours = correlation_map(ours.data, ours.data[:, seed].mean(axis=1))
    r_ref = correlation_map(ref.astype(np.float32), ref[:, seed].mean(axis=1))
    assert np.abs(r_ours - r_ref).max() < 1e-3


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_equals_nilearn_without_censoring(tmp_path, rng, name):
    """Only where nilearn's cleaning is right: no censoring and no non-steady-state volumes."""
    p = make_run(tmp_path, rng, n_nss=0, spike_at=())
    strategy = resolve_strategy(name)
    ours = denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"], strategy,
                       chunk_volumes=17)
    assert ours.qc["n_retained"] == N_T
    ref = nilearn_reference(p, strategy, ours.qc["confound_columns"])
    np.testing.assert_allclose(ours.data, ref, atol=1e-3)


def _garbage_in_dropped_volumes(p: dict[str, Path], dropped: np.ndarray, value: float) -> None:
    """Overwrite the BOLD and every non-censoring confound at ``dropped`` volumes."""
    import pandas as pd

    img = nb.load(p["bold"])
    d = np.asarray(img.dataobj).copy()
    d[..., dropped] = value
    nb.save(nb.Nifti1Image(d, img.affine, img.header), p["bold"])
    df = pd.read_csv(p["confounds"], sep="\t", na_values=["n/a"])
    for c in df.columns:
        if c.startswith(("non_steady_state", "motion_outlier")) or c in (
                "framewise_displacement", "std_dvars"):
            continue
        df.loc[dropped, c] = -value
    df.to_csv(p["confounds"], sep="\t", index=False, na_rep="n/a")


@pytest.mark.parametrize("value", [1e6, -3.0e4, np.nan])
def test_what_a_censored_volume_holds_cannot_matter(tmp_path, rng, value):
    """Property: any content of censored / non-steady-state volumes leaves the output unchanged.

    Censored volumes include mirrored pairs (k and n-1-k: 30 and 59 -- the pattern that leaked
    through nilearn's scrubbing), one next to the non-steady-state volumes and the last volume.
    """
    spikes = (2, 30, 59, 89)  # FD spikes; 0 and 1 are non-steady-state
    p = make_run(tmp_path / "a", np.random.default_rng(3), spike_at=spikes)
    q = make_run(tmp_path / "b", np.random.default_rng(3), spike_at=spikes)
    s = resolve_strategy("36p")
    a = denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"], s, halves=True)
    dropped = np.setdiff1d(np.arange(N_T), a.kept)
    assert {0, 1, 30, 59, 89} <= set(dropped.tolist())
    _garbage_in_dropped_volumes(q, dropped, value)
    b = denoise_run(q["bold"], q["mask"], q["confounds"], q["bold_json"], s, halves=True)
    np.testing.assert_array_equal(a.kept, b.kept)
    assert np.abs(a.data - b.data).max() < 1e-5
    for ha, hb in zip(a.halves, b.halves, strict=True):
        assert np.abs(ha - hb).max() < 1e-5


def _truncate(p: dict[str, Path], n_keep: int) -> None:
    import pandas as pd

    img = nb.load(p["bold"])
    d = np.asarray(img.dataobj)[..., :n_keep]
    nb.save(nb.Nifti1Image(d, img.affine, img.header), p["bold"])
    df = pd.read_csv(p["confounds"], sep="\t", na_values=["n/a"]).iloc[:n_keep]
    df.to_csv(p["confounds"], sep="\t", index=False, na_rep="n/a")


@pytest.mark.parametrize("k", [1, 3])
def test_censoring_the_last_volumes_equals_deleting_them(tmp_path, k):
    """Property: censoring the last k volumes (FD above threshold) == deleting them."""
    spikes = tuple(range(N_T - k, N_T)) + (40,)
    p = make_run(tmp_path / "a", np.random.default_rng(5), spike_at=spikes)
    q = make_run(tmp_path / "b", np.random.default_rng(5), spike_at=spikes)
    _truncate(q, N_T - k)
    s = resolve_strategy("fox2012")
    a = denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"], s)
    b = denoise_run(q["bold"], q["mask"], q["confounds"], q["bold_json"], s)
    assert a.kept.max() < N_T - k
    np.testing.assert_array_equal(a.kept, b.kept)
    assert np.abs(a.data - b.data).max() < 1e-5


def test_each_half_is_cleaned_as_its_own_problem(tmp_path):
    """Half A equals denoising the run cut just after A's last volume (nothing of B enters)."""
    p = make_run(tmp_path / "a", np.random.default_rng(11), spike_at=(30, 70))
    q = make_run(tmp_path / "b", np.random.default_rng(11), spike_at=(30, 70))
    s = resolve_strategy("fox2012")
    full = denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"], s, halves=True,
                       gap_seconds=4.0)
    ka, kb = full.kept_halves
    assert len(ka) == len(kb) and kb[0] - ka[-1] - 1 >= 2  # 4 s gap = 2 volumes at TR 2 s
    assert set(ka) | set(kb) <= set(full.kept.tolist())
    _truncate(q, int(ka[-1]) + 1)
    cut = denoise_run(q["bold"], q["mask"], q["confounds"], q["bold_json"], s)
    np.testing.assert_array_equal(cut.kept, ka)
    assert np.abs(cut.data - full.halves[0]).max() < 1e-3  # float32 sums in another order
    # and the half is not a slice of the full-run cleaning
    assert np.abs(full.data[: len(ka)] - full.halves[0]).max() > 0.05


def test_the_confounds_file_given_is_the_one_regressed(tmp_path, rng):
    """The file validated and hashed is the file regressed (not one found from the BOLD name)."""
    import pandas as pd

    p = make_run(tmp_path, rng, global_amp=30.0)
    s = resolve_strategy("fox2012", {"smoothing_fwhm": 0})
    a = denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"], s)
    other = tmp_path / "other_desc-confounds_timeseries.tsv"
    df = pd.read_csv(p["confounds"], sep="\t", na_values=["n/a"])
    df["global_signal"] = np.random.default_rng(0).standard_normal(len(df))
    df.to_csv(other, sep="\t", index=False, na_rep="n/a")
    b = denoise_run(p["bold"], p["mask"], other, p["bold_json"], s)
    assert np.abs(a.data - b.data).max() > 0.1


def test_strategies_record_their_exact_regressors():
    fox = resolve_strategy("fox2012").to_dict()
    assert len(fox["regressors"]) == 18 and "compcor" not in fox
    assert {"trans_x", "rot_z_derivative1", "global_signal_derivative1", "csf",
            "white_matter_derivative1"} <= set(fox["regressors"])
    assert all("power2" not in c for c in fox["regressors"])
    assert len(resolve_strategy("36p").to_dict()["regressors"]) == 36
    ac = resolve_strategy("acompcor").to_dict()
    assert ac["compcor"] == [{"mask": "WM", "n_components": 5}, {"mask": "CSF", "n_components": 5}]
    assert "global_signal" not in ac["regressors"] and len(ac["regressors"]) == 12
    for s in STRATEGIES.values():
        assert "et al." in s.reference


def test_bad_confounds_duplicates_and_missing_values(tmp_path, rng):
    p = make_run(tmp_path, rng)
    lines = p["confounds"].read_text().splitlines()
    hdr = lines[0].split("\t")
    j = hdr.index("global_signal")
    dup = ["\t".join([*r.split("\t"), r.split("\t")[j]]) for r in lines]
    dup[0] = lines[0] + "\tglobal_signal"
    p["confounds"].write_text("\n".join(dup) + "\n")
    e = _expect("more than once", p)
    assert "global_signal" in str(e) and p["confounds"].name in str(e)
    for col, row in (("framewise_displacement", 40), ("csf", 5), ("trans_x_derivative1", 30)):
        q = make_run(tmp_path / col, rng)
        rows = q["confounds"].read_text().splitlines()
        k = rows[0].split("\t").index(col)
        cells = rows[row + 1].split("\t")
        cells[k] = "n/a"
        rows[row + 1] = "\t".join(cells)
        q["confounds"].write_text("\n".join(rows) + "\n")
        e = _expect(f"column '{col}' has 1 missing", q)
        assert f"line(s) {row + 2}" in str(e)


def test_invalid_confounds_json_is_reported_against_the_json(tmp_path, rng):
    p = make_run(tmp_path, rng)
    js = Path(str(p["confounds"]).replace(".tsv", ".json"))
    js.write_text("{not json")
    e = _expect("not valid JSON", p, strategy="acompcor")
    assert e.path == str(js)


def test_global_signal_regression_removes_planted_global_signal(tmp_path, rng):
    p = make_run(tmp_path, rng, spikes=False, global_amp=30.0)
    with_gsr = denoise_run(p["bold"], p["mask"], p["confounds"], p["bold_json"],
                           resolve_strategy("fox2012", {"smoothing_fwhm": 0}))
    fox = resolve_strategy("fox2012", {"smoothing_fwhm": 0})
    no_gsr = replace(fox, name="fox2012-noGSR", columns=tuple(
        c for c in fox.columns if not c.startswith("global_signal")))
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
