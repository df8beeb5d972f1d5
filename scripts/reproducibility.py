"""Snakemake adapter: split-half, bootstrap, reference sites (tmstarget.pipeline.reproducibility_step)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.pipeline import reproducibility_step  # noqa: E402
from tmstarget.provenance import strict_config  # noqa: E402
from tmstarget.smk import run_step  # noqa: E402

sm = snakemake  # noqa: F821
run_step(sm, reproducibility_step, npz_paths=list(sm.input.runs), target_json=sm.input.coords,
         map_path=sm.input.rmap, mask_path=sm.input.mask, region_path=sm.input.region,
         cfg=strict_config(sm.params.cfg, sm.config, "reproducibility"),
         out_json=sm.output.stats, out_cloud=sm.output.cloud,
         group_map=(list(sm.input.group_map) or [None])[0], qc_path=sm.input.qc)
