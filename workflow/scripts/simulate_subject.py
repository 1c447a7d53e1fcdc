"""Simulate one subject's raw T1w scan and write its truth (mask, affine, biological age)."""

from brainage.logs import redirect_to_log
from brainage.simulate.anatomy import Anatomy
from brainage.simulate.cohort import write_subject
from brainage.simulate.model import model_from_config

with redirect_to_log(snakemake.log[0]):
    anatomy = Anatomy.load(snakemake.input.anatomy)
    model = model_from_config(snakemake.params.simulate)
    write_subject(snakemake.params.row, anatomy, snakemake.params.seed, model, dict(snakemake.output.items()))
