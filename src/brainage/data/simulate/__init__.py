"""Simulated raw T1w cohort with known ground truth: the pipeline's embedded default data.

``brainage simulate --out DIR --n-hc N --n-ad N --n-pd N --seed S --voxel-mm V`` (or the
rules ``simulate_anatomy``, ``simulate_subject`` and ``simulate_cohort``) writes a BIDS
dataset of raw T1-weighted scans, the participants manifest, and the truth every stage can
be checked against: true brain masks, native-to-MNI affines, biological ages, the effect
weights and regional volumes of each subject, and where age and disease act (AAL116).

Model (every parameter is a field of :class:`SimulationModel`, settable under
``cohort.simulate`` in the config; defaults in brackets):

Anatomy (:mod:`.anatomy`). The packaged ICBM 2009c brain template and AAL116, tissue classes
by 3-class k-means of the template intensities, ventricles (CSF of the central box),
midbrain (an ellipsoid in the brain stem), and a synthetic skull (inner table, diploe,
outer table), scalp (muscle, fat, skin), neck and lower face with eyes, so that the true
brain mask is a strict subset of the head.

Healthy ageing. Biological age ``b`` = age + N(0, ``bio_age_sd`` [3 y]) (+ the disease
increment below). Ageing load ``L(b) = 0.5 (b-20)/60 + 0.5 (max(b-ageing_onset, 0)/(80-ageing_onset))^1.5``
(``ageing_onset`` [60]): 0 at 20 y, 1 at 80 y, accelerating after the onset. At load ``L``:
ventricles grow by log-volume ``ventricle_growth_80`` x L [1.2, about x2 at 80 net of the
brain's own shrinkage]; sulcal CSF widens (``sulcal_widening_80`` [0.6]); the brain shrinks
radially inside a fixed skull by ``brain_shrink_80`` x L [0.005, ~1.5 % of brain volume at
80; capped at 0.08], widening the extra-cerebral CSF (small: in the real IXI heads the volume of
a deepbet mask hardly falls with age, -14 ml a decade, r -0.17; the tissue lost becomes CSF
inside the mask, i.e. sulci and ventricles); hippocampus and amygdala lose log-volume
``mtl_atrophy_80`` x L [0.15]; the prefrontal cortex (AAL frontal gyri, orbital and medial
parts) loses log-volume ``frontal_thinning_80`` x L [0.12; it thins fastest, Raz et al. 2005,
Fjell et al. 2009]; WM signal drops by ``wm_darkening_80`` x L [0.02] and GM
signal rises by ``gm_brightening_80`` x L [0.01] (lower GM/WM contrast; small: in the real IXI heads the upper intensity
percentiles over the median rise with age, r +0.31, as CSF replaces tissue, and a global
contrast change reads age off the histogram). Every atrophy weight
of ageing (ventricles, sulci, shrinkage, MTL, prefrontal) is multiplied by the individual
ageing rate exp(N(0, ``atrophy_rate_sd`` [0.3])), so that people of one age differ in how far
they have aged.

Individual variation independent of age. Ventricle log-volume offset N(0, ``ventricle_sd``
[0.12]); a random smooth displacement field (SD ``warp_sd_mm`` [1 mm] per component,
Gaussian width ``warp_smoothness_mm`` [30 mm]); linear head size ``head_scale_mean`` [0.93,
relative to the ICBM 2009c template, whose 1886 ml brain mask is larger than an average
adult's] x (1 + N(0, ``head_scale_sd`` [0.03]) +- ``head_scale_male``/2 [0.035: males
larger]); global intensity scale
exp(N(0, ``intensity_scale_sd`` [0.1])); sulcal CSF weight offset N(0, ``sulcal_sd`` [0.08]);
tissue contrast: GM signal x exp(N(0, ``gm_signal_sd`` [0.01])), CSF signal x
exp(N(0, ``csf_signal_sd`` [0.05])), and a non-linear intensity scale (signal relative to WM
raised to exp(N(0, ``gamma_sd`` [0.03]))). The individual SDs were fitted with
``benchmarks/bench_realism.py`` (:mod:`brainage.realism`) to the 86 real IXI heads of the
development cohort: the spread at a given age of tissue peaks, intensity percentiles, CSF
fraction, brain and ventricle volume.

Disease. Latent severity ~ Beta(``severity_beta`` [2, 2]). AD: hippocampus + amygdala
(``ad_mtl_atrophy`` [0.35]), parahippocampal gyrus (``ad_parahippocampal_atrophy`` [0.25]),
temporal lobes (``ad_temporal_atrophy`` [0.10]) lose log-volume, ventricles grow
(``ad_ventricle_growth`` [0.3]), each times the severity; biological age increment
``ad_age_increment`` [2 + 6 severity years]; ADAS-Cog-11 = ``adas_cog11`` [8 + 35 severity +
N(0, 5)], clipped to 0-70 (mean ~25.5 +- 9). PD: basal ganglia, thalamus and midbrain lose
log-volume ``pd_subcortical_atrophy`` [0.10] x severity; increment ``pd_age_increment``
[1 + 2 severity]; MDS-UPDRS-III = ``updrs3`` [3 + 50 severity + N(0, 8)], clipped 0-132
(mean ~28 +- 13.6); Hoehn & Yahr = round(``hoehn_yahr`` [1 + 3.2 severity + N(0, 0.4)]),
clipped 1-5. The truth tables state each subject's severity, increment, weights and volumes.

Sites (:data:`SITES`, fixed): five HC datasets with age distributions echoing Table 1 of the
study (IXI-like 20-86, HCP-like 20-100, OpenNeuro-like 20-89 uniform; ADNI-NC-like 69-93
and PPMI-NC-like 40-81 truncated normal), shares ``hc_site_weights`` [0.25, 0.25, 0.2,
0.15, 0.15]; AD (59-91) are scanned as ADNI-like, PD (43-86) as PPMI-like, with the
scanner of their study's controls. Each site has its contrast (CSF/GM/WM/fat signal), noise
level, voxel size (e.g. IXI-like 1.2 x 1 x 1 mm at ``voxel_mm`` = 1, scaled by
``voxel_mm``) and axis order (IXI-like PSR, HCP-like RAS, OpenNeuro-like LAS, ADNI-like LPS,
PPMI-like ASL).

Acquisition. Pose: rotations uniform +-``rotation_max_deg`` [15] about each axis,
translations +-``translation_max_mm`` [20], scaling (head size x per-axis
N(0, ``axis_scaling_sd`` [0.02])) clipped to ``head_scale_mean`` x (1 +- ``scaling_max``
[0.10]); smooth
multiplicative bias field (random quadratic) within ``bias_range`` [0.7, 1.3]; Rician noise
(site SD relative to WM). All deformations (pose, individual warp, ageing and disease
fields) are composed into one resampling of the head per subject (:mod:`.scan`).

Registration truth. The stated ``native_to_mni`` is the pose alone; the deformations have an
affine part of their own (the brain's shrinkage inside the skull and the widening of its
sulci: ~3 % of brain volume at 88 years), which a 12-dof registration of the brain rightly absorbs. The fair
reference for an affine registration is :func:`.scan.best_affine_template_to_native`, the
least-squares affine of the full map (:func:`.scan.true_template_to_native`) over the brain.

Reproducibility. Each subject's draws come from generators seeded by (seed,
participant_id), so a subject is the same whether simulated alone or in any cohort, and the
written files are byte-identical across runs (deterministic gzip and NIfTI headers).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from brainage.data.simulate.anatomy import Anatomy, build_anatomy, cached_anatomy
from brainage.data.simulate.model import SITES, SimulationModel, ageing_load, plan_cohort, plan_subject
from brainage.data.simulate.scan import (
    SimulatedScan, best_affine_template_to_native, simulate_scan, true_template_to_native,
)

__all__ = [
    "Anatomy", "SITES", "SimulatedScan", "SimulationModel", "ageing_load", "build_anatomy",
    "cached_anatomy", "plan_cohort", "plan_subject", "simulate_scan", "simulate_cohort", "main",
    "best_affine_template_to_native", "true_template_to_native",
]

log = logging.getLogger(__name__)


def simulate_cohort(out: str | Path, n_hc: int, n_ad: int, n_pd: int, seed: int, voxel_mm: float,
                    **model_params) -> Path:
    """Simulate a whole cohort in this process under ``out``; returns the manifest path."""
    from tqdm import tqdm

    from brainage.core.paths import simulated_cohort_files, simulated_subject_files
    from brainage.data.simulate.cohort import write_cohort, write_subject

    out = Path(out)
    frame = plan_cohort(n_hc, n_ad, n_pd, voxel_mm, seed, bids_root=out / "bids", **model_params)
    model = SimulationModel.from_params(**model_params)
    anatomy = cached_anatomy(float(voxel_mm))
    truths = []
    for row in tqdm(frame.to_dict("records"), desc="simulate", unit="subject"):
        paths = simulated_subject_files(out / "bids", out / "truth", row["participant_id"])
        truths.append(write_subject(row, anatomy, seed, model, paths))
    outputs = simulated_cohort_files(out)
    write_cohort(frame, truths, anatomy, model, seed, outputs)
    return outputs["manifest"]


def main(argv: list[str] | None = None) -> int:
    """``brainage simulate``: a raw T1w cohort with known ground truth (BIDS + truth)."""
    parser = argparse.ArgumentParser(prog="brainage simulate", description=main.__doc__)
    parser.add_argument("--out", required=True, help="output folder (bids/, truth/, participants.tsv, figures/)")
    parser.add_argument("--n-hc", type=int, default=80, help="healthy controls (default 80)")
    parser.add_argument("--n-ad", type=int, default=20, help="Alzheimer's disease patients (default 20)")
    parser.add_argument("--n-pd", type=int, default=20, help="Parkinson's disease patients (default 20)")
    parser.add_argument("--seed", type=int, default=42, help="seed of every random choice (default 42)")
    parser.add_argument("--voxel-mm", type=float, default=2.0, help="raw voxel size scale in mm (default 2; 1 for realism)")
    args = parser.parse_args(argv)
    from brainage.core.io import InputError, check_output_dir

    try:  # every argument before any work
        for name in ("n_hc", "n_ad", "n_pd", "seed"):
            if getattr(args, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)} must be 0 or more")
        if args.n_hc + args.n_ad + args.n_pd < 1:
            raise InputError("--n-hc, --n-ad and --n-pd are all 0: nothing to simulate")
        if not 0.5 <= args.voxel_mm <= 4.0:
            raise InputError(f"--voxel-mm {args.voxel_mm:g} is outside 0.5-4 mm")
        check_output_dir(args.out, "--out")
    except InputError as err:
        print(f"brainage simulate: {err}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = simulate_cohort(args.out, args.n_hc, args.n_ad, args.n_pd, args.seed, args.voxel_mm)
    print(f"manifest: {manifest}")
    return 0
