"""End to end through the ``tmstarget`` command: scrubbing really scrubs.

Two properties any correct censoring has, checked on a two-run participant with
non-steady-state volumes, mirrored censored volumes (k and n-1-k: the pattern that leaked
through nilearn's scrubbing) and a censored last volume in every run:

1. whatever the censored and non-steady-state volumes hold (BOLD and confounds), the seed map
   and the targets are unchanged;
2. censoring the last volume of a run equals deleting it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from conftest import copy_sample_participant

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e

CONFIG = """
native: {enabled: false}
reproducibility: {bootstrap_resamples: 20}
"""


def _runs(root: Path) -> list[tuple[Path, Path]]:
    func = root / "sub-02" / "func"
    return [(b, Path(str(b).replace("_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz",
                                    "_desc-confounds_timeseries.tsv")))
            for b in sorted(func.glob("*_desc-preproc_bold.nii.gz"))]


def _censor(root: Path) -> dict[Path, np.ndarray]:
    """Set FD above threshold at mirrored volumes and the last one; return dropped volumes."""
    dropped = {}
    for bold, tsv in _runs(root):
        df = pd.read_csv(tsv, sep="\t", na_values=["n/a"])
        n = len(df)
        for k in (30, n - 1 - 30, 60, n - 1 - 60, n - 1):
            df.loc[k, "framewise_displacement"] = 3.0
        df.to_csv(tsv, sep="\t", index=False, na_rep="n/a")
        nss = np.zeros(n, bool)
        for c in df.columns:
            if c.startswith("non_steady_state_outlier"):
                nss |= df[c].to_numpy() > 0
        dropped[bold] = np.flatnonzero(nss | (df["framewise_displacement"].fillna(0) > 0.5))
    return dropped


def _garbage(root: Path, dropped: dict[Path, np.ndarray]) -> None:
    for bold, tsv in _runs(root):
        idx = dropped_for(dropped, bold)
        img = nb.load(bold)
        raw = np.asarray(img.dataobj.get_unscaled()).copy()
        raw[..., idx] = np.iinfo(raw.dtype).max  # the brightest value the file can hold
        raw[::2, ..., idx[:1]] = np.iinfo(raw.dtype).min
        out = nb.Nifti1Image(raw, img.affine, img.header)
        out.header.set_slope_inter(img.dataobj.slope, img.dataobj.inter)
        nb.save(out, bold)
        df = pd.read_csv(tsv, sep="\t", na_values=["n/a"])
        for c in df.columns:
            if c.startswith(("non_steady_state", "motion_outlier")) or c in (
                    "framewise_displacement", "std_dvars"):
                continue
            df.loc[idx, c] = 1e4
        df.to_csv(tsv, sep="\t", index=False, na_rep="n/a")


def dropped_for(dropped: dict[Path, np.ndarray], bold: Path) -> np.ndarray:
    return next(v for k, v in dropped.items() if k.name == bold.name)


def _delete_last(root: Path) -> None:
    for bold, tsv in _runs(root):
        img = nb.load(bold)
        raw = np.asarray(img.dataobj.get_unscaled())[..., :-1]
        out = nb.Nifti1Image(raw, img.affine, img.header)
        out.header.set_slope_inter(img.dataobj.slope, img.dataobj.inter)
        nb.save(out, bold)
        df = pd.read_csv(tsv, sep="\t", na_values=["n/a"]).iloc[:-1]
        df.to_csv(tsv, sep="\t", index=False, na_rep="n/a")


def _run(src: Path, out: Path, cfg: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "tmstarget.cli", str(src), str(out), "participant",
                          "--cores", "2", "--configfile", str(cfg)], capture_output=True,
                         text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("scrub")
    cfg = base / "config.yaml"
    cfg.write_text(CONFIG)
    a = copy_sample_participant(base / "a", "sub-02")
    dropped = _censor(a)
    b = base / "b"
    shutil.copytree(a, b)
    _garbage(b, dropped)
    c = base / "c"
    shutil.copytree(a, c)
    _delete_last(c)
    outs = {}
    for name, src in (("a", a), ("b", b), ("c", c)):
        outs[name] = base / f"out_{name}"
        _run(src, outs[name], cfg)
    return outs, dropped


def _map(out: Path) -> np.ndarray:
    f = next(out.glob("sub-02/func/*_desc-sgacc_stat-r_boldmap.nii.gz"))
    return np.asarray(nb.load(f).dataobj, dtype=np.float64)


def _targets(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "targets.tsv", sep="\t")[["method", "x", "y", "z", "r"]]


def test_the_setup_censors_what_it_should(three_runs):
    _, dropped = three_runs
    for bold, idx in dropped.items():
        n = nb.load(bold).shape[3]
        assert {0, 1, 30, n - 31, 60, n - 61, n - 1} <= set(idx.tolist())


@pytest.mark.parametrize("other", ["b", "c"])
def test_seed_map_and_targets_unchanged(three_runs, other):
    """b: garbage in every censored / non-steady-state volume; c: the censored last volume of
    each run deleted. Both must give the seed map and targets of a."""
    outs, _ = three_runs
    ma, mo = _map(outs["a"]), _map(outs[other])
    assert ma.shape == mo.shape
    assert np.abs(ma - mo).max() < 1e-4
    ta, to = _targets(outs["a"]), _targets(outs[other])
    pd.testing.assert_frame_equal(ta, to)
    ra = pd.read_csv(outs["a"] / "reproducibility.tsv", sep="\t")
    ro = pd.read_csv(outs[other] / "reproducibility.tsv", sep="\t")
    cols = ["method", "split_half_distance_mm", "split_half_map_r", "bootstrap_radius95_mm"]
    pd.testing.assert_frame_equal(ra[cols], ro[cols], atol=1e-3)
