"""Denoising of one fMRIPrep run: named confound strategies, scrubbing, band-pass, smoothing.

The cleaning follows nilearn exactly (``load_confounds`` for the confounds and the censoring
mask, ``signal.clean`` for detrending, confound regression, censoring and band-pass filtering,
``zscore_sample`` standardisation, ``smooth_img`` for smoothing) but never builds the full
voxel x time matrix in float64 and never loads the whole 4D image at once:

* temporal cleaning is one linear operator ``L`` (kept volumes x volumes) shared by every voxel;
  it is obtained once by cleaning the identity matrix with the very call the reference uses;
* the 4D file is streamed in chunks of volumes; each chunk is smoothed in space (smoothing acts
  on each volume independently), masked, and accumulated as ``Y += L[:, chunk] @ X_chunk``
  (in place, BLAS ``sgemm`` with ``beta=1``; all-zero columns of ``L`` -- censored volumes --
  skipped);
* ``Y`` (float32, kept x brain voxels) is then z-scored per voxel, in blocks of voxels.

Reading and smoothing (:class:`_VolumeStream`): a background thread decompresses the file once,
sequentially (ISA-L's ``igzip`` when the ``isal`` package is installed, else ``gzip``), into a
reused buffer of the on-disk dtype, applies ``scl_slope``/``scl_inter`` to float32, crops to the
brain mask's bounding box plus the kernel radius and does the first (x) smoothing pass; the
main thread does the y and z passes (only where later passes need them) and the product, so
decompression overlaps with computation. The Gaussian passes are nilearn's own
(``scipy.ndimage.gaussian_filter1d``, same sigma, truncation, order and border mode), so the
values inside the mask are those of smoothing the whole volume. Peak memory is ``Y`` plus a
few chunk buffers (1,200 volumes of a 2 mm MNI run: ~2.2 GB; see ``benchmarks/``).

``tests/test_denoise.py`` proves the result equals ``nilearn.maskers.NiftiMasker`` with the same
settings to float32 precision for every named strategy, with and without censoring.
"""

from __future__ import annotations

import gzip
import json
import math
import queue
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import nibabel as nb
import numpy as np
import pandas as pd

from .errors import ConfigError, InputError
from .inputcheck import grid_mismatch
from .io import atomic_write

#: Volumes read per chunk when streaming a 4D file.
CHUNK_VOLUMES = 50
#: Above this fraction of brain-mask voxels with a constant signal the run is refused.
MAX_CONSTANT_FRACTION = 0.10
#: Seconds spent in each stage by the last :func:`denoise_run` call (for benchmarks only; not
#: part of any output, so outputs stay byte-identical between runs).
LAST_TIMINGS: dict[str, float] = {}


