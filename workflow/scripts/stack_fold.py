"""rule stack_fold: one fold's predictions of a stacked model (brainage.train.stack)."""

from brainage.core.logs import redirect_to_log
from brainage.train.stack import run_stack_fold

with redirect_to_log(snakemake.log[0]):
    members, folds = snakemake.params.members, snakemake.params.folds
    tsvs = iter(snakemake.input)
    member_tsvs = {m: {f: next(tsvs) for f in folds} for m in members}  # stack_member_folds' order
    run_stack_fold(snakemake.wildcards.model, snakemake.wildcards.fold, member_tsvs, snakemake.output.tsv,
                   snakemake.output.json, snakemake.params.combine)
