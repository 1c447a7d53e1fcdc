"""Simulate raw T1w scans and write their truth (mask, affine, biological age): one subject
(rule ``simulate_subject``) or a batch of them in one process (rules ``simulate_b<k>``,
config cohort.subjects_per_job), the anatomy loaded once."""

from brainage.core.logs import redirect_to_log
from brainage.core.paths import as_list
from brainage.data.simulate.anatomy import Anatomy
from brainage.data.simulate.cohort import write_subject
from brainage.data.simulate.model import model_from_config


rows = snakemake.params.get("rows") or [snakemake.params.row]
anatomy, model = None, model_from_config(snakemake.params.simulate)
for i, row in enumerate(rows):
    with redirect_to_log(snakemake.log[i]):
        if anatomy is None:
            anatomy = Anatomy.load(snakemake.input.anatomy)
        files = {key: as_list(value)[i] for key, value in snakemake.output.items()}
        write_subject(row, anatomy, snakemake.params.seed, model, files)
