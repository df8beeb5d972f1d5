#!/usr/bin/env python
"""(Re)generate the simulated sample dataset: ``python scripts/make_sample_data.py data_sample``.

Existing ``sub-*`` directories in the output are replaced; ``README.md`` and
``LICENSES.md`` are left untouched.  The output is byte-identical on every run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tmstarget.simulate import make_dataset


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and write the dataset."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output directory (e.g. data_sample)")
    ap.add_argument("--seed", type=int, default=None, help="master seed (default: built-in)")
    ap.add_argument("--n-volumes", type=int, default=None, help="volumes per run")
    ap.add_argument("--space", default="MNI152NLin2009cAsym",
                    choices=["MNI152NLin2009cAsym", "MNI152NLin6Asym"],
                    help="template of the tree; MNI152NLin6Asym moves the simulation through the "
                         "shipped transform (tmstarget.simulate_nlin6)")
    args = ap.parse_args(argv)
    kwargs = {k: v for k, v in (("seed", args.seed), ("n_volumes", args.n_volumes)) if v is not None}
    if args.space == "MNI152NLin6Asym":
        from tmstarget.simulate_nlin6 import make_dataset_nlin6

        truth = make_dataset_nlin6(args.out, clean=True, **kwargs)
    else:
        truth = make_dataset(args.out, clean=True, **kwargs)
    print(truth[["participant_id", "session_id", "x", "y", "z"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
