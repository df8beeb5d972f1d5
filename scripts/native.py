"""Snakemake adapter: native-space targets and navigator exports (tmstarget.native.native_step)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.native import native_step  # noqa: E402
from tmstarget.provenance import strict_config  # noqa: E402
from tmstarget.smk import run_step  # noqa: E402

sm = snakemake  # noqa: F821
run_step(sm, native_step, target_json=sm.input.coords, t1w=sm.input.t1w,
         brain_mask=sm.input.mask, xfm_mni_to_t1w_points=sm.input.xfm_mni_to_t1w_points,
         xfm_t1w_to_mni_points=sm.input.xfm_t1w_to_mni_points,
         cfg=strict_config(sm.params.cfg, sm.config, sm.rule)["native"],
         out_json=sm.output.coords, output_root=sm.params.output_root, rmap=sm.input.rmap,
         repro_json=sm.input.get("repro"), qc_path=sm.input.qc,
         warn_cfg=strict_config(sm.params.cfg, sm.config, sm.rule))
