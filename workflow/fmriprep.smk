# tmstarget stage 1 (raw BIDS input only): fMRIPrep in a pinned Apptainer/Singularity container,
# one job per participant, writing OUTPUT_DIR/sourcedata/fmriprep. The main Snakefile then reads
# that folder as fmriprep_dir. The tmstarget command runs both stages; by hand:
#
#   snakemake -s workflow/fmriprep.smk --configfile my.yaml --cores 8   # my.yaml: bids_dir,
#                                                   # output_dir, preprocessing.fmriprep_image, ...
from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(os.path.dirname(workflow.basedir), "config", "config.yaml")


include: "rules/fmriprep.smk"


rule all:
    input:
        get_fmriprep_outputs(),
    default_target: True
