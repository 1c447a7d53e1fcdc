"""rule splits: participant-level train/val/test of the healthy controls, and the fold tables
of a cross-validation (brainage.data.splits)."""

from brainage.core.io import read_participants, write_tsv
from brainage.core.logs import redirect_to_log
from brainage.core.paths import fold_splits
from brainage.data.splits import read_excluded, splits_from_config

with redirect_to_log(snakemake.log[0]) as log:
    participants = read_participants(snakemake.input.participants)
    # subjects that failed preprocessing QC (results/qc/excluded.tsv) never enter a split
    excluded = read_excluded(snakemake.input.excluded)
    splits, folds = splits_from_config(participants, snakemake.params.seed, excluded, snakemake.params.splits)
    for fold, table in folds.items():
        write_tsv(fold_splits(fold), table)
    write_tsv(snakemake.output.splits, splits)
    log.info("splits: %s, %d fold(s) (%d excluded by QC)", splits["split"].value_counts().to_dict(), len(folds), len(excluded))
