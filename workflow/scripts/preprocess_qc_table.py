"""Cohort preprocessing QC: qc.tsv, excluded.tsv (failed thresholds, with reason) and a montage."""

from brainage.core.logs import redirect_to_log
from brainage.preprocess.qc import QCThresholds, write_cohort_qc

with redirect_to_log(snakemake.log[0]) as log:
    table = write_cohort_qc(
        snakemake.input.qc,
        snakemake.output.table,
        snakemake.output.excluded,
        montage_png=snakemake.output.montage,
        volumes=snakemake.input.volumes,
        on_fail=snakemake.params.on_fail,
        thresholds=QCThresholds(**snakemake.params.thresholds),
    )
    log.info("%d subjects, %d passed QC", len(table), int(table["passed"].sum()))
