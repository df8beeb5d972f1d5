#!/usr/bin/env python
"""Reproduce the nilearn scrubbing leak tmstarget works around (README, "Known upstream issues").

``nilearn.signal.clean`` with a Butterworth filter and ``sample_mask`` interpolates censored
volumes with ``volumes[~sample_mask] = ...`` after ``sample_mask`` has become an array of
integer indices: ``~k`` is ``-(k + 1)``, so the kept volume at the mirror position ``n-1-k`` is
overwritten instead of the censored one. A censored volume whose mirror is censored too keeps
its raw value, which the filter then spreads into the kept volumes.

Prints the largest value left in the cleaned, censored output when censored volumes hold
spikes of 1000 (zero-mean noise elsewhere), for nilearn and for tmstarget's operator.
Run: ``python benchmarks/nilearn_scrub_leak.py``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    import nilearn
    from nilearn import signal

    from tmstarget.cleaning import cleaning_operator, resolve_strategy

    n, tr = 100, 2.0
    rng = np.random.default_rng(0)
    strategy = resolve_strategy("36p")
    print(f"nilearn {nilearn.__version__}; {n} samples, TR {tr} s, band-pass "
          f"{strategy.high_pass}-{strategy.low_pass} Hz")
    for censored in ([40], [40, 59]):
        x = rng.standard_normal((n, 1))
        x[censored] = 1000.0
        keep = np.ones(n, bool)
        keep[censored] = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = signal.clean(x, detrend=True, standardize=False, sample_mask=np.flatnonzero(keep),
                               filter="butterworth", low_pass=strategy.low_pass,
                               high_pass=strategy.high_pass, t_r=tr)
        ours = cleaning_operator(keep, None, tr, strategy) @ x
        print(f"censored {censored} (spikes of 1000): largest |value| kept by nilearn "
              f"{np.abs(ref).max():.1f}, by tmstarget {np.abs(ours).max():.1f} "
              f"(the band-passed noise alone: ~1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
