"""Strict configuration: closed schema, cross-key rules, cohort against splits, typed --config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.cli import parse_config

from brainage.config import (
    ConfigError,
    check_cohort,
    check_config,
    cross_key_problems,
    layered,
    nearest,
    resolved_config,
    schema_problems,
    typed_overrides,
)
from brainage.data.simulate import plan_cohort

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


CONFIG = REPO / "config"


def _yaml(path) -> dict:
    return yaml.safe_load(path.read_text())


def demo() -> dict:
    """The demo as a plain `snakemake` resolves it: config/config.yaml over config/defaults.yaml."""
    return resolved_config(root=REPO)


def as_snakemake_layers(*configfiles: str) -> dict:
    """``--configfile`` files as Snakemake layers them over config/defaults.yaml (the demo left
    out): its own recursive merge (nested keys merged, e.g. preprocess.native.registration key by
    key), starting from the files' keys, then the pipeline's ``layered`` (the last file's
    ``models`` whole, the defaults' key order)."""
    import copy

    from snakemake.utils import update_config

    files: dict = {}
    for name in configfiles:
        update_config(files, _yaml(CONFIG / name))
    config = copy.deepcopy(files)  # Snakemake's config starts as the command line's
    update_config(config, _yaml(CONFIG / "defaults.yaml"))  # the Snakefile's configfile:
    update_config(config, files)  # the command line's again on top
    return layered(config, [CONFIG / name for name in configfiles], {})


def test_resolved_config_layers_as_snakemake_does():
    for files in [("config.yaml",), ("paper.yaml",), ("ixi.yaml",), ("config.yaml", "pretrain_sim.yaml"),
                  ("config.yaml", "pretrain_synth.yaml")]:
        assert resolved_config([CONFIG / f for f in files], REPO) == as_snakemake_layers(*files), files
    assert demo() == as_snakemake_layers("config.yaml")  # no --configfile: the demo


def test_every_section_keeps_the_key_order_of_the_defaults():
    """A rule records a params mapping (training, preprocess) as its repr: the order of its keys
    must not depend on which keys an overlay lists, or editing one would rerun the rule."""
    defaults = _yaml(CONFIG / "defaults.yaml")

    def orders(node: dict, path=()) -> dict:
        found = {path: list(node)}
        for key, value in node.items():
            if isinstance(value, dict) and key != "models":
                found.update(orders(value, (*path, key)))
        return found

    expected = {path: keys for path, keys in orders(defaults).items() if path}
    for files in [(), ("paper.yaml",), ("ixi.yaml",), ("config.yaml", "pretrain_sim.yaml"),
                  ("config.yaml", "pretrain_synth.yaml")]:
        config = as_snakemake_layers(*files) if files else demo()
        assert {path: keys for path, keys in orders(config).items() if path} == expected, files


def test_layers_merge_mappings_and_replace_the_rest():
    """The layering rule resolved_config relies on, as Snakemake's update_config applies it."""
    from snakemake.utils import update_config

    config = {"a": {"b": 1, "c": [1, 2]}, "d": None}
    update_config(config, {"a": {"c": [3]}, "d": {"e": 1}})
    assert config == {"a": {"b": 1, "c": [3]}, "d": {"e": 1}}


def test_defaults_hold_every_key_but_the_models_and_overlays_only_what_differs():
    """config/defaults.yaml meets the schema's required keys and holds no models; the overlays
    restate no key at its default value (a key given only to undo another layer)."""
    defaults = _yaml(CONFIG / "defaults.yaml")
    assert "models" not in defaults
    assert schema_problems(defaults, SCHEMA) == []

    def restated(over: dict, base: dict, path=()) -> list[str]:
        found = []
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                found += restated(value, base[key], (*path, key))
            elif key in base and base[key] == value:
                found.append(".".join((*path, key)))
        return found

    for name in ("config.yaml", "paper.yaml", "ixi.yaml"):
        assert restated(_yaml(CONFIG / name), defaults) == [], name


def test_schema_holds_no_defaults():
    """Defaults live in config/defaults.yaml (a model entry's in brainage.models.spec) only."""
    assert "default:" not in SCHEMA.read_text()


def test_every_mapping_of_the_schema_is_closed():
    open_ = []

    def walk(node, path):
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_.append(".".join(path) or "(top level)")
            for key, value in node.items():
                walk(value, [*path, str(key)])
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, [*path, str(i)])

    walk(yaml.safe_load(SCHEMA.read_text()), [])
    assert open_ == []


