"""rule splits: participant-level train/val/test of the healthy controls (brainage.splits)."""

from brainage.io import read_participants, write_tsv
from brainage.logs import redirect_to_log
from brainage.splits import make_splits, read_excluded

with redirect_to_log(snakemake.log[0]) as log:
    participants = read_participants(snakemake.input.participants)
    # subjects that failed preprocessing QC (results/qc/excluded.tsv) never enter a split
    excluded = read_excluded(snakemake.input.excluded)
    cfg = snakemake.params.splits
    splits = make_splits(participants, snakemake.params.seed, excluded, tuple(cfg["fractions"]), cfg["age_bin_years"])
    write_tsv(snakemake.output[0], splits)
    log.info("splits: %s (%d excluded by QC)", splits["split"].value_counts().to_dict(), len(excluded))
