#!/usr/bin/env python
"""(Re)generate the simulated raw-BIDS twin: ``python scripts/make_raw_sample_data.py data_sample_raw``.

Existing ``sub-*`` and ``truth`` folders in the output are replaced; ``README.md`` and
``LICENSES.md`` are left untouched. Same signal model and planted targets as
``scripts/make_sample_data.py``; see :mod:`tmstarget.simulate_raw`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tmstarget.simulate_raw import make_raw_dataset


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and write the dataset."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output directory (e.g. data_sample_raw)")
    ap.add_argument("--n-volumes", type=int, default=150, help="volumes per run")
    args = ap.parse_args(argv)
    truth = make_raw_dataset(args.out, n_volumes=args.n_volumes, clean=True)
    print(truth.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