def test_demo_and_paper_configs_are_valid():
    check_config(demo(), SCHEMA)
    for configfile in ("paper.yaml", "ixi.yaml"):
        config = as_snakemake_layers(configfile)
        check_config(config, SCHEMA)
        # over the defaults, not the demo: the study's grids and real heads keep the 2 mm
        # registration level the demo leaves out, without restating it
        assert "registration" not in _yaml(CONFIG / configfile).get("preprocess", {}).get("native", {})
        assert config["preprocess"]["native"]["registration"]["levels_mm"] == [8, 4, 2], configfile
        assert config["preprocess"]["native"]["registration"]["metric"] == "GC", configfile
        # the study's saliency, not the demo's input gradient
        assert config["explain"]["method"] == "gradram", configfile
        # the study's raw brain-age gap, not the demo's age-bias-corrected one beside it
        assert config["infer"]["bias_correction"] is False, configfile
    assert demo()["preprocess"]["native"]["registration"]["levels_mm"] == [8, 4]
    assert demo()["explain"]["method"] == "gradient"
    assert demo()["infer"]["bias_correction"] is True


def test_pretraining_config_is_valid_and_its_encoder_fits_the_ixi_rnc_model():
    """config/pretrain_sim.yaml (the README's pretraining on simulated brains) layered as its
    comment says, and its encoder usable by config/ixi.yaml's RNC model through init_from."""
    from brainage.models.spec import Architecture, source_mismatch

    config = as_snakemake_layers("config.yaml", "pretrain_sim.yaml")
    check_config(config, SCHEMA)
    assert config["cohort"]["simulate"]["n_ad"] == 0 and config["cohort"]["simulate"]["n_hc"] >= 400
    (name, encoder), = config["models"].items()
    ixi = _yaml(CONFIG / "ixi.yaml")["models"]["rnc_resnet18"]
    card = {"kind": "rnc", "architecture": encoder, "grid_res": encoder["grid"]}  # as a model card records it
    assert source_mismatch(ixi, card) is None
    assert source_mismatch({**ixi, "width": 0.5}, card) == "width 0.5 here, 0.25 in the source"
    assert Architecture.of(encoder) == Architecture.of(ixi)


def test_synth_pretraining_config_is_valid_and_fits_the_ixi_sfcns():
    """config/pretrain_synth.yaml layered as its comment says: valid, healthy controls only, one
    model with the random contrast continuing from the plain one, and each usable by the SFCN of
    config/ixi.yaml with the same inputs through init_from (a fine-tuned end-to-end model)."""
    from brainage.models.spec import source_mismatch

    config = as_snakemake_layers("config.yaml", "pretrain_synth.yaml")
    check_config(config, SCHEMA)
    models = config["models"]
    assert config["cohort"]["simulate"]["n_ad"] == config["cohort"]["simulate"]["n_pd"] == 0
    assert models["sfcn_synth"]["augment"]["synth"] > 0 and not models["sfcn"]["augment"].get("synth")
    assert models["sfcn_synth"]["init_from"] == "results/models/sfcn"
    ixi = _yaml(CONFIG / "ixi.yaml")["models"]["sfcn_tissue"]
    for name, entry in models.items():
        card = {"kind": "e2e", "architecture": entry, "grid_res": entry["grid"]}
        target = {**ixi, "inputs": entry.get("inputs", "intensity")}
        assert source_mismatch(target, card) is None, name
    card = {"kind": "e2e", "architecture": models["sfcn"], "grid_res": 4}
    assert source_mismatch(ixi, card) == "inputs tissue here, intensity in the source"


def test_the_last_files_models_replace_an_earlier_files_whole():
    """config/config.yaml then config/pretrain_sim.yaml (the pretraining run): the demo's models
    that Snakemake's key-by-key merge leaves are gone."""
    config = demo()
    config["models"]["rnc_resnet18"]["epochs"] = 40  # what Snakemake's key-by-key merge leaves
    layered(config, [CONFIG / "config.yaml", CONFIG / "pretrain_sim.yaml"], {})
    assert config["models"] == _yaml(CONFIG / "pretrain_sim.yaml")["models"]


def test_a_configfile_gets_no_demo_models():
    config = resolved_config([CONFIG / "paper.yaml"], REPO)
    assert config["models"] == _yaml(CONFIG / "paper.yaml")["models"]
    assert "width" not in config["models"]["resnet18_e2e"]  # no demo key mixed in


@pytest.mark.parametrize("edit, line", [
    (lambda c: c["cohort"].update(sourse="manifest"),
     "config cohort.sourse: unknown key 'sourse' (did you mean 'source'?)"),
    (lambda c: c.update(foo=1), "config foo: unknown key 'foo' (valid keys: seed, cohort, preprocess,"),
    (lambda c: c["preprocess"].update(engin="minc"),
     "config preprocess.engin: unknown key 'engin' (did you mean 'engine'?)"),
    (lambda c: c["models"]["resnet18_e2e"].update(epoch=3),
     "config models.resnet18_e2e.epoch: unknown key 'epoch' (did you mean 'epochs'?)"),
    (lambda c: c["preprocess"].update(engine="bogus"), "config preprocess.engine: 'bogus' is not one of native, minc"),
    (lambda c: c["models"]["resnet18_e2e"].update(epochs="5"), "config models.resnet18_e2e.epochs: '5' is a str, expected integer"),
])
def test_schema_problem_is_one_line_naming_the_key(edit, line):
    config = demo()
    edit(config)
    problems = schema_problems(config, SCHEMA)
    assert len(problems) == 1 and problems[0].startswith(line), problems


