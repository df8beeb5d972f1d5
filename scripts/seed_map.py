"""Snakemake adapter: seed time series and correlation map (tmstarget.pipeline.seedmap_step)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.pipeline import seedmap_step  # noqa: E402
from tmstarget.provenance import strict_config  # noqa: E402
from tmstarget.smk import run_step  # noqa: E402

sm = snakemake  # noqa: F821
run_step(sm, seedmap_step, npz_paths=list(sm.input.runs), participant=sm.params.unit["participant"],
         session=sm.params.unit["session"],
         cfg=strict_config(sm.params.cfg, sm.config, "seed_map"), out_map=sm.output.rmap,
         out_mask=sm.output.mask, out_seed_tsv=sm.output.seed_tsv, out_qc=sm.output.qc)
