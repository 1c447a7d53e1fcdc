"""brainage: MRI brain-age estimation with supervised contrastive learning (Rank-N-Contrast).

The library behind the Snakemake pipeline; every stage of ``workflow/`` calls one module here.
"""

__version__ = "0.1.0"

TEMPLATE_SPACE = "MNI152NLin2009cAsym"
