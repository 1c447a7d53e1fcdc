"""rule cache: float16 memory-mapped cache of one grid (brainage.data.cache)."""

from brainage.data.cache import build_cache
from brainage.core.logs import redirect_to_log
from brainage.data.splits import read_splits

with redirect_to_log(snakemake.log[0]):
    splits = read_splits(snakemake.input.splits)
    paths = dict(zip(snakemake.params.subjects, snakemake.input.volumes))
    build_cache(paths, splits, snakemake.output.volumes, snakemake.output.index)
