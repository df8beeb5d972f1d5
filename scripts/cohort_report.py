"""Snakemake adapter: cohort_report.html at the output root (tmstarget.report.cohort_report_step)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.report import cohort_report_step
from tmstarget.smk import run_step

sm = snakemake  # noqa: F821
run_step(sm, cohort_report_step, report_jsons=list(sm.input.jsons),
         output_root=sm.params.output_root, out_html=sm.output.html,
         report_htmls=list(sm.input.htmls), summary_json=sm.params.summary,
         targets_tsv=sm.input.targets_tsv)
