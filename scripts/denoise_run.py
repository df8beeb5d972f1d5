"""Snakemake adapter: denoise one run (see tmstarget.pipeline.denoise_step)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.pipeline import denoise_step  # noqa: E402
from tmstarget.smk import run_step  # noqa: E402

run_step(snakemake, denoise_step, run=snakemake.params.run, cfg=snakemake.config,  # noqa: F821
         out_npz=snakemake.output.npz)  # noqa: F821
