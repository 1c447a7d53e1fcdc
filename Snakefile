# brainage-rnc: MRI brain-age estimation with supervised contrastive learning.
# Stages (one rules file each) are described in README.md; all logic lives in src/brainage/.
from snakemake.utils import min_version

min_version("9.19")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/cohort.smk"


rule all:
    default_target: True
    input:
        resource_files(),
        "results/cohort/participants.tsv",
