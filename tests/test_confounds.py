"""Confounds of the built-in path (CompCor, high-pass) against direct implementations.

The oracle here is the textbook computation in plain numpy (Behzadi et al. 2007, as nipype
writes it): residuals of a least-squares fit on a constant + cosine basis, variance-normalised,
decomposed by a full SVD. ``tmstarget.confounds`` uses a QR projection and, for masks with many
more voxels than volumes, the eigen-decomposition of the Gram matrix; they must agree.
"""

from __future__ import annotations

import numpy as np
import pytest

from tmstarget.confounds import _highpass, compcor, cosine_basis


def _reference_compcor(data, n_nss, basis, threshold=0.5, n_min=5, n_max=10):
    y = data[n_nss:].astype(np.float64)
    x = np.column_stack([np.ones(y.shape[0]), basis])
    y = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    sd = y.std(axis=0)
    y = y[:, sd > 0] / sd[sd > 0]
    u, s, _ = np.linalg.svd(y, full_matrices=False)
    var = s**2 / np.sum(s**2)
    n = int(np.clip(np.searchsorted(np.cumsum(var), threshold) + 1, n_min, min(n_max, u.shape[1])))
    return u[:, :n], s


def _signal(rng, t, v):
    """Low-rank structured noise (5 shared time courses) plus white noise."""
    courses = rng.standard_normal((t, 5)) * np.array([9.0, 6.0, 4.0, 3.0, 2.0])
    return 500 + courses @ rng.standard_normal((5, v)) + rng.standard_normal((t, v))


@pytest.mark.parametrize("v", [40, 3000])  # fewer and many more voxels than volumes
def test_compcor_matches_the_direct_svd(v):
    rng = np.random.default_rng(7)
    t, n_nss = 120, 3
    data = _signal(rng, t, v)
    data[:, 5] = 500.0  # a constant voxel is dropped, as in nipype
    basis = cosine_basis(t - n_nss, 2.0)
    comps, s = compcor(data, n_nss, basis)
    ref_u, ref_s = _reference_compcor(data, n_nss, basis)
    assert comps.shape == (t, ref_u.shape[1])
    assert np.all(comps[:n_nss] == 0)
    k = ref_u.shape[1]
    np.testing.assert_allclose(s[:k], ref_s[:k], rtol=1e-9)
    np.testing.assert_allclose(np.sum(s**2), np.sum(ref_s**2), rtol=1e-9)
    for i in range(k):  # same vectors up to sign, and the sign rule holds
        a, b = comps[n_nss:, i], ref_u[:, i]
        assert abs(abs(a @ b) - 1.0) < 1e-8, i
        assert a[np.argmax(np.abs(a))] > 0


def test_highpass_equals_least_squares_residuals():
    rng = np.random.default_rng(3)
    y = rng.standard_normal((90, 50)) + np.linspace(0, 5, 90)[:, None]
    basis = cosine_basis(90, 2.5)
    x = np.column_stack([np.ones(90), basis])
    want = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    np.testing.assert_allclose(_highpass(y, basis), want, atol=1e-10)
