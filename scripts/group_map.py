"""Snakemake adapter: leave-one-out group sgACC map (tmstarget.pipeline.group_map_step)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.pipeline import group_map_step  # noqa: E402
from tmstarget.provenance import strict_config  # noqa: E402
from tmstarget.smk import run_step  # noqa: E402

sm = snakemake  # noqa: F821
run_step(sm, group_map_step, rmaps=dict(sm.params.sources),
         participant=sm.params.unit["participant"],
         cfg=strict_config(sm.params.cfg, sm.config, "group_map"), out_map=sm.output.gmap)
