"""Seed time series and seed-correlation maps.

The seed time series is the (weighted) mean of the denoised voxel time series inside the
seed; the map is the Pearson correlation of that series with every voxel. Runs are denoised
separately (each z-scored), then concatenated on the voxels common to all runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np

from .errors import InputError
from .regions import sphere_mask

if False:  # typing only, avoids importing nilearn at module import
    from .denoise import DenoisedRun  # noqa: F401


@dataclass
class CombinedData:
    """Denoised data of all runs of one participant/session on a common voxel set."""

    data: np.ndarray  # float32 (n_volumes_total, n_voxels)
    voxels: np.ndarray  # int (n_voxels, 3)
    affine: np.ndarray
    shape: tuple[int, int, int]
    run_lengths: list[int] = field(default_factory=list)

    def mask(self) -> np.ndarray:
        """Boolean 3D mask of the voxels."""
        m = np.zeros(self.shape, dtype=bool)
        m[tuple(self.voxels.T)] = True
        return m


def combine_runs(runs: Sequence[Any], sources: Sequence[str] | None = None,
                 part: str = "data") -> CombinedData:
    """Concatenate denoised runs on the voxels present in every run.

    Parameters
    ----------
    runs : sequence of DenoisedRun
        Each already cleaned and z-scored per voxel.
    sources : sequence of str, optional
        File names of the runs, for error messages.
    part : {"data", "half_a", "half_b"}
        Which series of each run to concatenate: the whole run, or one of its two
        independently cleaned halves.

    Returns
    -------
    CombinedData

    Raises
    ------
    InputError
        Runs on different grids, with different repetition times, or masks that do not overlap.
    """
    if not runs:
        raise InputError(None, "no denoised runs to combine.")
    names = list(sources) if sources is not None else [f"run {i + 1}" for i in range(len(runs))]
    ref = runs[0]
    for r, name in zip(runs[1:], names[1:], strict=True):
        tr0, tr1 = getattr(ref, "tr", None), getattr(r, "tr", None)
        if tr0 is not None and tr1 is not None and abs(float(tr1) - float(tr0)) > 1e-3 * float(tr0):
            raise InputError(name, f"this run's repetition time ({float(tr1):g} s) differs from "
                             f"that of {names[0]} ({float(tr0):g} s); the runs of one "
                             "participant/session are filtered and concatenated as one series.",
                             "Process runs with different TRs as separate sessions, or exclude "
                             "one of them.")
        if tuple(r.shape) != tuple(ref.shape) or not np.allclose(r.affine, ref.affine, atol=1e-3):
            raise InputError(name, f"this run is on a different voxel grid ({r.shape}) from "
                             f"{names[0]} ({ref.shape}).", "Use runs resampled to the same "
                             "MNI152NLin2009cAsym grid (same fMRIPrep --output-spaces res).")
    common = np.ones(ref.shape, dtype=bool)
    for r in runs:
        m = np.zeros(ref.shape, dtype=bool)
        m[tuple(np.asarray(r.voxels).T)] = True
        common &= m
    if not common.any():
        raise InputError(names[0], "the runs' brain masks do not overlap.",
                         "Check the runs' brain masks.")
    order = np.flatnonzero(common.ravel())  # C-order, as np.nonzero
    blocks = []
    for r in runs:
        flat = np.ravel_multi_index(tuple(np.asarray(r.voxels).T), ref.shape)
        pos = np.searchsorted(flat, order) if np.all(np.diff(flat) > 0) else None
        if pos is None:
            lookup = {v: i for i, v in enumerate(flat)}
            pos = np.array([lookup[v] for v in order])
        if part == "data":
            data = np.asarray(r.data, dtype=np.float32)
        else:
            if r.halves is None:
                raise InputError(names[0], "the denoised run has no independently cleaned "
                                 "halves.", "Rerun with reproducibility.enabled: true.")
            data = np.asarray(r.halves[0 if part == "half_a" else 1], dtype=np.float32)
        same = len(pos) == data.shape[1] and np.array_equal(pos, np.arange(len(pos)))
        blocks.append(data if same else data[:, pos])  # no copy when nothing is dropped
    voxels = np.stack(np.unravel_index(order, ref.shape), axis=1).astype(np.int32)
    data = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)
    return CombinedData(data, voxels, np.asarray(ref.affine, float),
                        tuple(int(s) for s in ref.shape), [int(b.shape[0]) for b in blocks])


def seed_weights(seed: Mapping[str, Any], shape: tuple[int, int, int],
                 affine: np.ndarray, data_space: str = "MNI152NLin2009cAsym"
                 ) -> tuple[np.ndarray, str]:
    """Seed weights on the BOLD grid.

    Parameters
    ----------
    seed : mapping
        ``{"kind": "sphere", "center_mm": [x, y, z], "radius_mm": r, "space": ...}`` or
        ``{"kind": "file", "file": path, "space": ...}``; a file is a binary mask or a weighted
        (possibly signed) seed map in a template space, resampled to the BOLD grid (nearest
        neighbour for masks, (tri)linear for weighted maps). ``space`` (see
        :mod:`tmstarget.spaces`): for a sphere, the template of ``center_mm`` (default
        MNI152NLin6Asym, where the Fox et al. 2012 coordinate was published); for a file,
        declared or recognised from the image's grid.
    shape, affine
        The BOLD grid.
    data_space : str
        The template of the BOLD grid.

    Returns
    -------
    weights : numpy.ndarray, float, 3D
    description : str
    """
    from .spaces import NLIN6, check_space, convert_points, resolve_image_space

    kind = seed.get("kind", "sphere")
    if kind == "sphere":
        c0 = [float(v) for v in seed["center_mm"]]
        space = check_space(seed.get("space") or NLIN6, "seed.space")
        c = [float(v) for v in convert_points([c0], space, data_space)[0]]
        r = float(seed["radius_mm"])
        moved = "" if space == data_space else (
            f" = ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) mm {data_space} "
            f"({float(np.linalg.norm(np.subtract(c, c0))):.1f} mm template correction)")
        return (sphere_mask(shape, affine, c, r).astype(float),
                f"sphere centre ({c0[0]:g}, {c0[1]:g}, {c0[2]:g}) mm {space}{moved}, radius "
                f"{r:g} mm")
    if kind != "file":
        raise InputError(None, f"seed kind '{kind}' is not known.", "Use 'sphere' or 'file'.")
    path = Path(str(seed.get("file") or ""))
    if not path.is_file():
        raise InputError(path, "the seed file does not exist.", "Fix seed.file in the config.")
    from nilearn.image import resample_img

    try:
        img = nb.load(path)
        vals = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(path, f"cannot read the seed image ({exc}).",
                         "Give a valid 3D NIfTI file.") from exc
    if vals.ndim == 4 and vals.shape[3] == 1:
        img = nb.Nifti1Image(vals[..., 0], img.affine, img.header)
        vals = vals[..., 0]
    if vals.ndim != 3:
        raise InputError(path, f"the seed image must be 3D, it is {vals.ndim}D.",
                         "Give a 3D mask or seed map.")
    if not np.all(np.isfinite(vals)):
        raise InputError(path, "the seed image contains NaN or infinite values.",
                         "Replace them with 0.")
    space, how = resolve_image_space(img, seed.get("space"), path, "seed.space")
    binary = set(np.unique(vals).tolist()) <= {0, 1}
    if space == data_space:
        res = resample_img(img, target_affine=affine, target_shape=shape,
                           interpolation="nearest" if binary else "continuous",
                           force_resample=True, copy_header=True)
        w = np.asarray(res.get_fdata(), dtype=float)
    else:
        from .spaces import resample_to_grid

        w = resample_to_grid(img, space, data_space, affine, shape,
                             "nearest" if binary else "linear")
    what = "binary mask" if binary else "weighted seed map"
    via = "" if space == data_space else f" through the {space} -> {data_space} template transform"
    return w, f"{what} {path.name} ({space}, {how}) resampled to the BOLD grid{via}"


def seed_timeseries(combined: CombinedData, weights: np.ndarray,
                    seed_name: str = "seed") -> tuple[np.ndarray, int]:
    """Weighted mean time series of the seed voxels.

    ``ts = Σ w_i x_i / Σ |w_i|`` over in-mask voxels with non-zero weight.

    Returns
    -------
    ts : numpy.ndarray, float64, (n_volumes,)
    n_voxels : int
        Number of in-mask voxels in the seed.
    """
    w = weights[tuple(combined.voxels.T)]
    sel = np.flatnonzero(w != 0)
    if sel.size == 0:
        raise InputError(seed_name, "the seed has no voxel inside the brain mask after "
                         "resampling to the BOLD grid.", "Check the seed's position/space "
                         "(MNI152NLin2009cAsym) and size.")
    ts = combined.data[:, sel].astype(np.float64) @ w[sel] / np.abs(w[sel]).sum()
    return ts, int(sel.size)


def correlation_map(data: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``ts`` with every column of ``data``.

    Parameters
    ----------
    data : numpy.ndarray (n_volumes, n_voxels)
    ts : numpy.ndarray (n_volumes,)

    Returns
    -------
    numpy.ndarray, float64, (n_voxels,)
    """
    t = np.asarray(ts, dtype=np.float64)
    t = t - t.mean()
    tn = np.sqrt(t @ t)
    if tn == 0:
        raise InputError(None, "the seed time series is constant (zero variance).",
                         "Check the seed lies in brain tissue with signal.")
    out = np.empty(data.shape[1], dtype=np.float64)
    step = 8192  # float64 work in blocks of voxels: memory stays that of ``data``
    for c0 in range(0, data.shape[1], step):
        x = np.asarray(data[:, c0:c0 + step], dtype=np.float64)
        xm = x.mean(axis=0)
        num = t @ x  # t is centred, so subtracting xm is unnecessary
        xn = np.sqrt(np.maximum(np.einsum("ij,ij->j", x, x) - x.shape[0] * xm**2, 0))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = num / (tn * xn)
        out[c0:c0 + step] = np.where(xn > 0, r, 0.0)
    return out


def to_volume(values: np.ndarray, combined: CombinedData, fill: float = 0.0) -> np.ndarray:
    """Scatter per-voxel values back into a 3D volume."""
    vol = np.full(combined.shape, fill, dtype=np.float32)
    vol[tuple(combined.voxels.T)] = values
    return vol
