"""Parameters of the simulation model, the simulated sites, and the cohort plan (demographics).

The plan is cheap and deterministic (no image work): one row per subject with the manifest
columns and every per-subject random draw of the model (biological age, disease severity,
pose, head size, intensity scale). Each subject's draws come from its own generator seeded
by (seed, participant_id), so a subject does not change when the cohort grows.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from brainage.core.io import InputError
from brainage.core.paths import raw_t1w


@dataclass(frozen=True)
class SimulationModel:
    """Every parameter of the anatomy, ageing, disease, site and acquisition model.

    Ageing acts through the *ageing load* ``L(b)`` of the biological age ``b`` (years):
    ``L(b) = 0.5 (b - 20) / 60 + 0.5 (max(b - ageing_onset, 0) / (80 - ageing_onset)) ** 1.5``,
    0 at 20 years, 1 at 80, steeper after ``ageing_onset``. Each ``*_80`` parameter is the
    effect at ``L = 1`` (80 years); the effect at age ``b`` is the parameter times ``L(b)``.
    Disease parameters are effects at latent severity 1 (severity ~ Beta(2, 2) in [0, 1]).
    Regional effects (ventricles, MTL, parahippocampal, temporal, subcortical) are weights of
    stationary velocity fields whose flow changes the region's volume by about ``exp(w)``
    (growth) or ``exp(-w)`` (atrophy), i.e. ``w`` is a log-volume ratio, about the relative
    change when small; ``sulcal_widening`` and ``brain_shrink`` are additive displacement
    weights (see :mod:`brainage.data.simulate.anatomy`). Realised volumes are in the truth tables.
    """

    # --- healthy ageing
    bio_age_sd: float = 3.0  #: SD (years) of biological minus chronological age (all cohorts)
    ageing_onset: float = 60.0  #: age (years) after which ageing accelerates
    ventricle_growth_80: float = 1.2  #: ventricle log-volume growth at 80 (1.2: about x 2 net of the brain shrinkage)
    sulcal_widening_80: float = 0.6  #: sulcal CSF widening weight at 80 (additive, capped at 0.75; 0.6 fitted with bench_realism to the IXI CSF fraction in the deepbet mask, +0.013 a decade, r 0.82)
    brain_shrink_80: float = 0.005  #: radial shrinkage of the brain in the skull at 80 (~1.5 % brain volume; capped at 0.08; fitted to the IXI deepbet mask volume, -14 ml a decade, r -0.17)
    mtl_atrophy_80: float = 0.15  #: hippocampus + amygdala log-volume loss at 80 (~12-15 %)
    wm_darkening_80: float = 0.02  #: WM signal drop at 80 (fraction): lower GM/WM contrast (fitted with bench_realism: in IXI the upper percentiles over the median rise with age, r +0.31)
    gm_brightening_80: float = 0.01  #: GM signal rise at 80 (fraction)
    frontal_thinning_80: float = 0.12  #: prefrontal cortex log-volume loss at 80 (~0.2 %/year: frontal association cortex thins fastest, Raz et al. 2005, Fjell et al. 2009)
    # --- individual variation independent of age
    ventricle_sd: float = 0.12  #: SD of an individual's ventricle log-volume (age-independent)
    warp_sd_mm: float = 1.0  #: SD (mm) of the individual random smooth displacement field
    warp_smoothness_mm: float = 30.0  #: Gaussian width (mm) of that field
    head_scale_mean: float = 0.93  #: mean linear head size relative to the ICBM 2009c template, whose brain mask (1886 ml) is larger than an average adult's (0.93: ~1500 ml)
    head_scale_sd: float = 0.03  #: SD of the individual linear head size (fraction; fitted to the IXI deepbet mask volume SD at a given age, 139 ml)
    head_scale_male: float = 0.035  #: males' mean linear head size above females' (fraction)
    intensity_scale_sd: float = 0.1  #: SD of the individual global intensity scale (fraction)
    atrophy_rate_sd: float = 0.3  #: SD of the log of an individual's ageing rate, multiplying every ageing atrophy weight (fitted with bench_realism to the IXI scatter of brain and ventricle volume and CSF fraction at a given age)
    sulcal_sd: float = 0.08  #: SD of an individual's sulcal CSF weight, age-independent (fitted as atrophy_rate_sd)
    gm_signal_sd: float = 0.01  #: SD of the individual GM signal relative to WM (fraction; with csf_signal_sd and gamma_sd fitted with bench_realism to the IXI spread of tissue peaks and intensity percentiles)
    csf_signal_sd: float = 0.05  #: SD of the individual CSF signal relative to WM (fraction)
    gamma_sd: float = 0.03  #: SD of the log of the individual intensity non-linearity exponent (signal relative to WM raised to it)
    # --- Alzheimer's disease (at severity 1)
    ad_mtl_atrophy: float = 0.35  #: hippocampus + amygdala log-volume loss (~30 %)
    ad_parahippocampal_atrophy: float = 0.25  #: parahippocampal gyrus log-volume loss
    ad_temporal_atrophy: float = 0.10  #: temporal lobe log-volume loss
    ad_ventricle_growth: float = 0.3  #: extra ventricle log-volume growth
    ad_age_increment: tuple[float, float] = (2.0, 8.0)  #: biological-age increment (years) at severity 0 and 1
    adas_cog11: tuple[float, float, float] = (8.0, 35.0, 5.0)  #: ADAS-Cog-11 = a + b severity + N(0, c), clipped 0-70
    # --- Parkinson's disease (at severity 1)
    pd_subcortical_atrophy: float = 0.10  #: basal ganglia, thalamus, midbrain log-volume loss (~10 %)
    pd_age_increment: tuple[float, float] = (1.0, 3.0)  #: biological-age increment (years) at severity 0 and 1
    updrs3: tuple[float, float, float] = (3.0, 50.0, 8.0)  #: MDS-UPDRS-III = a + b severity + N(0, c), clipped 0-132
    hoehn_yahr: tuple[float, float, float] = (1.0, 3.2, 0.4)  #: H&Y = round(a + b severity + N(0, c)), clipped 1-5
    severity_beta: tuple[float, float] = (2.0, 2.0)  #: Beta(a, b) of the latent disease severity
    # --- acquisition
    rotation_max_deg: float = 15.0  #: uniform head rotation about each axis, +- degrees
    translation_max_mm: float = 20.0  #: uniform head translation along each axis, +- mm
    scaling_max: float = 0.10  #: total scaling (head size x per-axis) clipped to 1 +- this
    axis_scaling_sd: float = 0.02  #: SD of the extra per-axis scaling (fraction)
    bias_range: tuple[float, float] = (0.7, 1.3)  #: range of the smooth multiplicative bias field
    hc_site_weights: tuple[float, float, float, float, float] = (0.25, 0.25, 0.2, 0.15, 0.15)  #: HC share per site (SITES order)

    @classmethod
    def from_params(cls, **params) -> "SimulationModel":
        """Model from config keys; unknown keys are an error, lists become tuples."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise InputError(f"config cohort.simulate: unknown model parameter(s) {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Site:
    """A simulated dataset/scanner: demographics and acquisition.

    ``voxel``: raw voxel size (mm) per stored array axis at ``voxel_mm`` = 1, scaled by
    ``voxel_mm``; ``axcodes``: anatomical direction of each stored axis (nibabel codes, e.g.
    PSR = first axis to posterior, second superior, third right, as IXI); ``fov_mm``:
    field of view along R, A, S; ``contrast``: CSF, GM, WM, fat signal relative to WM;
    ``noise``: Rician noise SD relative to the WM signal; ``scale``: WM signal (stored units);
    ``age``: (low, high, mean, sd) truncated normal, or uniform when sd is 0.
    """

    name: str
    age: tuple[float, float, float, float]
    voxel: tuple[float, float, float]
    axcodes: tuple[str, str, str]
    fov_mm: tuple[float, float, float]
    contrast: tuple[float, float, float, float]
    noise: float
    scale: float


#: HC datasets (order of ``hc_site_weights``); ages echo Table 1 of the study
HC_SITES: tuple[Site, ...] = (
    Site("IXI-like", (20, 86, 0, 0), (1.2, 1.0, 1.0), ("P", "S", "R"), (200, 256, 256), (0.22, 0.60, 1.0, 1.15), 0.030, 900.0),
    Site("HCP-like", (20, 100, 0, 0), (1.0, 1.0, 1.0), ("R", "A", "S"), (208, 256, 240), (0.18, 0.56, 1.0, 1.10), 0.020, 1200.0),
    Site("OpenNeuro-like", (20, 89, 0, 0), (1.0, 1.0, 1.1), ("L", "A", "S"), (208, 256, 240), (0.25, 0.63, 1.0, 1.20), 0.035, 700.0),
    Site("ADNI-NC-like", (69, 93, 76, 6), (1.0, 1.0, 1.2), ("L", "P", "S"), (208, 240, 256), (0.24, 0.62, 1.0, 1.12), 0.030, 1000.0),
    Site("PPMI-NC-like", (40, 81, 61, 10), (1.0, 1.0, 1.0), ("A", "S", "L"), (208, 256, 256), (0.27, 0.65, 1.0, 1.18), 0.040, 800.0),
)
#: patients are scanned like the controls of their study (same scanner parameters)
AD_SITE = replace(HC_SITES[3], name="ADNI-like", age=(59, 91, 75, 8))
PD_SITE = replace(HC_SITES[4], name="PPMI-like", age=(43, 86, 63, 10))
SITES: dict[str, Site] = {s.name: s for s in (*HC_SITES, AD_SITE, PD_SITE)}
#: share of females per cohort
FEMALE_SHARE = {"HC": 0.52, "AD": 0.45, "PD": 0.37}
COHORT_PREFIX = {"HC": "hc", "AD": "ad", "PD": "pd"}


def subject_rng(seed: int, participant_id: str, stream: str) -> np.random.Generator:
    """A generator of its own for one subject and purpose, stable across runs and platforms."""
    digest = hashlib.sha256(f"{participant_id}/{stream}".encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def ageing_load(bio_age: float | np.ndarray, model: SimulationModel) -> float | np.ndarray:
    """``L(b)`` of :class:`SimulationModel`: 0 at 20 years, 1 at 80, accelerating after onset."""
    b = np.asarray(bio_age, dtype=float)
    late = np.maximum(b - model.ageing_onset, 0.0) / (80.0 - model.ageing_onset)
    out = 0.5 * (b - 20.0) / 60.0 + 0.5 * late**1.5
    return float(out) if out.ndim == 0 else out


def _truncated_normal(rng: np.random.Generator, low: float, high: float, mean: float, sd: float) -> float:
    if sd <= 0:
        return float(rng.uniform(low, high))
    for _ in range(1000):
        v = rng.normal(mean, sd)
        if low <= v <= high:
            return float(v)
    return float(np.clip(mean, low, high))


def _hc_sites(n: int, weights: tuple[float, ...]) -> list[Site]:
    """Deterministic site sequence with shares ``weights`` in every prefix (smooth round robin)."""
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    counts = np.zeros(len(w))
    out = []
    for i in range(n):
        k = int(np.argmax(w * (i + 1) - counts))
        counts[k] += 1
        out.append(HC_SITES[k])
    return out


def plan_subject(participant_id: str, cohort: str, site: Site, seed: int, model: SimulationModel,
                 age: float | None = None, sex: str | None = None, severity: float | None = None) -> dict:
    """All random draws of one subject (demographics, truth, pose); ``age``/``sex``/``severity`` override."""
    rng = subject_rng(seed, participant_id, "plan")
    # draw everything in a fixed order, so that an override does not shift the other draws
    age_draw = round(_truncated_normal(rng, *site.age), 1)
    sex_draw = "F" if rng.uniform() < FEMALE_SHARE[cohort] else "M"
    sev_draw = float(rng.beta(*model.severity_beta))
    bio_dev = float(rng.normal(0.0, model.bio_age_sd))
    score_noise = rng.standard_normal(3)
    ventricle_offset = float(rng.normal(0.0, model.ventricle_sd))
    head_z = float(rng.standard_normal())
    axis_scale = rng.normal(0.0, model.axis_scaling_sd, 3)
    rotation = rng.uniform(-model.rotation_max_deg, model.rotation_max_deg, 3)
    translation = rng.uniform(-model.translation_max_mm, model.translation_max_mm, 3)
    intensity = float(np.exp(rng.normal(0.0, model.intensity_scale_sd)))
    # drawn after the draws above, so that adding them left every earlier draw unchanged
    atrophy_rate = float(np.exp(rng.normal(0.0, model.atrophy_rate_sd)))
    sulcal_offset = float(rng.normal(0.0, model.sulcal_sd))
    gm_signal = float(np.exp(rng.normal(0.0, model.gm_signal_sd)))
    csf_signal = float(np.exp(rng.normal(0.0, model.csf_signal_sd)))
    gamma = float(np.exp(rng.normal(0.0, model.gamma_sd)))

    age = age_draw if age is None else float(age)
    sex = sex_draw if sex is None else sex
    severity = (sev_draw if severity is None else float(severity)) if cohort != "HC" else 0.0
    increment, adas, updrs, hy = 0.0, np.nan, np.nan, np.nan
    if cohort == "AD":
        lo, hi = model.ad_age_increment
        increment = lo + (hi - lo) * severity
        a, b, c = model.adas_cog11
        adas = round(float(np.clip(a + b * severity + c * score_noise[0], 0, 70)), 1)
    elif cohort == "PD":
        lo, hi = model.pd_age_increment
        increment = lo + (hi - lo) * severity
        a, b, c = model.updrs3
        updrs = float(np.clip(np.round(a + b * severity + c * score_noise[1]), 0, 132))
        a, b, c = model.hoehn_yahr
        hy = float(np.clip(np.round(a + b * severity + c * score_noise[2]), 1, 5))
    relative = 1.0 + model.head_scale_sd * head_z + (model.head_scale_male / 2) * (1 if sex == "M" else -1)
    head_scale = model.head_scale_mean * relative
    # the clip bounds the individual variation around the population mean, not the template size
    scales = model.head_scale_mean * np.clip(relative * (1.0 + axis_scale), 1 - model.scaling_max, 1 + model.scaling_max)
    return {
        "participant_id": participant_id,
        "dataset": site.name,
        "cohort": cohort,
        "age": age,
        "sex": sex,
        "adas_cog11": adas,
        "updrs3": updrs,
        "hoehn_yahr": hy,
        "session": np.nan,
        "biological_age": round(age + bio_dev + increment, 3),
        "brain_age_increment": round(increment, 3),
        "severity": round(severity, 4),
        "ventricle_offset": round(ventricle_offset, 4),
        "head_scale": round(head_scale, 4),
        "scale_x": round(float(scales[0]), 4),
        "scale_y": round(float(scales[1]), 4),
        "scale_z": round(float(scales[2]), 4),
        "rot_x_deg": round(float(rotation[0]), 3),
        "rot_y_deg": round(float(rotation[1]), 3),
        "rot_z_deg": round(float(rotation[2]), 3),
        "trans_x_mm": round(float(translation[0]), 3),
        "trans_y_mm": round(float(translation[1]), 3),
        "trans_z_mm": round(float(translation[2]), 3),
        "intensity_scale": round(intensity, 4),
        "atrophy_rate": round(atrophy_rate, 4),
        "sulcal_offset": round(sulcal_offset, 4),
        "gm_signal": round(gm_signal, 4),
        "csf_signal": round(csf_signal, 4),
        "intensity_gamma": round(gamma, 4),
    }


def plan_cohort(n_hc: int, n_ad: int, n_pd: int, voxel_mm: float, seed: int, bids_root: str | Path,
                **model_params) -> pd.DataFrame:
    """The simulated cohort's participants table (manifest columns + truth), without images.

    One row per subject: ``participant_id`` (sub-hc0001, sub-ad0001, sub-pd0001, ...),
    ``dataset`` (HC: five sites in ``hc_site_weights`` shares; AD: ADNI-like; PD:
    PPMI-like), ``cohort``, ``age``, ``sex``, ``t1w`` (``{bids_root}/{pid}/anat/{pid}_T1w.nii.gz``),
    ``adas_cog11`` (AD), ``updrs3`` and ``hoehn_yahr`` (PD), ``session`` (n/a), then the truth
    columns of :func:`plan_subject`. ``model_params``: :class:`SimulationModel` fields.
    """
    model = SimulationModel.from_params(**model_params)
    if float(voxel_mm) <= 0:
        raise InputError(f"config cohort.simulate.voxel_mm must be positive, got {voxel_mm}")
    rows = []
    plan = [("HC", s) for s in _hc_sites(int(n_hc), model.hc_site_weights)]
    plan += [("AD", AD_SITE)] * int(n_ad) + [("PD", PD_SITE)] * int(n_pd)
    counters = {"HC": 0, "AD": 0, "PD": 0}
    for cohort, site in plan:
        counters[cohort] += 1
        pid = f"sub-{COHORT_PREFIX[cohort]}{counters[cohort]:04d}"
        rows.append(plan_subject(pid, cohort, site, seed, model))
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise InputError("config cohort.simulate: n_hc + n_ad + n_pd must be at least 1")
    frame.insert(5, "t1w", [str(raw_t1w(bids_root, pid)) for pid in frame["participant_id"]])
    frame["voxel_mm"] = float(voxel_mm)
    return frame


MANIFEST_COLUMNS = ("participant_id", "dataset", "cohort", "age", "sex", "t1w", "adas_cog11", "updrs3", "hoehn_yahr", "session")

#: keys of ``config.cohort.simulate`` that size the cohort; every other key is a model parameter
COHORT_KEYS = ("n_hc", "n_ad", "n_pd", "voxel_mm")


def model_from_config(section: dict) -> SimulationModel:
    """The :class:`SimulationModel` of a ``cohort.simulate`` config section."""
    return SimulationModel.from_params(**{k: v for k, v in section.items() if k not in COHORT_KEYS})


def plan_row(frame: pd.DataFrame, participant_id: str) -> dict:
    """One planned subject as plain JSON-safe values (``None`` for n/a), e.g. a rule's param."""
    # The workflow passes a frame already indexed by participant_id: no re-indexing per subject.
    indexed = frame if frame.index.name == "participant_id" else frame.set_index("participant_id", drop=False)
    row = indexed.loc[participant_id].to_dict()
    return {k: (None if isinstance(v, float) and np.isnan(v) else v.item() if isinstance(v, np.generic) else v)
            for k, v in row.items()}
