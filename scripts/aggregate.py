"""Snakemake adapter: cohort tables at the output root (tmstarget.pipeline.aggregate_step)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.pipeline import aggregate_step  # noqa: E402
from tmstarget.provenance import strict_config  # noqa: E402
from tmstarget.smk import run_step  # noqa: E402

sm = snakemake  # noqa: F821
run_step(sm, aggregate_step, target_jsons=list(sm.input.targets), skipped=sm.params.skipped,
         cfg=strict_config(sm.params.cfg, sm.config, "aggregate"),
         output_root=sm.params.output_root, repro_jsons=list(sm.input.repro))
