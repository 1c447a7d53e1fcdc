"""Write the simulated cohort's manifest, BIDS sidecars, truth tables and raw-scan figure."""

from pathlib import Path

from brainage.core.logs import redirect_to_log
from brainage.data.simulate.anatomy import Anatomy
from brainage.data.simulate.cohort import read_truths, write_cohort
from brainage.data.simulate.model import model_from_config, plan_cohort

with redirect_to_log(snakemake.log[0]):
    sim = snakemake.params.simulate
    frame = plan_cohort(**sim, seed=snakemake.params.seed, bids_root=snakemake.params.bids_root)
    write_cohort(
        frame,
        read_truths(snakemake.input.truth),
        Anatomy.load(snakemake.input.anatomy),
        model_from_config(sim),
        snakemake.params.seed,
        {k: Path(v) for k, v in snakemake.output.items()},
    )
