"""Simulate an fMRIPrep-style derivatives dataset with a planted sgACC-anticorrelated target.

The BOLD data are **simulated** (not real recordings) on **real anatomy**: the grid and brain
mask come from the MNI152NLin2009cAsym 2 mm brain mask, tissue classes (GM/WM/CSF partial
volumes) from the Colin27 T1w head, and each subject's native "T1w" is the Colin27 head with
a known rigid transform applied to its affine.

Signal model (per run, in percent signal change of a tissue-dependent baseline)::

    p(x, t) = b_s S(x) s(t) - a g(x) s(t)                    # sgACC source and planted focus
              + w(x) [b_g G(t) + sum_k c N_k(x) n_k(t)]      # global signal and networks
              + b_w P_wm(x) W(t) + b_c P_csf(x) C(t)         # white-matter and CSF signals
              + pink(x, t) + white(x, t)                     # independent voxel noise
    Y(x, t) = M(x) (1 + p / 100) q(t) + motion(x, t) + spin_history(x, t)

where ``S`` is the sgACC sphere, ``g`` a Gaussian (FWHM 12 mm) centred on the planted target,
``w = P_gm + 0.4 P_wm + 0.2 P_csf``, ``q(t)`` brightens the non-steady-state volumes and the
motion term is the residual intensity change ``-k grad(M) . d(x, t)`` of a rigid displacement
``d`` driven by the six motion parameters (plus intensity drops at motion spikes).

Everything is seeded (:class:`numpy.random.SeedSequence`) and all files are written
byte-reproducibly (gzip ``mtime=0``, no HDF5 timestamps).

Examples
--------
>>> from tmstarget.simulate import make_dataset, SubjectSpec
>>> truth = make_dataset("/tmp/tiny", voxel_size=8.0, n_volumes=40, with_anat=False)  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from tmstarget import itk
from tmstarget.confounds import (  # noqa: F401  (re-exported: simulate.compute_confounds etc.)
    compcor,
    compute_confounds,
    cosine_basis,
    dvars,
    framewise_displacement,
    relative_rms,
    write_confounds,
)
from tmstarget.io import data_file as _data_file
from tmstarget.regions import voxel_centers_mm

__all__ = [
    "DEFAULT_SUBJECTS",
    "SIMULATOR_VERSION",
    "SPACE",
    "SignalParams",
    "SubjectSpec",
    "bids_name",
    "bold_grid",
    "make_dataset",
    "reorient_storage",
    "rigid_matrix",
    "save_nifti",
]

#: Template space of the simulated BOLD outputs.
SPACE: str = "MNI152NLin2009cAsym"
#: Centre and radius of the simulated sgACC source, in the simulation's MNI152NLin2009cAsym
#: frame. The sample data were generated with these values (the Fox et al. 2012 coordinate
#: taken as-is); the pipeline's seed is that coordinate converted from MNI152NLin6Asym, a
#: couple of mm away, as it would be for a real participant (README, template spaces).
SIM_SGACC_CENTER_MM: tuple[float, float, float] = (6.0, 16.0, -10.0)
SIM_SGACC_RADIUS_MM: float = 10.0
#: Version written into ``dataset_description.json``.
SIMULATOR_VERSION: str = "1.0.0"
#: Voxel size of the template brain mask the BOLD grid is derived from, mm.
TEMPLATE_VOXEL_MM: float = 2.0
#: Non-steady-state intensity factors of the first volumes.
NSS_FACTORS: tuple[float, ...] = (1.6, 1.2)
#: Colin27 intensity thresholds (CSF < lo <= GM < hi <= WM), from its in-brain histogram.
COLIN_CSF_GM_WM: tuple[float, float] = (48.0, 100.0)


@dataclass(frozen=True)
class SubjectSpec:
    """One simulated participant.

    Parameters
    ----------
    label : str
        Participant label without ``sub-`` (e.g. ``"01"``).
    target_mm : tuple of 3 float
        Planted target, MNI152NLin2009cAsym RAS+ mm.
    sessions : tuple of (str or None)
        Session labels without ``ses-``; ``(None,)`` for no session level.
    runs : tuple of (int or None)
        Run indices per session; ``(None,)`` for a single run without a ``run`` entity.
    bold_orientation : str
        Storage orientation of the BOLD and mask arrays (``"RAS"`` or ``"LAS"``, ...).
    anat_orientation : str
        Storage orientation of the T1w arrays (``"RAS"``, ``"LAS"``, ``"LPS"``, ...).
    rotation_deg : tuple of 3 float
        Rotations (x, y, z; extrinsic, degrees) of the rigid map MNI world -> T1w world.
    translation_mm : tuple of 3 float
        Translation of that map, mm.
    """

    label: str
    target_mm: tuple[float, float, float]
    sessions: tuple[str | None, ...] = (None,)
    runs: tuple[int | None, ...] = (None,)
    bold_orientation: str = "RAS"
    anat_orientation: str = "RAS"
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def participant_id(self) -> str:
        """``sub-<label>``."""
        return f"sub-{self.label}"

    @property
    def t1w_from_mni(self) -> np.ndarray:
        """4x4 rigid map from MNI world to T1w world (RAS+ mm)."""
        return rigid_matrix(self.rotation_deg, self.translation_mm)


@dataclass(frozen=True)
class SignalParams:
    """Amplitudes of the signal model (percent signal change unless stated).

    Parameters
    ----------
    sgacc_amp : float
        ``b_s``, sgACC source amplitude inside the seed sphere.
    focus_amp : float
        ``a``, amplitude of the anticorrelated DLPFC focus at its centre.
    focus_fwhm_mm : float
        FWHM of the broad Gaussian component of the focus.
    focus_core_fwhm_mm, focus_core_fraction : float
        FWHM and weight of a narrower Gaussian core added to the focus profile
        (``g = f G(core) + (1 - f) G(broad)``, peak 1); gives a sharp peak for
        single-voxel targets and a broad base for cluster targets.
    global_amp : float
        ``b_g``, global signal amplitude (grey matter; less in WM/CSF).
    network_amp : float
        Amplitude of each of ``n_networks`` smooth random networks.
    n_networks : int
        Number of background networks.
    wm_amp, csf_amp : float
        White-matter and CSF signal amplitudes.
    pink_amp, white_amp : float
        Independent per-voxel 1/f and white noise.
    motion_gain : float
        ``k``, fraction of the rigid-motion intensity change left after realignment.
    spike_drop : float
        Spin-history intensity drop at motion spikes (fraction of baseline).
    """

    sgacc_amp: float = 2.0
    focus_amp: float = 0.7
    focus_fwhm_mm: float = 16.0
    focus_core_fwhm_mm: float = 8.0
    focus_core_fraction: float = 0.5
    global_amp: float = 1.6
    network_amp: float = 0.15
    n_networks: int = 4
    wm_amp: float = 0.8
    csf_amp: float = 1.2
    pink_amp: float = 0.6
    white_amp: float = 0.9
    motion_gain: float = 0.15
    spike_drop: float = 0.02


#: The sample dataset's participants. Targets are 4 mm voxel centres of the default grid, in
#: grey matter both in Colin27 (the simulated anatomy) and in the template grey-matter map the
#: pipeline's search is restricted to (partial-volume fraction >= 0.5 in each), >= 8 mm inside
#: the default search region (grey matter lies near the brain surface), >= 14 mm apart. (The
#: targets of sample versions before 2026-12-02 lay in template white matter.)
DEFAULT_SUBJECTS: tuple[SubjectSpec, ...] = (
    SubjectSpec("01", (-43.5, 32.5, 26.5), rotation_deg=(8.0, -6.0, 10.0),
                translation_mm=(12.0, -20.0, 25.0)),
    SubjectSpec("02", (-43.5, 8.5, 50.5), runs=(1, 2), bold_orientation="LAS",
                anat_orientation="LAS", rotation_deg=(-12.0, 9.0, -5.0),
                translation_mm=(-25.0, 15.0, 18.0)),
    SubjectSpec("03", (-35.5, 24.5, 46.5), sessions=("1", "2"), anat_orientation="LPS",
                rotation_deg=(6.0, 14.0, -9.0), translation_mm=(20.0, 28.0, -12.0)),
)


# --------------------------------------------------------------------------- I/O helpers
def save_nifti(
    img: nib.Nifti1Image, path: str | os.PathLike, slope: float | None = None,
    compresslevel: int = 6,
) -> Path:
    """Write a NIfTI-1 image byte-reproducibly (gzip with ``mtime=0`` and no file name).

    Parameters
    ----------
    img : nibabel.Nifti1Image
        Image; for ``slope`` its data must already be the stored integers.
    path : str or os.PathLike
        Output path (``.nii.gz`` is gzipped, ``.nii`` not).
    slope : float, optional
        ``scl_slope`` to store (``scl_inter`` = 0), i.e. real value = stored * slope.
    compresslevel : int
        gzip level.

    Returns
    -------
    pathlib.Path
    """
    raw = img.to_bytes()
    if slope is not None:
        hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
        hdr.set_slope_inter(float(slope), 0.0)
        raw = hdr.binaryblock + raw[348:]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=compresslevel, mtime=0)
    path.write_bytes(raw)
    return path


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


def _write_json(path: Path, obj: dict) -> None:
    _write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def bids_name(
    label: str, session: str | None, suffix: str, run: int | None = None,
    task: str | None = None, space: str | None = None, desc: str | None = None,
    extra: str = "",
) -> str:
    """fMRIPrep-style file name (entity order sub, ses, task, run, [extra], space, desc).

    Parameters
    ----------
    label, session : str
        Participant and session labels (no prefixes); ``session`` may be None.
    suffix : str
        Suffix with extension, e.g. ``"bold.nii.gz"``.
    run : int, optional
    task, space, desc : str, optional
    extra : str
        Literal entities inserted before ``space`` (e.g. ``"from-T1w_to-X_mode-image"``).

    Returns
    -------
    str
    """
    parts = [f"sub-{label}"]
    if session is not None:
        parts.append(f"ses-{session}")
    if task is not None:
        parts.append(f"task-{task}")
    if run is not None:
        parts.append(f"run-{run}")
    if extra:
        parts.append(extra)
    if space is not None:
        parts.append(f"space-{space}")
    if desc is not None:
        parts.append(f"desc-{desc}")
    return "_".join(parts) + "_" + suffix


# --------------------------------------------------------------------------- geometry
def rigid_matrix(rotation_deg: Sequence[float], translation_mm: Sequence[float]) -> np.ndarray:
    """4x4 rigid transform (extrinsic x-y-z rotations in degrees, then translation).

    Parameters
    ----------
    rotation_deg : sequence of 3 float
    translation_mm : sequence of 3 float

    Returns
    -------
    numpy.ndarray, shape (4, 4)
    """
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    m[:3, 3] = translation_mm
    return m


def reorient_storage(
    data: np.ndarray, affine: npt.ArrayLike, orientation: str
) -> tuple[np.ndarray, np.ndarray]:
    """Flip array axes of a RAS-stored image so it is stored as ``orientation``.

    World positions of all voxels are unchanged (the affine is adjusted).  Only flips
    are supported: ``orientation`` is a 3-letter code whose letters are R/L, A/P, S/I.

    Parameters
    ----------
    data : numpy.ndarray
        Array stored in RAS-like order (first three axes spatial).
    affine : array-like, shape (4, 4)
        Its affine.
    orientation : str
        Target code, e.g. ``"LAS"`` or ``"LPS"``.

    Returns
    -------
    data, affine : numpy.ndarray
    """
    aff = np.asarray(affine, dtype=float).copy()
    out = data
    for axis, (letter, ras) in enumerate(zip(orientation.upper(), "RAS", strict=True)):
        if letter == ras:
            continue
        if letter not in {"R": "L", "A": "P", "S": "I"}[ras]:
            raise ValueError(f"unsupported orientation {orientation!r}")
        n = out.shape[axis]
        flip = np.eye(4)
        flip[axis, axis] = -1.0
        flip[axis, 3] = n - 1
        aff = aff @ flip
        out = np.flip(out, axis=axis)
    return np.ascontiguousarray(out), aff


def bold_grid(voxel_size: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Brain mask and affine of the BOLD grid derived from the 2 mm template mask.

    The grid shares the template's outer corner; a coarse voxel is brain when at least
    half of its 2 mm children (missing children count as non-brain) are brain.

    Parameters
    ----------
    voxel_size : float
        Multiple of 2 mm.

    Returns
    -------
    mask : numpy.ndarray of bool, 3D
    affine : numpy.ndarray, shape (4, 4)
    """
    factor = voxel_size / TEMPLATE_VOXEL_MM
    if factor < 1 or abs(factor - round(factor)) > 1e-9:
        raise ValueError("voxel_size must be a positive multiple of 2 mm")
    f = int(round(factor))
    tpl = nib.load(_data_file("tpl-MNI152NLin2009cAsym_res-02_desc-brain_mask.nii.gz"))
    fine = np.asarray(tpl.dataobj) > 0.5
    shape = tuple(int(np.ceil(s / f)) for s in fine.shape)
    pad = np.zeros(tuple(s * f for s in shape), dtype=bool)
    pad[: fine.shape[0], : fine.shape[1], : fine.shape[2]] = fine
    count = pad.reshape(shape[0], f, shape[1], f, shape[2], f).sum(axis=(1, 3, 5))
    affine = tpl.affine.copy()
    affine[:3, :3] *= f
    affine[:3, 3] += tpl.affine[:3, :3] @ np.full(3, (f - 1) / 2.0)
    return count >= f**3 / 2.0, affine