@dataclass(frozen=True)
class Strategy:
    """A named denoising strategy (what is regressed out and how the data are filtered).

    Attributes
    ----------
    name : str
        Name recorded in every output (``fox2012``, ``36p``, ``acompcor``).
    confounds : tuple of str
        ``strategy`` argument of :func:`nilearn.interfaces.fmriprep.load_confounds`.
    motion, wm_csf, global_signal : str
        Expansion of each confound family (``basic``, ``derivatives``, ``power2``, ``full``).
    compcor : str
        CompCor flavour (used when ``"compcor"`` is in ``confounds``).
    n_compcor : int or "all"
        Number of CompCor components.
    high_pass, low_pass : float or None
        Butterworth band-pass edges in Hz.
    smoothing_fwhm : float or None
        Isotropic Gaussian smoothing in mm (None or 0 = none).
    detrend : bool
        Remove a linear trend.
    reference : str
        Where the strategy comes from.
    """

    name: str
    confounds: tuple[str, ...]
    motion: str = "basic"
    wm_csf: str = "basic"
    global_signal: str = "basic"
    compcor: str = "anat_combined"
    n_compcor: int | str = 5
    high_pass: float | None = 0.01
    low_pass: float | None = 0.08
    smoothing_fwhm: float | None = 6.0
    detrend: bool = True
    reference: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (recorded in every sidecar)."""
        d = asdict(self)
        d["confounds"] = list(self.confounds)
        return d


STRATEGIES: dict[str, Strategy] = {
    "fox2012": Strategy(
        "fox2012", ("motion", "wm_csf", "global_signal", "scrub", "non_steady_state"),
        motion="basic", wm_csf="basic", global_signal="basic",
        high_pass=0.009, low_pass=0.08, smoothing_fwhm=6.0,
        reference="Fox et al. 2012, Biol Psychiatry 72:595: 6 motion parameters, white matter, "
                  "CSF and global signal regressed; band-pass 0.009-0.08 Hz; 6 mm FWHM."),
    "36p": Strategy(
        "36p", ("motion", "wm_csf", "global_signal", "scrub", "non_steady_state"),
        motion="full", wm_csf="full", global_signal="full",
        high_pass=0.01, low_pass=0.08, smoothing_fwhm=6.0,
        reference="Satterthwaite et al. 2013 / Ciric et al. 2017: 36 parameters (motion, WM, "
                  "CSF, global signal with derivatives and squares); band-pass 0.01-0.08 Hz."),
    "acompcor": Strategy(
        "acompcor", ("motion", "high_pass", "compcor", "scrub", "non_steady_state"),
        motion="full", compcor="anat_combined", n_compcor=5,
        high_pass=0.01, low_pass=0.08, smoothing_fwhm=6.0,
        reference="Behzadi et al. 2007 / Muschelli et al. 2014: 24 motion parameters + 5 "
                  "anatomical CompCor components (WM+CSF), no global signal; band-pass "
                  "0.01-0.08 Hz. fMRIPrep's cosine regressors are included because CompCor was "
                  "computed on high-pass filtered data."),
}


def resolve_strategy(name: str, overrides: Mapping[str, Any] | None = None) -> Strategy:
    """Return a named strategy with optional overrides (``None`` values are ignored).

    Parameters
    ----------
    name : str
        One of :data:`STRATEGIES`.
    overrides : mapping, optional
        ``smoothing_fwhm``, ``high_pass``, ``low_pass``.

    Raises
    ------
    ConfigError
        Unknown name or impossible band.
    """
    if name not in STRATEGIES:
        raise ConfigError(None, f"denoise.strategy '{name}' is not known; choose one of "
                          f"{', '.join(STRATEGIES)}.")
    s = STRATEGIES[name]
    changes = {k: (float(v) if v is not None else None)
               for k, v in (overrides or {}).items() if v is not None}
    unknown = set(changes) - {"smoothing_fwhm", "high_pass", "low_pass"}
    if unknown:
        raise ConfigError(None, f"cannot override {sorted(unknown)} of a denoising strategy.")
    s = replace(s, **changes)
    if s.high_pass is not None and s.low_pass is not None and s.high_pass >= s.low_pass:
        raise ConfigError(None, f"denoise.high_pass ({s.high_pass} Hz) must be below denoise.low_pass "
                          f"({s.low_pass} Hz).")
    return s


@dataclass
class DenoisedRun:
    """One run after denoising.

    Attributes
    ----------
    data : numpy.ndarray
        float32 (kept volumes, voxels), each voxel z-scored (``zscore_sample``).
    voxels : numpy.ndarray
        int32 (voxels, 3) voxel indices, in ``numpy.nonzero`` (C) order.
    affine : numpy.ndarray
        4x4 voxel-to-MNI (RAS+ mm) affine of the BOLD grid.
    shape : tuple of int
        3D grid shape.
    kept : numpy.ndarray
        Indices of the retained volumes in the original run.
    tr : float
        Repetition time (s).
    qc : dict
        Quality numbers (volumes, censoring, FD, strategy, ...).
    """

    data: np.ndarray
    voxels: np.ndarray
    affine: np.ndarray
    shape: tuple[int, int, int]
    kept: np.ndarray
    tr: float
    qc: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- validation
def _load_image(path: Path, what: str) -> nb.Nifti1Image:
    if not path.is_file():
        raise InputError(path, f"the {what} does not exist.", "Check the fMRIPrep output.")
    try:
        img = nb.load(path, keep_file_open=True) if str(path).endswith(".gz") else nb.load(path)
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(path, f"the {what} cannot be read as NIfTI ({exc}).",
                         "The file is corrupt or truncated: copy it again or rerun fMRIPrep "
                         "for this participant.") from exc
    return img


def _check_affine(img: nb.Nifti1Image, path: Path, what: str) -> np.ndarray:
    hdr = img.header
    aff = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-6:
        raise InputError(path, f"the {what} has an invalid voxel-to-world affine.",
                         "Check the NIfTI header (qform/sform).")
    q, qc = hdr.get_qform(coded=True)
    s, sc = hdr.get_sform(coded=True)
    if q is not None and s is not None and qc > 0 and sc > 0:
        if not np.allclose(q, s, atol=1e-3):
            err = float(np.abs(q - s).max())
            raise InputError(path, f"the {what}'s qform and sform disagree (by up to "
                             f"{err:.3g} mm); which one a program uses would change where "
                             "the target is.",
                             "Fix the header (e.g. nibabel: img.set_qform(img.get_sform())) "
                             "after checking which is right, or rerun fMRIPrep.")
    return aff


def _repetition_time(img: nb.Nifti1Image, bold: Path, bold_json: Path | None) -> float:
    tr_json = None
    if bold_json is not None and Path(bold_json).is_file():
        try:
            meta = json.loads(Path(bold_json).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(bold_json, f"the BOLD sidecar is not valid JSON ({exc}).",
                             "Repair or regenerate the JSON sidecar.") from exc
        if not isinstance(meta, dict):
            raise InputError(bold_json, f"the BOLD sidecar holds a JSON {type(meta).__name__}, "
                             "not an object.", "Repair or regenerate the JSON sidecar: "
                             "it must hold one JSON object, in curly braces.")
        tr_json = meta.get("RepetitionTime")
    if tr_json is None:
        raise InputError(bold_json or bold, "RepetitionTime is missing from the BOLD JSON "
                         "sidecar.", "Add \"RepetitionTime\" (seconds) to the sidecar; "
                         "fMRIPrep writes it.")
    try:
        tr = float(tr_json)
    except (TypeError, ValueError):
        raise InputError(bold_json, f"RepetitionTime {tr_json!r} is not a number.",
                         "Write it in seconds, e.g. 2.0.") from None
    if not (0.05 < tr < 20):
        raise InputError(bold_json, f"RepetitionTime {tr} s is implausible.",
                         "RepetitionTime must be in seconds (e.g. 2.0, not 2000).")
    zooms = img.header.get_zooms()
    if len(zooms) > 3 and zooms[3] > 0:
        unit = img.header.get_xyzt_units()[1]
        tr_hdr = float(zooms[3]) * {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
        if abs(tr_hdr - tr) > 0.01 * tr + 1e-3:
            raise InputError(bold, f"the repetition time in the NIfTI header ({tr_hdr:g} s) "
                             f"disagrees with RepetitionTime in {Path(bold_json).name} "
                             f"({tr:g} s).", "Find out which is right and fix the other; the "
                             "band-pass filter depends on it.")
    return tr


def _load_confounds(bold: Path, confounds: Path, n_vols: int, strategy: Strategy,
                    fd_threshold: float, std_dvars_threshold: float | None,
                    min_segment: int) -> tuple[pd.DataFrame, np.ndarray | None, pd.DataFrame]:
    if not Path(confounds).is_file():
        raise InputError(confounds, "the confounds file does not exist.",
                         "Check the fMRIPrep output for this run.")
    try:
        raw = pd.read_csv(confounds, sep="\t")
    except Exception as exc:
        raise InputError(confounds, f"the confounds TSV cannot be read ({exc}).",
                         "Regenerate it with fMRIPrep.") from exc
    if len(raw) != n_vols:
        raise InputError(confounds, f"the confounds table has {len(raw)} rows but the BOLD "
                         f"run {Path(bold).name} has {n_vols} volumes.",
                         "The confounds file belongs to another run or was truncated: use the "
                         "one fMRIPrep wrote beside this BOLD file.")
    bad = [c for c in raw.columns if not pd.api.types.is_numeric_dtype(raw[c])]
    if bad:
        raise InputError(confounds, f"non-numeric values in column(s) {', '.join(bad[:5])}.",
                         "Only numbers and 'n/a' are allowed in a confounds TSV.")
    from nilearn.interfaces.fmriprep import load_confounds

    kwargs: dict[str, Any] = {
        "strategy": strategy.confounds, "motion": strategy.motion, "wm_csf": strategy.wm_csf,
        "global_signal": strategy.global_signal, "scrub": int(min_segment),
        "fd_threshold": float(fd_threshold),
        "std_dvars_threshold": float(std_dvars_threshold) if std_dvars_threshold else math.inf,
        "demean": True,
    }
    if "compcor" in strategy.confounds:
        kwargs.update(compcor=strategy.compcor, n_compcor=strategy.n_compcor)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conf, sample_mask = load_confounds(str(bold), **kwargs)
    except Exception as exc:
        raise InputError(confounds, f"the confounds needed by strategy '{strategy.name}' could "
                         f"not be loaded: {exc}",
                         "Check that the file is an fMRIPrep confounds table with its JSON "
                         "sidecar, or choose another denoise.strategy.") from exc
    if sample_mask is not None and len(sample_mask) == 0:
        raise InputError(bold, f"every volume of this run is censored (framewise displacement "
                         f"above {fd_threshold} mm or non-steady-state).",
                         "The run has too much motion to be used: exclude it, or, knowingly, "
                         "raise denoise.fd_threshold.")
    if conf is None or conf.shape[1] == 0:
        raise InputError(confounds, f"no confound columns were found for strategy "
                         f"'{strategy.name}'.", "Choose a strategy the file supports.")
    if not np.all(np.isfinite(conf.to_numpy(dtype=float))):
        cols = [c for c in conf.columns if not np.all(np.isfinite(conf[c]))]
        raise InputError(confounds, f"missing or infinite values in {', '.join(cols[:5])}.",
                         "Repair the confounds table (only the first row of derivative "
                         "columns may be 'n/a').")
    return conf, (None if sample_mask is None else np.asarray(sample_mask, dtype=int)), raw


def cleaning_operator(n_volumes: int, confounds: np.ndarray | None,
                      sample_mask: np.ndarray | None, tr: float,
                      strategy: Strategy) -> np.ndarray:
    """The temporal cleaning operator ``L`` (kept volumes x volumes).

    ``L @ x`` equals ``nilearn.signal.clean(x, ..., standardize=False)`` for any time series
    ``x`` of the run, because that cleaning is linear in ``x``; ``L`` is obtained by cleaning the
    identity matrix with the same call.
    """
    from nilearn import signal

    eye = np.eye(n_volumes, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        op = signal.clean(eye, detrend=strategy.detrend, standardize=False,
                          confounds=confounds, standardize_confounds=True,
                          sample_mask=sample_mask, filter="butterworth"
                          if (strategy.low_pass or strategy.high_pass) else False,
                          low_pass=strategy.low_pass, high_pass=strategy.high_pass, t_r=tr)
    return np.ascontiguousarray(op, dtype=np.float64)


_ZSCORE_BLOCK = 8192
_N_BOXES = 3


class _VolumeStream:
    """Stream a 4D NIfTI in chunks of volumes: read, crop, smooth, mask.

    A background thread decompresses the file *sequentially, once* (``isal.igzip`` or
    ``gzip``, or plain reads, into a reused buffer of the on-disk dtype, then scaling with
    ``scl_slope`` / ``scl_inter`` to float32) and does the first (x) smoothing pass, so reading
    overlaps with the other passes and the matrix products in the caller. Each chunk is cropped to the brain mask's bounding box plus the smoothing
    kernel's radius and smoothed with the same separable Gaussian (``gaussian_filter1d``,
    axes x, y, z in that order, same sigma and truncation, ``reflect`` at the image border) as
    ``nilearn.image.smooth_img``; results inside the box are identical to smoothing the whole
    volume. Iterating yields ``(first, stop, x, n_bad)`` with ``x`` float32 (volumes, brain
    voxels) in the order of ``np.argwhere(mask)``.
    """

    def __init__(self, img: nb.Nifti1Image, path: Path, mask: np.ndarray, fwhm: float | None,
                 affine: np.ndarray, chunk: int) -> None:
        self.img, self.path, self.chunk = img, path, max(1, int(chunk))
        self.shape = tuple(int(v) for v in img.shape[:3])
        self.n_vols = int(img.shape[3])
        vox = np.argwhere(mask)
        vsize = np.sqrt(np.sum(np.asarray(affine, float)[:3, :3] ** 2, axis=0))
        if fwhm:
            self.sigma = [float(v) for v in fwhm / (np.sqrt(8 * np.log(2)) * vsize)]
        else:
            self.sigma = [0.0, 0.0, 0.0]
        rad = [int(4.0 * s + 0.5) if s > 0 else 0 for s in self.sigma]  # scipy's truncate=4
        lo, hi = vox.min(axis=0), vox.max(axis=0)
        self.box = [(max(0, int(lo[i]) - rad[i]), min(self.shape[i], int(hi[i]) + rad[i] + 1))
                    for i in range(3)]
        (x0, x1), (y0, y1), (z0, z1) = self.box
        self.crop = (z1 - z0, y1 - y0, x1 - x0)  # C layout (z, y, x): x is contiguous on disk
        # the mask's own bounding box inside the crop, per axis (x, y, z)
        self.inner = [(int(lo[i]) - self.box[i][0], int(hi[i]) + 1 - self.box[i][0])
                      for i in range(3)]
        self.flat = (((vox[:, 2] - z0) * self.crop[1] + (vox[:, 1] - y0)) * self.crop[2]
                     + (vox[:, 0] - x0)).astype(np.intp)
        self.wait = self.smooth = self.read = self.smooth_x = 0.0
        self._q: queue.Queue = queue.Queue(maxsize=_N_BOXES)
        self._free: queue.Queue = queue.Queue()
        for _ in range(_N_BOXES):  # float32 crop buffers cycled between reader and consumer
            self._free.put(np.empty((self.chunk, *self.crop), dtype=np.float32))
        self._x = np.empty((self.chunk, len(self.flat)), dtype=np.float32)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ reader thread
    def _raw_source(self):
        """A reader for the on-disk bytes, or None when the generic path must be used."""
        from nibabel.arrayproxy import ArrayProxy

        proxy = self.img.dataobj
        if not isinstance(proxy, ArrayProxy) or getattr(proxy, "order", "F") != "F" \
                or len(proxy.shape) != 4:
            return None
        name = str(self.path)
        if name.endswith(".gz"):
            try:  # ISA-L's inflate needs ~35 % less CPU than zlib's (measured, benchmarks/)
                from isal import igzip as _gz
            except ImportError:  # pragma: no cover - optional speed-up
                _gz = gzip
            fh = _gz.open(name, "rb")
        else:
            fh = open(name, "rb")  # noqa: SIM115
        skip = int(proxy.offset)
        while skip > 0:
            got = fh.read(min(skip, 1 << 20))
            if not got:
                fh.close()
                raise EOFError("file ends inside the header")
            skip -= len(got)
        return fh

    def _producer(self) -> None:
        from scipy.ndimage import gaussian_filter1d

        fh = None
        try:
            fh = self._raw_source()
            proxy = self.img.dataobj
            nx, ny, nz = self.shape
            (x0, x1), (y0, y1), (z0, z1) = self.box
            slope = float(getattr(proxy, "slope", 1.0))
            inter = float(getattr(proxy, "inter", 0.0))
            raw = None
            if fh is not None:  # one reused buffer of the on-disk dtype (fresh pages are slow)
                raw = np.empty((self.chunk, nz, ny, nx), dtype=proxy.dtype)
            for a in range(0, self.n_vols, self.chunk):
                b = min(self.n_vols, a + self.chunk)
                box = self._free_box()
                if box is None:
                    return
                box = box[: b - a]
                t = time.perf_counter()
                try:
                    if raw is not None:
                        part = raw[: b - a]
                        view = memoryview(part.reshape(-1).view(np.uint8))
                        got = 0
                        while got < view.nbytes:
                            n = fh.readinto(view[got:])
                            if not n:
                                raise EOFError(f"file ends after {got} of {view.nbytes} bytes")
                            got += n
                        src = part[:, z0:z1, y0:y1, x0:x1]
                        if slope != 1.0 or inter != 0.0:
                            np.multiply(src, np.float32(slope), out=box, casting="unsafe")
                            box += np.float32(inter)
                        else:
                            np.copyto(box, src, casting="unsafe")
                    else:
                        part = np.asarray(self.img.dataobj[x0:x1, y0:y1, z0:z1, a:b],
                                          dtype=np.float32)
                        np.copyto(box, part.transpose(3, 2, 1, 0))
                except Exception as exc:  # noqa: BLE001 - reported by the consumer
                    self._put(("error", a, b, exc))
                    return
                self.read += time.perf_counter() - t
                t = time.perf_counter()
                # non-finite values, then the x pass of the smoothing here: this thread has
                # spare time while the consumer smooths along y and z and multiplies
                flat2d = box.reshape(b - a, -1)
                n_bad = 0
                if not np.isfinite(flat2d.sum(dtype=np.float64)):  # cheap test, exact fallback
                    finite = np.isfinite(flat2d)
                    n_bad = int((~finite[:, self.flat]).any(axis=0).sum())
                    flat2d[~finite] = 0.0  # as nilearn's ensure_finite before smoothing
                    del finite
                if self.sigma[0] > 0:
                    for v0 in range(0, b - a, 8):
                        sub = box[v0:v0 + 8]
                        gaussian_filter1d(sub, self.sigma[0], axis=3, output=sub)
                self.smooth_x += time.perf_counter() - t
                if not self._put(("ok", a, b, (box, n_bad))):
                    return
            self._put(("end", 0, 0, None))
        except Exception as exc:  # noqa: BLE001
            self._put(("error", 0, self.n_vols, exc))
        finally:
            if fh is not None:
                fh.close()

    def _free_box(self) -> np.ndarray | None:
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    # ------------------------------------------------------------------ consumer
    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._producer, name="tmstarget-reader",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __iter__(self):
        from scipy.ndimage import gaussian_filter1d

        while True:
            t = time.perf_counter()
            kind, a, b, box = self._q.get()
            self.wait += time.perf_counter() - t
            if kind == "end":
                return
            if kind == "error":
                raise InputError(self.path, f"volumes {a}-{b - 1} cannot be read ({box}).",
                                 "The file is corrupt or truncated: copy it again or rerun "
                                 "fMRIPrep.") from box
            t = time.perf_counter()
            box, n_bad = box
            c = box.shape[0]
            flat2d = box.reshape(c, -1)
            # y then z passes (the reader did x: nilearn's order), each only where a later
            # pass or the mask needs it (y: x inside the mask's box; z: x and y inside it);
            # a few volumes at a time
            (ix0, ix1), (iy0, iy1) = self.inner[0], self.inner[1]
            for v0 in range(0, c, 8):
                if self.sigma[1] > 0:
                    sub = box[v0:v0 + 8, :, :, ix0:ix1]
                    gaussian_filter1d(sub, self.sigma[1], axis=2, output=sub)
                if self.sigma[2] > 0:
                    sub = box[v0:v0 + 8, :, iy0:iy1, ix0:ix1]
                    gaussian_filter1d(sub, self.sigma[2], axis=1, output=sub)
            x = self._x[:c]
            np.take(flat2d, self.flat, axis=1, out=x)
            self._free.put(box.base if box.base is not None else box)
            del box, flat2d
            self.smooth += time.perf_counter() - t
            yield a, b, x, n_bad


def denoise_run(bold: str | Path, mask: str | Path, confounds: str | Path,
                bold_json: str | Path | None, strategy: Strategy, fd_threshold: float = 0.5,
                std_dvars_threshold: float | None = None, min_segment: int = 5,
                chunk_volumes: int = CHUNK_VOLUMES) -> DenoisedRun:
    """Denoise one preprocessed BOLD run inside its brain mask.

    Parameters
    ----------
    bold, mask, confounds, bold_json : path
        fMRIPrep's ``desc-preproc_bold``, ``desc-brain_mask``, ``desc-confounds_timeseries.tsv``
        (its ``.json`` beside it) and the BOLD JSON sidecar.
    strategy : Strategy
        See :data:`STRATEGIES` and :func:`resolve_strategy`.
    fd_threshold : float
        Framewise displacement (mm) above which a volume is censored.
    std_dvars_threshold : float or None
        Standardised DVARS above which a volume is censored (None: not used).
    min_segment : int
        Runs of kept volumes shorter than this are censored too.
    chunk_volumes : int
        Volumes read at a time (memory vs. speed).

    Returns
    -------
    DenoisedRun

    Raises
    ------
    InputError
        Any problem with the inputs, naming the file.
    """
    bold, mask, confounds = Path(bold), Path(mask), Path(confounds)
    img = _load_image(bold, "preprocessed BOLD image")
    if img.ndim != 4:
        raise InputError(bold, f"this image is {img.ndim}D ({img.shape}); a BOLD run must be 4D "
                         "(x, y, z, time).", "Give the 4D preprocessed BOLD series.")
    n_vols = int(img.shape[3])
    if n_vols < 10:
        raise InputError(bold, f"the run has only {n_vols} volumes.", "Use a full resting run.")
    aff = _check_affine(img, bold, "BOLD image")
    shape = tuple(int(s) for s in img.shape[:3])
    mimg = _load_image(mask, "brain mask")
    maff = _check_affine(mimg, mask, "brain mask")
    if tuple(mimg.shape[:3]) != shape or not np.allclose(maff, aff, atol=1e-3):
        raise InputError(mask, grid_mismatch(tuple(mimg.shape), maff, shape, aff, bold.name),
                         "Use the brain mask fMRIPrep wrote for this run (same space and res).")
    try:
        bmask = np.asarray(mimg.dataobj).reshape(shape) > 0
    except Exception as exc:
        raise InputError(mask, f"the brain mask cannot be read ({exc}).",
                         "Copy it again or rerun fMRIPrep.") from exc
    if not bmask.any():
        raise InputError(mask, "the brain mask is empty.", "Use fMRIPrep's brain mask.")
    tr = _repetition_time(img, bold, Path(bold_json) if bold_json else None)
    conf, sample_mask, raw = _load_confounds(bold, confounds, n_vols, strategy, fd_threshold,
                                             std_dvars_threshold, min_segment)
    nss = [c for c in raw.columns if c.startswith("non_steady_state_outlier")]
    n_nss = int((raw[nss].to_numpy() > 0).any(axis=1).sum()) if nss else 0
    kept = np.arange(n_vols) if sample_mask is None else np.sort(sample_mask)
    if len(kept) < 3:
        raise InputError(bold, f"only {len(kept)} of {n_vols} volumes survive scrubbing.",
                         "This run has too much motion to be used.")
    t_op = time.perf_counter()
    op = cleaning_operator(n_vols, conf.to_numpy(dtype=float), sample_mask, tr, strategy)
    op32 = op.astype(np.float32)
    t_op = time.perf_counter() - t_op

    voxels = np.argwhere(bmask).astype(np.int32)  # C order, as np.nonzero
    out = np.zeros((op.shape[0], len(voxels)), dtype=np.float32)
    used = np.any(op32 != 0, axis=0)  # volumes that enter the cleaned series at all
    from scipy.linalg.blas import sgemm

    n_bad = 0
    offset: np.ndarray | None = None
    timings = {"read_wait": 0.0, "smooth": 0.0, "matmul": 0.0}
    t0 = time.perf_counter()
    with _VolumeStream(img, bold, bmask, strategy.smoothing_fwhm, aff, chunk_volumes) as stream:
        for a, b, x, bad in stream:  # x: (volumes, brain voxels) float32, smoothed
            n_bad += bad
            t1 = time.perf_counter()
            if offset is None:
                # L annihilates constants (detrending removes the mean), so subtracting a
                # per-voxel offset changes nothing but keeps float32 products far from
                # cancellation.
                offset = x.mean(axis=0, dtype=np.float64).astype(np.float32)
            x -= offset
            # out += L[:, a:b] @ x, in place (BLAS gemm with beta=1 on the transposed,
            # Fortran-ordered view): no (kept x voxels) temporary per chunk. Censored and
            # non-steady-state volumes have all-zero columns in L: skip them.
            cols = used[a:b]
            if cols.all():
                lx, xx = op32[:, a:b], x
            elif cols.any():
                lx, xx = op32[:, a:b][:, cols], x[cols]
            else:
                lx = None
            if lx is not None:
                sgemm(1.0, xx.T, np.ascontiguousarray(lx).T, beta=1.0, c=out.T,
                      overwrite_c=True)
            timings["matmul"] += time.perf_counter() - t1
        timings["read_wait"] = stream.wait
        timings["smooth"] = stream.smooth
        timings["read_thread"] = stream.read
        timings["smooth_x_in_reader"] = stream.smooth_x
    timings["stream_total"] = time.perf_counter() - t0
    timings["operator"] = t_op
    LAST_TIMINGS.clear()
    LAST_TIMINGS.update({k: round(v, 3) for k, v in timings.items()})
    if n_bad:
        raise InputError(bold, f"{n_bad} voxel(s) inside the brain mask contain NaN or infinite "
                         "values.", "The BOLD file is damaged: rerun fMRIPrep or repair it.")
    # z-score (nilearn's "zscore_sample": ddof=1); drop voxels with no signal variance.
    # Done in blocks of voxels so that no float64 copy of the whole matrix is made.
    sd = np.empty(out.shape[1], dtype=np.float64)
    for c0 in range(0, out.shape[1], _ZSCORE_BLOCK):
        blk = out[:, c0:c0 + _ZSCORE_BLOCK].astype(np.float64)
        blk -= blk.mean(axis=0)
        sd[c0:c0 + _ZSCORE_BLOCK] = blk.std(axis=0, ddof=1)
        out[:, c0:c0 + _ZSCORE_BLOCK] = blk
    ref = float(np.median(sd[sd > 0])) if np.any(sd > 0) else 0.0
    good = sd > 1e-5 * ref if ref > 0 else np.zeros(len(sd), bool)
    n_const = int((~good).sum())
    if n_const > MAX_CONSTANT_FRACTION * len(sd):
        raise InputError(bold, f"{n_const} of {len(sd)} voxels inside the brain mask "
                         f"({100 * n_const / len(sd):.0f} %) have a constant signal.",
                         f"The brain mask ({mask.name}) does not fit the data, or the data are "
                         "blank in part of the brain: check both in a viewer.")
    if n_const:
        out = out[:, good]
        voxels = voxels[good]
        sd = sd[good]
    for c0 in range(0, out.shape[1], _ZSCORE_BLOCK):
        out[:, c0:c0 + _ZSCORE_BLOCK] /= sd[c0:c0 + _ZSCORE_BLOCK].astype(np.float32)

    fd = (raw["framewise_displacement"].fillna(0).to_numpy(dtype=float)
          if "framewise_displacement" in raw else np.zeros(n_vols))
    n_censored = n_vols - len(kept) - n_nss
    qc: dict[str, Any] = {
        "n_volumes": n_vols,
        "n_non_steady_state": n_nss,
        "n_censored": int(max(n_censored, 0)),
        "n_retained": int(len(kept)),
        "retained_seconds": float(len(kept) * tr),
        "fd": [round(float(v), 5) for v in fd],
        "fd_mean": float(np.mean(fd)),
        "fd_max": float(np.max(fd)),
        "censored": sorted(set(range(n_vols)) - set(int(k) for k in kept)),
        "fd_threshold": float(fd_threshold),
        "std_dvars_threshold": std_dvars_threshold,
        "min_segment": int(min_segment),
        "confound_columns": list(conf.columns),
        "n_constant_voxels_dropped": n_const,
        "repetition_time": tr,
        "strategy": strategy.to_dict(),
    }
    return DenoisedRun(out, voxels, aff, shape, kept.astype(np.int32), tr, qc)


def save_denoised(run: DenoisedRun, path: str | Path) -> None:
    """Write a :class:`DenoisedRun` to ``.npz`` atomically (temp file + rename)."""
    with atomic_write(path, "wb") as fh:
        np.savez(fh, data=run.data, voxels=run.voxels, affine=run.affine,
                 shape=np.asarray(run.shape), kept=run.kept, tr=np.asarray(run.tr),
                 qc=np.asarray(json.dumps(run.qc, sort_keys=True)))


def load_denoised(path: str | Path) -> DenoisedRun:
    """Read a file written by :func:`save_denoised`."""
    with np.load(path, allow_pickle=False) as z:
        return DenoisedRun(z["data"], z["voxels"], z["affine"],
                           tuple(int(s) for s in z["shape"]), z["kept"], float(z["tr"]),
                           json.loads(str(z["qc"])))
