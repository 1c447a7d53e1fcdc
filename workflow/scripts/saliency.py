"""Saliency maps (config explain.method: Grad-RAM or input gradient) of one model: per subject, per group, PNGs and AAL116 tables (brainage.apply.explain)."""

from brainage.apply.explain import run_saliency
from brainage.core.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    run_saliency(
        snakemake.input.model,
        snakemake.input.participants,
        snakemake.input.splits,
        snakemake.input.volumes,
        snakemake.input.index,
        {key: snakemake.input[key] for key in ("template", "mask", "aal")},
        dict(snakemake.output.items()),
        # simulated cohort only: the simulator's per-region effects (real cohorts have no truth)
        truth_effects=dict(snakemake.input.items()).get("truth"),
        seed=snakemake.params.seed,
        device=snakemake.params.device,
        **snakemake.params.explain,
    )