def test_nearest_key():
    assert nearest("sourse", ["source", "manifest", "simulate"]) == "source"
    assert nearest("qqq", ["source", "manifest"]) is None


@pytest.mark.parametrize("edit, line", [
    (lambda c: c["models"]["resnet18_e2e"].update(grid=3),
     "config models.resnet18_e2e.grid: 3 mm is not in preprocess.grids [2, 4]"),
    (lambda c: c["training"]["splits"].update(fractions=[0.5, 0.5, 0.5]),
     "config training.splits.fractions: [0.5, 0.5, 0.5] sums to 1.5, not 1"),
    (lambda c: c["training"]["splits"].update(fractions=[0.9, 0.1, 0.0]),
     "config training.splits.fractions: the test fraction is 0"),
    (lambda c: c["infer"].update(models=["resnet18_ee"]),
     "config infer.models: 'resnet18_ee' is not a model of 'models' (did you mean 'resnet18_e2e'?)"),
])
def test_cross_key_problem_is_one_line(edit, line):
    config = demo()
    edit(config)
    problems = cross_key_problems(config)
    assert len(problems) == 1 and problems[0].startswith(line), problems
    with pytest.raises(ConfigError, match="^config "):
        check_config(config, SCHEMA)


@pytest.mark.parametrize("n_hc, fractions, ok", [
    (0, [0.8, 0.1, 0.1], False),
    (2, [0.8, 0.1, 0.1], False),   # 2 subjects cannot fill train (2), val and test
    (10, [0.8, 0.1, 0.1], True),   # one block of 8 + 1 + 1
    (200, [0.8, 0.1, 0.1], True),
])
def test_cohort_must_fill_every_split(n_hc, fractions, ok):
    config = demo()
    config["infer"]["bias_correction"] = False  # its own check: the next test
    config["training"]["splits"]["fractions"] = fractions
    sim = {**config["cohort"]["simulate"], "n_hc": n_hc}
    participants = plan_cohort(**sim, seed=config["seed"], bids_root="bids")
    problems = check_cohort(participants, config, "cohort.simulate")
    assert (problems == []) == ok, problems
    if not ok:
        assert len(problems) == 1 and problems[0].startswith("config cohort.simulate: ")


def test_age_bias_correction_needs_two_validation_subjects():
    """10 controls leave one validation subject: no line to fit, said before any job runs."""
    config = demo()
    participants = plan_cohort(**{**config["cohort"]["simulate"], "n_hc": 10}, seed=config["seed"], bids_root="bids")
    assert config["infer"]["bias_correction"] is True
    problems = check_cohort(participants, config, "cohort.simulate")
    assert len(problems) == 1 and "infer.bias_correction" in problems[0] and "1 subject(s)" in problems[0], problems
    config["infer"]["bias_correction"] = False
    assert check_cohort(participants, config, "cohort.simulate") == []


def test_nested_config_values_are_typed():
    overrides = parse_config(["models={resnet18_e2e: {epochs: 5, augment: false, optimiser: {lr: 1e-3}}}",
                              "preprocess={grids: [2, 4]}", "infer={device: cpu}"])
    assert overrides["models"]["resnet18_e2e"]["epochs"] == "5"  # what Snakemake hands over
    config = demo()
    e2e = config["models"]["resnet18_e2e"]
    e2e.update(overrides["models"]["resnet18_e2e"])  # Snakemake's merge
    typed_overrides(config, overrides)
    assert e2e["epochs"] == 5 and e2e["augment"] is False and e2e["optimiser"] == {"lr": 0.001}
    assert e2e["width"] == 0.25  # other keys of the model kept
    assert config["preprocess"]["grids"] == [2, 4] and config["infer"]["device"] == "cpu"
    check_config(config, SCHEMA)


def _dry_run(*args):
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    return out.returncode, out.stdout + out.stderr


def test_typo_stops_the_dry_run_before_any_job(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("cohort:\n  sourse: manifest\n  manifest: p.tsv\n")
    code, text = _dry_run("--configfile", str(config))
    assert code == 1
    assert "config cohort.sourse: unknown key 'sourse' (did you mean 'source'?)" in text
    assert "simulate_subject" not in text


def test_nested_config_numbers_pass_the_dry_run():
    code, text = _dry_run("--config", "models={resnet18_e2e: {epochs: 5}}")
    assert code == 0, text[-2000:]
