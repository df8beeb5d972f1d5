"""Snakemake adapter: pick targets on a seed map (tmstarget.pipeline.target_step)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.pipeline import target_step  # noqa: E402
from tmstarget.provenance import strict_config  # noqa: E402
from tmstarget.smk import run_step  # noqa: E402

sm = snakemake  # noqa: F821
run_step(sm, target_step, map_path=sm.input.rmap, mask_path=sm.input.mask, qc_path=sm.input.qc,
         participant=sm.params.unit["participant"], session=sm.params.unit["session"],
         cfg=strict_config(sm.params.cfg, sm.config, "target"), out_json=sm.output.coords,
         out_region=sm.output.region, output_root=sm.params.output_root,
         npz_paths=list(sm.input.runs), group_map=(list(sm.input.group_map) or [None])[0],
         out_seedmap=getattr(sm.output, "seedmap", None),
         gm_probseg=(list(sm.input.gm_probseg) or [None])[0],
         anat=({"t1w": sm.input.t1w, "mask": sm.input.anat_mask,
                "xfm_mni_to_t1w_points": sm.input.xfm_mni_to_t1w_points}
               if hasattr(sm.input, "t1w") else None))
