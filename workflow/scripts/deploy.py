"""rule deploy: the model file a cross-validated model leaves for new scans (brainage.train.deploy)."""

from brainage.core.logs import redirect_to_log
from brainage.train.deploy import deploy_cv_model, deploy_stack

with redirect_to_log(snakemake.log[0]):
    name, inputs, params = snakemake.wildcards.model, snakemake.input, snakemake.params
    if params.members:
        deploy_stack(name, dict(zip(params.members, inputs.members)), dict(zip(params.members, inputs.member_oof)),
                     inputs.oof, snakemake.output.model, snakemake.output.card, params.interval, params.combine)
    else:
        deploy_cv_model(name, dict(zip(params.folds, inputs.folds)), inputs.oof, snakemake.output.model,
                        snakemake.output.card, params.interval)
