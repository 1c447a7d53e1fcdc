"""Preprocess raw T1w scans with the native engine (deepbet, N4, ANTs affine to MNI): one
subject (rule ``preprocess``) or a batch of them in one process (rules ``preprocess_b<k>``,
config preprocess.subjects_per_job); a bad scan is excluded with its reason instead
(brainage.preprocess.preprocess_or_exclude) and the batch goes on."""

from pathlib import Path

from brainage.core.logs import redirect_to_log
from brainage.core.paths import as_list
from brainage.preprocess import preprocess_or_exclude


subjects = snakemake.params.get("subjects") or [snakemake.wildcards.subject]
for subject, t1w, qc_json, log in zip(subjects, as_list(snakemake.input.t1w), as_list(snakemake.output.qc_json),
                                      snakemake.log, strict=True):
    with redirect_to_log(log):
        preprocess_or_exclude(
            t1w,
            Path(qc_json).parent,
            subject,
            snakemake.params.grids,
            engine="native",
            settings={**snakemake.params.settings, "qc": snakemake.config["preprocess"].get("qc")},
            threads=snakemake.threads,
        )
