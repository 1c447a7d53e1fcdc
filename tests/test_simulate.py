"""The simulated cohort checks the *model* against independent expectations, on a few subjects.

Raw scans are simulated at a coarse voxel size (3 mm) to stay within the test budget; the
anatomy (template head, labels, effect fields) is built once for the module.
"""

from __future__ import annotations

import dataclasses
import hashlib

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage, stats

from brainage.core.io import InputError
from brainage.data.simulate import SITES, SimulationModel, cached_anatomy, plan_cohort, plan_subject, simulate_scan
from brainage.core.paths import simulated_subject_files
from brainage.data.simulate.cohort import write_subject
from brainage.data.simulate.model import AD_SITE

VOXEL_MM = 3.0
SEED = 11


@pytest.fixture(scope="module")
def anatomy():
    return cached_anatomy(VOXEL_MM)


def _row(pid, cohort, site, age, model, severity=None, seed=SEED):
    row = plan_subject(pid, cohort, site, seed, model, age=age, severity=severity)
    row["voxel_mm"] = VOXEL_MM
    return row


# --- the plan: demographics and scores (cheap, no images)


def test_plan_cohort_manifest_columns_sites_and_ranges():
    frame = plan_cohort(n_hc=200, n_ad=300, n_pd=300, voxel_mm=2.0, seed=SEED, bids_root="results/cohort/bids")
    assert list(frame.columns[:10]) == ["participant_id", "dataset", "cohort", "age", "sex", "t1w",
                                        "adas_cog11", "updrs3", "hoehn_yahr", "session"]
    assert frame["participant_id"].is_unique
    assert frame["participant_id"].iloc[0] == "sub-hc0001"
    assert frame.loc[frame.cohort == "AD", "participant_id"].iloc[0] == "sub-ad0001"
    pid = frame["participant_id"].iloc[-1]
    assert frame["t1w"].iloc[-1] == f"results/cohort/bids/{pid}/anat/{pid}_T1w.nii.gz"
    # the age ranges per dataset
    ranges = {"IXI-like": (20, 86), "HCP-like": (20, 100), "OpenNeuro-like": (20, 89), "ADNI-NC-like": (69, 93),
              "PPMI-NC-like": (40, 81), "ADNI-like": (59, 91), "PPMI-like": (43, 86)}
    for dataset, (lo, hi) in ranges.items():
        ages = frame.loc[frame.dataset == dataset, "age"]
        assert len(ages) > 0 and ages.min() >= lo and ages.max() <= hi, dataset
    assert set(frame.loc[frame.cohort == "HC", "dataset"]) == {s.name for s in list(SITES.values())[:5]}
    # clinical scores in their instruments' ranges, near the study's cohort means +- SD
    ad, pd_ = frame[frame.cohort == "AD"], frame[frame.cohort == "PD"]
    assert ad["adas_cog11"].between(0, 70).all() and frame.loc[frame.cohort != "AD", "adas_cog11"].isna().all()
    assert abs(ad["adas_cog11"].mean() - 25.6) < 2.5 and abs(ad["adas_cog11"].std() - 9.5) < 2.0
    assert pd_["updrs3"].between(0, 132).all() and abs(pd_["updrs3"].mean() - 27.9) < 3.0
    assert abs(pd_["updrs3"].std() - 13.9) < 3.0
    assert set(pd_["hoehn_yahr"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    # the truth states the brain-age increment: none for HC, positive for patients, AD > PD
    assert (frame.loc[frame.cohort == "HC", "brain_age_increment"] == 0).all()
    assert ad["brain_age_increment"].mean() > pd_["brain_age_increment"].mean() > 0
    # males have larger heads on average
    hc = frame[frame.cohort == "HC"]
    assert hc.loc[hc.sex == "M", "head_scale"].mean() > hc.loc[hc.sex == "F", "head_scale"].mean()


def test_plan_is_per_subject_and_rejects_unknown_parameters():
    small = plan_cohort(3, 1, 1, 2.0, SEED, "b")
    large = plan_cohort(10, 4, 4, 2.0, SEED, "b").set_index("participant_id")
    # a subject is the same in any cohort size; another seed gives another cohort
    for _, row in small.iterrows():
        assert row["age"] == large.at[row["participant_id"], "age"]
    other = plan_cohort(3, 1, 1, 2.0, SEED + 1, "b")
    assert not np.allclose(small["age"], other["age"])
    with pytest.raises(InputError, match="ventricle_grwoth_80"):
        plan_cohort(3, 1, 1, 2.0, SEED, "b", ventricle_grwoth_80=1.0)


# --- the images: the model, measured on the simulated scans


@pytest.mark.slow
def test_ventricular_volume_grows_with_age_in_hc(anatomy):
    """Ventricles measured on the images (dark voxels near the centre) correlate with age, r > 0.8."""
    model = SimulationModel()
    ages = np.linspace(20, 90, 8)
    sites = list(SITES.values())[:5]
    measured, truth = [], []
    for i, age in enumerate(ages):
        row = _row(f"sub-hcv{i:02d}", "HC", sites[i % 5], age, model)
        scan = simulate_scan(row, anatomy, SEED, model)
        img = nib.as_closest_canonical(scan.image)
        data = np.asarray(img.dataobj, dtype=np.float32)
        mask = np.asarray(nib.as_closest_canonical(scan.mask).dataobj) > 0
        zooms = np.array(img.header.get_zooms()[:3])
        # CSF fraction of the central brain: voxels darker than half-way between the
        # brain's darkest decile and its median (WM/GM), within 35 mm of the mask centroid
        centre = np.array(ndimage.center_of_mass(mask))
        grid = np.indices(mask.shape).reshape(3, -1).T
        near = (np.linalg.norm((grid - centre) * zooms, axis=1) < 35).reshape(mask.shape) & mask
        brain = data[mask]
        threshold = 0.5 * (np.percentile(brain, 5) + np.median(brain))
        measured.append((data[near] < threshold).sum() / mask.sum())
        truth.append(scan.volumes_ml["ventricles"] / scan.volumes_ml["intracranial"])
    r_image = stats.pearsonr(ages, measured)[0]
    r_truth = stats.pearsonr(ages, truth)[0]
    assert r_image > 0.8, (r_image, measured)
    assert r_truth > 0.8, (r_truth, truth)
    # "ventricles about double between 20 and 80": fit over ages, compare 80 with 20
    fit = np.polyfit(ages, truth, 2)
    ratio = np.polyval(fit, 80) / np.polyval(fit, 20)
    assert 1.5 < ratio < 3.0, ratio


@pytest.mark.slow
def test_ad_hippocampus_smaller_than_age_matched_hc_and_adas_tracks_atrophy(anatomy):
    """True native-space volumes (fractions of the intracranial volume) at a fixed age of 75."""
    model = SimulationModel()

    def fractions(pid, cohort, site):
        row = _row(pid, cohort, site, 75.0, model)
        v = simulate_scan(row, anatomy, SEED, model).volumes_ml
        mtl = v["hippocampus"] + v["amygdala"] + v["parahippocampal"]
        return row, v["hippocampus"] / v["intracranial"], mtl / v["intracranial"]

    hc = [fractions(f"sub-hcm{i:02d}", "HC", SITES["ADNI-NC-like"]) for i in range(5)]
    ad = [fractions(f"sub-adm{i:02d}", "AD", AD_SITE) for i in range(10)]
    hc_hip, ad_hip = [h for _, h, _ in hc], [h for _, h, _ in ad]
    assert np.mean(ad_hip) < 0.92 * np.mean(hc_hip)
    assert stats.ttest_ind(ad_hip, hc_hip).pvalue < 0.01
    # simulated AD atrophy: shortfall of the medial-temporal fraction against age-matched HC
    atrophy = 1.0 - np.array([m for _, _, m in ad]) / np.mean([m for _, _, m in hc])
    adas = [row["adas_cog11"] for row, _, _ in ad]
    r, p = stats.pearsonr(adas, atrophy)
    assert r > 0.5 and p < 0.05, (r, p, adas, atrophy)


def _ray_profiles(scan, n_rays=60):
    """Intensity and in-mask flag along rays from the brain centre through the upper head."""
    data = np.asarray(scan.image.dataobj, dtype=np.float32)
    mask = np.asarray(scan.mask.dataobj) > 0
    affine = scan.image.affine
    centre = affine[:3, :3] @ np.array(ndimage.center_of_mass(mask)) + affine[:3, 3]
    # superior hemisphere of directions in the subject's MNI frame, mapped to native
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(n_rays, 3))
    dirs[:, 2] = np.abs(dirs[:, 2]) + 0.5
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    dirs = (np.linalg.inv(scan.native_to_mni)[:3, :3] @ dirs.T).T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    steps = np.arange(0, 130, 0.5)
    inv = np.linalg.inv(affine)
    for d in dirs:
        pts = centre[None, :] + steps[:, None] * d[None, :]
        vox = inv[:3, :3] @ pts.T + inv[:3, 3:4]
        in_fov = np.all((vox >= 0) & (vox <= np.array(data.shape)[:, None] - 1), axis=0)
        yield (steps, ndimage.map_coordinates(data, vox, order=1, cval=0.0),
               ndimage.map_coordinates(mask.astype(np.float32), vox, order=0, cval=0.0) > 0, in_fov)


@pytest.mark.slow
def test_skull_and_scalp_lie_outside_the_true_brain_mask(anatomy):
    """Along rays leaving the brain: mask ends, then dark bone, then bright scalp fat, then air."""
    model = SimulationModel()
    for i, (site, age) in enumerate([("IXI-like", 30.0), ("HCP-like", 85.0)]):
        scan = simulate_scan(_row(f"sub-hcs{i}", "HC", SITES[site], age, model), anatomy, SEED, model)
        brain = np.asarray(scan.image.dataobj, dtype=np.float32)[np.asarray(scan.mask.dataobj) > 0]
        wm = np.percentile(brain, 90)
        ok = valid = 0
        for steps, profile, inside, in_fov in _ray_profiles(scan):
            exit_ = steps[np.flatnonzero(inside)[-1]]
            if not in_fov[steps <= exit_ + 25.0].all():
                continue  # the scalp along this ray is cut by the field of view
            valid += 1
            # the scalp: the outermost sample brighter than 60 % of WM (fat), before the air
            bright = np.flatnonzero(profile > 0.6 * wm)
            if not bright.size or steps[bright[-1]] < exit_ + 5.0:
                continue  # no scalp outside the mask: not ok
            # the skull: a dark trough (< 35 % of WM) between the mask's edge and the scalp
            between = np.flatnonzero((steps > exit_) & (steps < steps[bright[-1]]))
            trough = between[np.argmin(profile[between])]
            if profile[trough] < 0.35 * wm and steps[trough] < exit_ + 20.0:
                ok += 1
        assert valid >= 40 and ok >= 0.95 * valid, (site, ok, valid)


@pytest.mark.slow
def test_stored_affine_brings_raw_scan_back_onto_the_template(anatomy, tmp_path):
    """SimpleITK resamples the raw scan with the stored ITK transform: NCC with the template > 0.9."""
    import SimpleITK as sitk

    from brainage.data.atlases import load_template_1mm
    from brainage.core.grids import downsample_from_1mm, template_grid

    res = 2.0
    template, brain = load_template_1mm()
    grid = template_grid(res)
    tpl = downsample_from_1mm(template, res)
    mask = downsample_from_1mm(brain.astype(np.float32), res) > 0.5
    ref = sitk.Image([int(n) for n in grid.shape], sitk.sitkFloat32)
    ref.SetSpacing([res] * 3)
    ref.SetOrigin([-grid.affine[0, 3], -grid.affine[1, 3], grid.affine[2, 3]])  # RAS -> LPS
    ref.SetDirection([-1, 0, 0, 0, -1, 0, 0, 0, 1])
    model = SimulationModel()
    for i, site in enumerate(s.name for s in list(SITES.values())[:5]):
        row = _row(f"sub-hca{i}", "HC", SITES[site], 25.0 + 2 * i, model)
        paths = simulated_subject_files(tmp_path / "bids", tmp_path / "truth", row["participant_id"])
        write_subject(row, anatomy, SEED, model, paths)
        moving = sitk.ReadImage(str(paths["t1w"]), sitk.sitkFloat32)
        out = sitk.Resample(moving, ref, sitk.ReadTransform(str(paths["xfm_itk"])), sitk.sitkLinear, 0.0)
        arr = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
        # compared at the scale of an affine registration (2 mm Gaussian): the individual
        # nonlinear warp and the noise are not the affine's to undo
        ncc = np.corrcoef(ndimage.gaussian_filter(arr, 1.0)[mask], ndimage.gaussian_filter(tpl, 1.0)[mask])[0, 1]
        assert ncc > 0.9, (site, ncc)
        # the JSON affine is the same transform (RAS): voxel centre of the template -> native
        xfm = np.array(pd.read_json(paths["xfm_json"], typ="series")["native_to_mni"])
        itk = sitk.ReadTransform(str(paths["xfm_itk"]))
        mni = np.array([10.0, -20.0, 30.0])
        native_lps = np.array(itk.TransformPoint((-mni[0], -mni[1], mni[2])))
        native = native_lps * [-1, -1, 1]
        np.testing.assert_allclose(xfm[:3, :3] @ native + xfm[:3, 3], mni, atol=1e-6)
        # the raw grid is the site's: axis order and voxel size
        img = nib.load(paths["t1w"])
        assert "".join(nib.aff2axcodes(img.affine)) == "".join(SITES[site].axcodes)
        np.testing.assert_allclose(img.header.get_zooms(), np.array(SITES[site].voxel) * VOXEL_MM, rtol=1e-5)


@pytest.mark.slow
def test_same_seed_byte_identical_other_seed_different(anatomy, tmp_path):
    model = SimulationModel()

    def digests(folder, seed):
        row = _row("sub-hc0001", "HC", SITES["IXI-like"], 50.0, model, seed=seed)
        paths = simulated_subject_files(tmp_path / folder / "bids", tmp_path / folder / "truth", "sub-hc0001")
        write_subject(row, anatomy, seed, model, paths)
        return {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in paths.items()}

    first, again, other = digests("a", SEED), digests("b", SEED), digests("c", SEED + 1)
    assert first == again
    assert first["t1w"] != other["t1w"] and first["truth"] != other["truth"]


def test_model_parameters_are_documented_in_schema_and_config(repo):
    import yaml

    schema = yaml.safe_load((repo / "workflow/schemas/config.schema.yaml").read_text())
    props = schema["properties"]["cohort"]["properties"]["simulate"]["properties"]
    config = yaml.safe_load((repo / "config/defaults.yaml").read_text())["cohort"]["simulate"]
    import brainage.data.simulate as sim

    for field in dataclasses.fields(SimulationModel):
        assert props[field.name].get("description"), field.name
        assert field.name in config, field.name
        assert f"``{field.name}``" in sim.__doc__, field.name


# --- the registration ground truth: the full map and its best affine fit


def _template_brain_points(erode_mm: int = 0) -> np.ndarray:
    """MNI points (3, N) mm of every 4th voxel of the 1 mm template brain mask (eroded)."""
    from brainage.data.atlases import load_template_1mm
    from brainage.core.grids import TEMPLATE_AFFINE_1MM

    _, mask = load_template_1mm()
    if erode_mm:
        mask = ndimage.binary_erosion(mask, iterations=erode_mm)
    ijk = np.argwhere(mask[::4, ::4, ::4]) * 4
    return (TEMPLATE_AFFINE_1MM @ np.c_[ijk, np.ones(len(ijk))].T)[:3]


@pytest.mark.slow
def test_full_true_map_lands_in_the_true_mask_and_best_affine_absorbs_brain_shrinkage(anatomy):
    """The full true map (pose + warp + ageing fields) of the template's inner brain lands in the
    simulated scan's true brain mask; its least-squares affine is the pose when there is no
    deformation, and is smaller than the pose for an old brain shrunk inside its skull."""
    from brainage.data.simulate.scan import best_affine_template_to_native, native_to_mni, true_template_to_native

    inner = _template_brain_points(erode_mm=3)
    old = _row("sub-hcold", "HC", SITES["HCP-like"], 88.0, SimulationModel())
    scan = simulate_scan(old, anatomy, SEED)
    mask = np.asarray(scan.mask.dataobj) > 0
    to_vox = np.linalg.inv(scan.mask.affine)

    def inside(native_pts):
        vox = to_vox[:3, :3] @ native_pts + to_vox[:3, 3:4]
        return float(ndimage.map_coordinates(mask.astype(np.float32), vox, order=0).mean())

    full = true_template_to_native(old, anatomy, SEED, inner)
    pose = np.linalg.inv(native_to_mni(old))
    assert inside(full) > 0.995
    # the pose alone misses the brain's shrinkage: more template brain falls outside the mask
    assert inside(pose[:3, :3] @ inner + pose[:3, 3:4]) < inside(full)
    best, residual = best_affine_template_to_native(old, anatomy, SEED, _template_brain_points())
    # the documented shrinkage at 88 years (brain_shrink_80 0.005 x load 1.4: ~2 % of volume,
    # plus the sulci widening the brain's outline inwards) is small since it was fitted to IXI
    assert np.linalg.det(best[:3, :3]) < 0.99 * np.linalg.det(pose[:3, :3])
    assert 0.1 < residual < 3.0

    # no deformation at all (20 years, no ventricle or sulcal offset, no warp): best affine == pose, exactly
    flat_model = SimulationModel(warp_sd_mm=0.0, sulcal_sd=0.0)
    young = {**_row("sub-hcyoung", "HC", SITES["IXI-like"], 20.0, flat_model), "biological_age": 20.0,
             "ventricle_offset": 0.0}
    best, residual = best_affine_template_to_native(young, anatomy, SEED, _template_brain_points(), flat_model)
    np.testing.assert_allclose(best, np.linalg.inv(native_to_mni(young)), atol=1e-6)
    assert residual < 1e-6


@pytest.mark.slow
def test_default_cohort_true_brain_volumes_lie_within_qc_volume_bounds(anatomy, repo):
    """The configured simulated cohort's extreme subjects (smallest/largest heads, oldest) have
    true brain volumes inside the default QC bounds of config/defaults.yaml, with a 5 % margin
    above: deepbet's mask, which QC measures, keeps some extra-cerebral CSF (~3 % more than the
    true brain mask over the previous demo's 120 subjects)."""
    import yaml

    config = yaml.safe_load((repo / "config/defaults.yaml").read_text())
    bounds = config["preprocess"]["qc"]
    params = {k: v for k, v in config["cohort"]["simulate"].items() if k not in ("n_hc", "n_ad", "n_pd", "voxel_mm")}
    model = SimulationModel.from_params(**params)
    plan = plan_cohort(40, 10, 10, VOXEL_MM, SEED, "bids", **params)
    size = plan["scale_x"] * plan["scale_y"] * plan["scale_z"]
    picks = {*plan.loc[size.nsmallest(2).index, "participant_id"], *plan.loc[size.nlargest(2).index, "participant_id"],
             plan.loc[plan["biological_age"].idxmax(), "participant_id"]}
    for row in plan[plan["participant_id"].isin(picks)].to_dict("records"):
        brain = simulate_scan(row, anatomy, SEED, model).volumes_ml["brain"]
        assert bounds["min_brain_volume_ml"] <= brain <= bounds["max_brain_volume_ml"] / 1.05, (row["participant_id"], brain)


def test_signal_truth_follows_the_model_design(anatomy):
    """The per-region |signal change| (the saliency truth) puts first what the model was built to
    change: the ventricles grow with age (caudate and thalamus line them), AD shrinks the medial
    temporal lobe, PD the basal ganglia; with every ageing effect set to zero it is exactly 0."""
    from brainage.data.atlases import aal_labels
    from brainage.data.simulate.cohort import signal_change

    names = aal_labels()["name"].to_numpy()
    frame = pd.DataFrame({"cohort": ["AD", "PD", "HC"], "age": [75.0, 68.0, 60.0], "severity": [0.6, 0.5, 0.0],
                          "brain_age_increment": [5.0, 2.0, 0.0], "dataset": ["IXI-like"] * 3})
    change = signal_change(anatomy, SimulationModel(), frame)
    top = {effect: set(names[np.argsort(-c)[:10]]) for effect, c in change.items()}
    assert {"Caudate_L", "Caudate_R", "Thalamus_L", "Thalamus_R"} <= top["ageing"], top["ageing"]
    mtl = {"Hippocampus_L", "Hippocampus_R", "ParaHippocampal_L", "ParaHippocampal_R"}
    assert mtl <= top["AD_specific"], top["AD_specific"]
    assert {"Putamen_L", "Putamen_R"} <= top["PD_specific"], top["PD_specific"]
    # AD against age-matched controls: its own MTL atrophy and 5 years of faster ageing (ventricles)
    assert mtl | {"Caudate_L", "Caudate_R"} <= top["AD"], top["AD"]
    # without an increment, all that differs from the control is the disease's own atrophy
    same = signal_change(anatomy, SimulationModel(), frame.assign(brain_age_increment=0.0))
    np.testing.assert_array_equal(same["AD"], same["AD_specific"])
    assert not np.allclose(change["AD"], change["AD_specific"])
    still = SimulationModel(ventricle_growth_80=0.0, sulcal_widening_80=0.0, brain_shrink_80=0.0, mtl_atrophy_80=0.0,
                            wm_darkening_80=0.0, gm_brightening_80=0.0, frontal_thinning_80=0.0)
    assert np.abs(signal_change(anatomy, still, frame)["ageing"]).max() == 0.0
