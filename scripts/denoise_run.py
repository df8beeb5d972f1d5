"""Snakemake adapter: denoise one run (see tmstarget.pipeline.denoise_step)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.pipeline import denoise_step  # noqa: E402
from tmstarget.provenance import strict_config  # noqa: E402
from tmstarget.smk import run_step  # noqa: E402

sm = snakemake  # noqa: F821
run_step(sm, denoise_step, run=sm.params.run,
         cfg=strict_config(sm.params.cfg, sm.config, "denoise_run"), out_npz=sm.output.npz)