def tissue_fractions(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """GM, WM, CSF partial-volume fractions of each grid voxel from the Colin27 head.

    Each grid voxel is sampled at 1 mm points of its cube and Colin27 intensities are
    classified with :data:`COLIN_CSF_GM_WM` (Colin27 is treated as being in MNI space).

    Parameters
    ----------
    shape, affine
        Grid (axis-aligned, RAS).

    Returns
    -------
    numpy.ndarray, shape (*shape, 3)
        Fractions (GM, WM, CSF), each in [0, 1].
    """
    colin = nib.load(_data_file("colin27_ch2_head.nii.gz"))
    head = np.asarray(colin.dataobj).astype(np.float32)
    vs = float(abs(affine[0, 0]))
    n_sub = max(1, int(round(vs)))
    offsets = (np.arange(n_sub) - (n_sub - 1) / 2.0) * (vs / n_sub)
    centers = voxel_centers_mm(shape, affine).reshape(-1, 3)
    inv = np.linalg.inv(colin.affine)
    frac = np.zeros((centers.shape[0], 3), dtype=np.float64)
    lo, hi = COLIN_CSF_GM_WM
    for dx in offsets:
        for dy in offsets:
            for dz in offsets:
                pts = centers + np.array([dx, dy, dz])
                ijk = pts @ inv[:3, :3].T + inv[:3, 3]
                v = ndi.map_coordinates(head, ijk.T, order=0, mode="constant", cval=0.0)
                frac[:, 0] += (v >= lo) & (v < hi)
                frac[:, 1] += v >= hi
                frac[:, 2] += v < lo
    return (frac / n_sub**3).reshape(*shape, 3)


# --------------------------------------------------------------------------- time series
def colored_noise(
    rng: np.random.Generator, n_times: int, tr: float, size: int = 1,
    f_lo: float = 0.0, f_hi: float | None = None, exponent: float = 1.0,
) -> np.ndarray:
    """Unit-variance band-limited ``1/f**exponent`` noise.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_times : int
        Number of samples.
    tr : float
        Sampling interval, s.
    size : int
        Number of independent series.
    f_lo, f_hi : float
        Pass band, Hz (soft 1st-order edges).  ``f_hi`` defaults to Nyquist.
    exponent : float
        Spectral exponent of the power spectrum.

    Returns
    -------
    numpy.ndarray, shape (size, n_times)
    """
    n_fft = 2 * n_times
    freqs = np.fft.rfftfreq(n_fft, d=tr)
    f = np.maximum(freqs, freqs[1])
    amp = f ** (-exponent / 2.0)
    if f_lo > 0:
        amp *= 1.0 / np.sqrt(1.0 + (f_lo / f) ** 4)
    if f_hi is not None:
        amp *= 1.0 / np.sqrt(1.0 + (f / f_hi) ** 8)
    amp[0] = 0.0
    spec = (rng.standard_normal((size, freqs.size)) + 1j * rng.standard_normal((size, freqs.size)))
    x = np.fft.irfft(spec * amp, n=n_fft, axis=-1)[:, :n_times]
    x -= x.mean(axis=1, keepdims=True)
    x /= x.std(axis=1, keepdims=True) + 1e-12
    return x


def simulate_motion(
    rng: np.random.Generator, n_times: int, n_nss: int, spike_rate: float = 0.04
) -> tuple[np.ndarray, np.ndarray]:
    """Six realignment parameters: mean-reverting random walks plus transient spikes.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_times : int
    n_nss : int
        Leading non-steady-state volumes (kept still).
    spike_rate : float
        Fraction of volumes that start a spike (each spike moves the head for one volume,
        so FD exceeds 0.5 mm at about twice this fraction of volumes).

    Returns
    -------
    params : numpy.ndarray, shape (n_times, 6)
        trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (rad).
    spikes : numpy.ndarray of int
        Volumes at which spikes occur.
    """
    steps = rng.standard_normal((n_times, 6)) * np.array([0.025] * 3 + [0.0004] * 3)
    params = np.zeros((n_times, 6))
    for t in range(1, n_times):
        params[t] = 0.97 * params[t - 1] + steps[t]
    n_spikes = max(1, int(round(spike_rate * n_times)))
    candidates = np.arange(n_nss + 3, n_times - 2)
    spikes = np.sort(rng.choice(candidates, size=min(n_spikes, candidates.size), replace=False))
    for t in spikes:
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        params[t, :3] += direction * rng.uniform(0.5, 1.3)
        params[t, 3:] += rng.standard_normal(3) * 0.004
        params[t:, :3] += direction * rng.uniform(0.0, 0.2)  # small lasting shift
    params[:n_nss] = params[n_nss]
    params -= params[0]
    return params, spikes


# --------------------------------------------------------------------------- confounds
def _smooth_field(rng: np.random.Generator, mask: np.ndarray, sigma_vox: float) -> np.ndarray:
    """Unit-variance smooth random field on ``mask`` (zero outside)."""
    f = ndi.gaussian_filter(rng.standard_normal(mask.shape), sigma_vox)
    v = f[mask]
    f = (f - v.mean()) / (v.std() + 1e-12)
    return np.where(mask, f, 0.0)


def _at_least(prob: np.ndarray, thr: float, minimum: int) -> np.ndarray:
    """``prob >= thr``, enlarged to the ``minimum`` most probable elements if too small."""
    mask = prob >= thr
    if mask.sum() < minimum:
        order = np.argsort(-prob, kind="stable")
        mask = np.zeros(prob.shape, dtype=bool)
        mask[order[:minimum]] = True
    return mask


# --------------------------------------------------------------------------- simulation
@dataclass
class _Grid:
    """Spatial ingredients shared by all runs."""

    mask: np.ndarray
    affine: np.ndarray
    xyz: np.ndarray  # (V, 3) in-mask voxel centres
    tissue: np.ndarray  # (V, 3) GM, WM, CSF fractions
    baseline: np.ndarray  # (V,)
    grad: np.ndarray  # (V, 3) spatial gradient of the baseline, per mm
    wm: np.ndarray  # (V,) bool, WM confound mask
    csf: np.ndarray  # (V,) bool, CSF confound mask
    sgacc: np.ndarray  # (V,) seed weight
    extras: dict = field(default_factory=dict)


def _make_grid(voxel_size: float) -> _Grid:
    mask, affine = bold_grid(voxel_size)
    frac = tissue_fractions(mask.shape, affine)
    xyz_all = voxel_centers_mm(mask.shape, affine)
    # smooth multiplicative coil-sensitivity field (deterministic)
    rel = (xyz_all - np.array([0.0, -18.0, 18.0])) / 100.0
    bias = 1.0 + 0.08 * rel[..., 1] - 0.06 * rel[..., 2] + 0.04 * rel[..., 0] ** 2
    base = (1000.0 * frac[..., 0] + 860.0 * frac[..., 1] + 1200.0 * frac[..., 2]) * bias
    base = np.where(mask, np.maximum(base, 300.0), 0.0)
    grad = np.stack(np.gradient(base, voxel_size), axis=-1)
    tissue = frac[mask]
    wm = _at_least(tissue[:, 1], 0.95, 10)
    csf = _at_least(tissue[:, 2], 0.5, 10) & ~wm
    xyz = xyz_all[mask]
    d = np.linalg.norm(xyz - np.array(SIM_SGACC_CENTER_MM), axis=1)
    sgacc = 1.0 / (1.0 + np.exp((d - SIM_SGACC_RADIUS_MM) / 1.5))
    return _Grid(mask, affine, xyz, tissue, base[mask], grad[mask], wm, csf, sgacc)


def _focus_weight(xyz: np.ndarray, target_mm: Sequence[float], params: SignalParams) -> np.ndarray:
    """Spatial profile of the planted focus (peak 1 at the target)."""
    d2 = np.sum((xyz - np.asarray(target_mm, dtype=float)) ** 2, axis=1)
    out = np.zeros_like(d2)
    f = params.focus_core_fraction
    for weight, fwhm in ((f, params.focus_core_fwhm_mm), (1.0 - f, params.focus_fwhm_mm)):
        sigma = fwhm / np.sqrt(8.0 * np.log(2.0))
        out += weight * np.exp(-0.5 * d2 / sigma**2)
    return out


def simulate_run(
    rng: np.random.Generator, grid: _Grid, target_mm: Sequence[float], n_volumes: int,
    tr: float, params: SignalParams, n_nss: int = len(NSS_FACTORS),
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate one run's in-mask BOLD values.

    Parameters
    ----------
    rng : numpy.random.Generator
    grid : _Grid
        Output of ``_make_grid``.
    target_mm : sequence of 3 float
        Planted target (MNI mm).
    n_volumes : int
    tr : float
    params : SignalParams
    n_nss : int
        Number of brighter non-steady-state volumes.

    Returns
    -------
    data : numpy.ndarray, shape (T, V), float64
    motion : numpy.ndarray, shape (T, 6)
    """
    n_t, n_v = n_volumes, grid.xyz.shape[0]
    band = dict(f_lo=0.01, f_hi=0.1)
    s = colored_noise(rng, n_t, tr, **band)[0]
    g_t = colored_noise(rng, n_t, tr, **band)[0]
    w_t = colored_noise(rng, n_t, tr, f_lo=0.005, f_hi=0.15)[0]
    c_t = colored_noise(rng, n_t, tr, f_lo=0.01, f_hi=None, exponent=0.3)[0]
    w_tis = grid.tissue @ np.array([1.0, 0.4, 0.2])
    vs = float(abs(grid.affine[0, 0]))

    p = np.outer(s, params.sgacc_amp * grid.sgacc
                 - params.focus_amp * _focus_weight(grid.xyz, target_mm, params))
    p += params.global_amp * np.outer(g_t, w_tis)
    if params.n_networks:
        nets = np.stack([_smooth_field(rng, grid.mask, 10.0 / vs)[grid.mask]
                         for _ in range(params.n_networks)])
        p += params.network_amp * (colored_noise(rng, n_t, tr, size=params.n_networks, **band).T
                                   @ (nets * w_tis))
    p += params.wm_amp * np.outer(w_t, grid.tissue[:, 1])
    p += params.csf_amp * np.outer(c_t, grid.tissue[:, 2])
    p += params.pink_amp * colored_noise(rng, n_t, tr, size=n_v, f_lo=0.002).T
    p += params.white_amp * rng.standard_normal((n_t, n_v))

    q = np.ones(n_t)
    q[:n_nss] = NSS_FACTORS[:n_nss]
    data = grid.baseline[None, :] * (1.0 + p / 100.0) * q[:, None]

    motion, spikes = simulate_motion(rng, n_t, n_nss)
    r = grid.xyz - np.array([0.0, -18.0, 18.0])
    beta_t = -params.motion_gain * grid.grad  # (V, 3)
    beta_r = -params.motion_gain * np.cross(r, grid.grad)  # (V, 3): d = w x r, grad.(w x r)
    data += motion[:, :3] @ beta_t.T + motion[:, 3:] @ beta_r.T
    drop = 0.5 + 0.5 * (grid.xyz[:, 2] - grid.xyz[:, 2].min()) / np.ptp(grid.xyz[:, 2])
    for t in spikes:
        data[t] -= params.spike_drop * grid.baseline * drop
        if t + 1 < n_t:
            data[t + 1] -= 0.4 * params.spike_drop * grid.baseline * drop
    return data, motion


def _quantize(data: np.ndarray, step: float = 4.0) -> tuple[np.ndarray, float]:
    """Integer codes and slope for int16 storage (``step`` or coarser if needed).

    The default step (4 intensity units, baseline ~1000) is ~1/4 of the voxel noise SD, so
    quantisation adds < 1 % noise variance while keeping the gzipped files small.
    """
    slope = max(step, float(np.abs(data).max()) / 32000.0)
    return np.clip(np.round(data / slope), -32768, 32767).astype(np.int16), slope


def _mni_header(img: nib.Nifti1Image, tr: float | None = None) -> None:
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=4)
    img.set_sform(img.affine, code=4)
    if tr is not None:
        zooms = img.header.get_zooms()
        img.header.set_zooms((*zooms[:3], float(tr)))


def _write_run(
    func_dir: Path, spec: SubjectSpec, session: str | None, run: int | None,
    grid: _Grid, data: np.ndarray, motion: np.ndarray, tr: float, n_nss: int,
) -> None:
    """Write the BOLD series, brain mask, sidecars and confounds of one run."""
    codes, slope = _quantize(data)
    stored = codes.astype(np.float64) * slope
    vol = np.zeros((*grid.mask.shape, data.shape[0]), dtype=np.int16)
    vol[grid.mask] = codes.T
    vol, aff = reorient_storage(vol, grid.affine, spec.bold_orientation)
    mask, _ = reorient_storage(grid.mask.astype(np.uint8), grid.affine, spec.bold_orientation)
    kw = dict(run=run, task="rest")
    bold = nib.Nifti1Image(vol, aff)
    bold.header.set_data_dtype(np.int16)
    _mni_header(bold, tr)
    name = bids_name(spec.label, session, "bold.nii.gz", space=SPACE, desc="preproc", **kw)
    save_nifti(bold, func_dir / name, slope=slope, compresslevel=9)
    _write_json(func_dir / name.replace(".nii.gz", ".json"), {
        "RepetitionTime": tr, "TaskName": "rest", "SkullStripped": False,
        "Description": "SIMULATED resting-state BOLD (tmstarget-simulator); not real data.",
    })
    mimg = nib.Nifti1Image(mask, aff)
    mimg.header.set_data_dtype(np.uint8)
    _mni_header(mimg)
    save_nifti(mimg, func_dir / bids_name(spec.label, session, "mask.nii.gz", space=SPACE,
                                          desc="brain", **kw))
    df, meta = compute_confounds(stored, grid.wm, grid.csf, motion, tr, n_nss)
    write_confounds(df, meta, func_dir / bids_name(spec.label, session, "timeseries.tsv",
                                                   desc="confounds", **kw))


def _write_anat(root: Path, spec: SubjectSpec) -> None:
    """Write the native T1w (Colin27 voxels, moved affine), its brain mask and transforms."""
    anat = root / spec.participant_id / "anat"
    a = spec.t1w_from_mni
    colin = nib.load(_data_file("colin27_ch2_head.nii.gz"))
    head = np.asarray(colin.dataobj).astype(np.uint8)
    tpl = nib.load(_data_file("tpl-MNI152NLin2009cAsym_res-02_desc-brain_mask.nii.gz"))
    ijk = np.indices(head.shape, dtype=np.float64).reshape(3, -1)
    to_tpl = np.linalg.inv(tpl.affine) @ colin.affine
    tij = to_tpl[:3, :3] @ ijk + to_tpl[:3, 3:4]
    brain = ndi.map_coordinates((np.asarray(tpl.dataobj) > 0.5).astype(np.float32), tij,
                                order=0, mode="constant", cval=0.0)
    brain = (brain.reshape(head.shape) > 0.5).astype(np.uint8)
    aff_t1 = a @ colin.affine
    for desc, arr, suffix in (("preproc", head, "T1w"), ("brain", brain, "mask")):
        data, aff = reorient_storage(arr, aff_t1, spec.anat_orientation)
        img = nib.Nifti1Image(data, aff)
        img.header.set_data_dtype(np.uint8)
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
        save_nifti(img, anat / bids_name(spec.label, None, f"{suffix}.nii.gz", desc=desc))
    # Pull maps: from-T1w_to-MNI resamples T1w into MNI, i.e. maps MNI points -> T1w points.
    lo, hi = map(np.asarray, itk.MNI_HEAD_BBOX_RAS)
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])]) @ a.T
    t1_box = (corners[:, :3].min(axis=0), corners[:, :3].max(axis=0))
    mni_c = (lo + hi) / 2.0
    itk.write_itk_h5_composite(
        anat / bids_name(spec.label, None, "xfm.h5", extra=f"from-T1w_to-{SPACE}_mode-image"),
        a, warp_bbox_ras=(lo, hi), center_ras=mni_c)
    itk.write_itk_h5_composite(
        anat / bids_name(spec.label, None, "xfm.h5", extra=f"from-{SPACE}_to-T1w_mode-image"),
        np.linalg.inv(a), warp_bbox_ras=t1_box, center_ras=(a @ np.append(mni_c, 1.0))[:3])


def _run_seed(seed: int, subject_index: int, session_index: int, run_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, subject_index, session_index,
                                                        run_index]))


def _truth_row(spec: SubjectSpec, session: str | None, voxel_size: float, n_runs: int,
               n_volumes: int, tr: float) -> dict:
    a = spec.t1w_from_mni
    t1 = a @ np.append(np.asarray(spec.target_mm, dtype=float), 1.0)
    return {
        "participant_id": spec.participant_id,
        "session_id": f"ses-{session}" if session is not None else "n/a",
        "x": spec.target_mm[0], "y": spec.target_mm[1], "z": spec.target_mm[2],
        "space": SPACE, "n_runs": n_runs, "n_volumes": n_volumes, "tr": tr,
        "voxel_size": voxel_size, "bold_orientation": spec.bold_orientation,
        "anat_orientation": spec.anat_orientation,
        "t1w_x": round(float(t1[0]), 4), "t1w_y": round(float(t1[1]), 4),
        "t1w_z": round(float(t1[2]), 4),
        "rot_x_deg": spec.rotation_deg[0], "rot_y_deg": spec.rotation_deg[1],
        "rot_z_deg": spec.rotation_deg[2], "trans_x_mm": spec.translation_mm[0],
        "trans_y_mm": spec.translation_mm[1], "trans_z_mm": spec.translation_mm[2],
    }


def make_dataset(
    root: str | os.PathLike,
    subjects: Sequence[SubjectSpec] | None = None,
    voxel_size: float = 4.0,
    n_volumes: int = 300,
    tr: float = 2.0,
    seed: int = 20241124,
    with_anat: bool = True,
    params: SignalParams | None = None,
    clean: bool = False,
) -> pd.DataFrame:
    """Write a simulated fMRIPrep (>= 20.2) derivatives tree and return the truth table.

    Parameters
    ----------
    root : str or os.PathLike
        Output directory (created).
    subjects : sequence of SubjectSpec, optional
        Participants (default :data:`DEFAULT_SUBJECTS`).
    voxel_size : float
        BOLD voxel size (multiple of 2 mm).
    n_volumes : int
        Volumes per run, including the non-steady-state ones.
    tr : float
        Repetition time, s.
    seed : int
        Master seed; every run gets its own stream derived from it.
    with_anat : bool
        Also write T1w, T1w brain mask and the two ITK transforms per participant.
    params : SignalParams, optional
        Signal amplitudes.
    clean : bool
        Remove existing ``sub-*`` directories under ``root`` first.

    Returns
    -------
    pandas.DataFrame
        Truth table (also written to ``root/truth.tsv``): ``participant_id``,
        ``session_id`` (``n/a`` when no session), ``x``, ``y``, ``z`` (MNI mm) and extras,
        including ``t1w_x/y/z`` (the target in the participant's T1w world).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if clean:
        for old in sorted(root.glob("sub-*")):
            shutil.rmtree(old)
    subjects = DEFAULT_SUBJECTS if subjects is None else tuple(subjects)
    params = SignalParams() if params is None else params
    if n_volumes < len(NSS_FACTORS) + 10:
        raise ValueError("n_volumes too small")
    grid = _make_grid(voxel_size)
    _write_json(root / "dataset_description.json", {
        "Name": "tmstarget simulated sample (SIMULATED BOLD on real anatomy)",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "tmstarget-simulator",
            "Version": SIMULATOR_VERSION,
            "Description": ("SIMULATED resting-state BOLD in the layout of fMRIPrep >= 20.2 "
                            "derivatives, with a planted sgACC-anticorrelated left-DLPFC "
                            "target; not real data"),
        }],
        "License": "see LICENSES.md",
    })
    rows = []
    for si, spec in enumerate(subjects):
        for ki, session in enumerate(spec.sessions):
            sub_dir = root / spec.participant_id
            func_dir = (sub_dir / f"ses-{session}" if session is not None else sub_dir) / "func"
            for ri, run in enumerate(spec.runs):
                rng = _run_seed(seed, si, ki, ri)
                data, motion = simulate_run(rng, grid, spec.target_mm, n_volumes, tr, params)
                _write_run(func_dir, spec, session, run, grid, data, motion, tr,
                           len(NSS_FACTORS))
            rows.append(_truth_row(spec, session, voxel_size, len(spec.runs), n_volumes, tr))
        if with_anat:
            _write_anat(root, spec)
    truth = pd.DataFrame(rows)
    _write_text(root / "truth.tsv", truth.to_csv(sep="\t", index=False, lineterminator="\n"))
    return truth
