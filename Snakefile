# brainage-rnc: MRI brain-age estimation with supervised contrastive learning.
# Stages (one rules file each) are described in README.md; all logic lives in src/brainage/.
from snakemake.utils import min_version

min_version("9.19")


# Every key but the models at the study's value, beside this Snakefile; then the demo (in the
# working directory) unless --configfile files are given: those layer over the defaults alone.
configfile: f"{workflow.basedir}/config/defaults.yaml"


if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/deploy.smk"
include: "workflow/rules/stats.smk"


rule all:
    default_target: True
    input:
        rules.resources.output,
        rules.cohort_all.input,
        rules.preprocess_all.input,
        rules.train_all.input,
        rules.infer_all.input,
        rules.deploy_all.input,
        rules.stats_all.input,
