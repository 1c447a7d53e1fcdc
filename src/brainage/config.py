"""The pipeline configuration, checked whole before any job: schema, cross-key rules, ``--config`` types.

The Snakefile calls :func:`check_config` once at parse time (``workflow/rules/common.smk``);
every problem is one line ``config <key.path>: <what is wrong>``, and all of them are listed
at once. Three layers:

1. the JSON schema (``workflow/schemas/config.schema.yaml``) in which every mapping is closed:
   an unknown key, a typo of a known one (``cohort.sourse``), is refused, naming the nearest
   valid key;
2. rules across keys that a schema cannot say: every model's ``grid`` is one of
   ``preprocess.grids``, ``infer.models`` names configured models, split fractions are
   positive and sum to 1;
3. the cohort against the splits: with the planned participants (simulated plan or manifest),
   every split the models need gets subjects (:func:`check_cohort`).

The files layer as the Snakefile loads them (:func:`resolved_config`): ``config/defaults.yaml``
under everything, then the demo ``config/config.yaml`` or, instead, the ``--configfile`` files.

``snakemake --config key=value`` parses nested values with YAML's base loader, which keeps
every nested scalar a string (``models={m: {epochs: 5}}`` gives ``"5"``); :func:`typed_overrides`
re-reads them as YAML scalars before the check.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from brainage.core.io import InputError
from brainage.models.kinds import STACK, kind_of
from brainage.models.spec import entry_problems, stack_problems

#: the repository this package is part of: the folder of the Snakefile and of ``config/``
REPO_ROOT = Path(__file__).resolve().parents[2]
#: every key but the models, at the study's value: the layer under every other config file
DEFAULTS_FILE = Path("config") / "defaults.yaml"
#: the demo, an overlay on the defaults used when no ``--configfile`` is given
DEMO_FILE = Path("config") / "config.yaml"
#: smallest number of healthy controls in each split (batch norm needs two to train)
MIN_SPLIT_SIZES: dict[str, int] = {"train": 2, "val": 1, "test": 1}


class ConfigError(InputError):
    """The configuration is not valid: one problem per line, each ``config <key>: <what>``."""


def _path(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def nearest(key: str, valid) -> str | None:
    """The valid key closest to ``key`` (difflib), or None when none is close."""
    valid = [str(v) for v in valid]
    match = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    if match:
        return match[0]
    lowered = {v.lower(): v for v in valid}
    return lowered.get(str(key).lower())


def _unknown_keys(error) -> list[str]:
    """One line per key that an ``additionalProperties: false`` mapping refused."""
    schema, instance = error.schema, error.instance
    known = list(schema.get("properties", {}))
    lines = []
    for key in instance:
        if key in known:
            continue
        guess = nearest(key, known)
        hint = f"did you mean {guess!r}?" if guess else f"valid keys: {', '.join(known)}"
        lines.append(f"config {_path([*error.absolute_path, key])}: unknown key {key!r} ({hint})")
    return lines


def _message(error) -> list[str]:
    where = _path(error.absolute_path)
    if error.validator == "additionalProperties" and error.schema.get("additionalProperties") is False:
        return _unknown_keys(error)
    if error.validator == "required":
        return [f"config {where}: {error.message}"]
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return [f"config {where}: {error.instance!r} is not one of {allowed}"]
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return [f"config {where}: {error.instance!r} is a {type(error.instance).__name__}, expected {expected}"]
    if error.validator in ("anyOf", "oneOf") and error.context:
        return _message(min(error.context, key=lambda e: len(list(e.absolute_path))))
    return [f"config {where}: {error.message}"]


def schema_problems(config: Mapping, schema_path: str | Path) -> list[str]:
    """Every schema violation of ``config``, one line each, sorted by key path."""
    from jsonschema import Draft202012Validator

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = Draft202012Validator(schema)
    lines: list[str] = []
    for error in sorted(validator.iter_errors(_plain(config)), key=lambda e: [str(p) for p in e.absolute_path]):
        for line in _message(error):
            if line not in lines:
                lines.append(line)
    return lines


def cross_key_problems(config: Mapping) -> list[str]:
    """Rules across keys: model grids, inferred models, split fractions."""
    lines: list[str] = []
    preprocess = config.get("preprocess") or {}
    grids = [float(g) for g in preprocess.get("grids") or [] if isinstance(g, (int, float))]
    models = config.get("models") or {}
    for name, entry in models.items():
        if isinstance(entry, Mapping) and "backbone" in entry:
            lines += entry_problems(name, entry)  # a network's training keys, a classical model's none
            if kind_of(entry) is STACK:
                scheme = ((config.get("training") or {}).get("splits") or {}).get("scheme", "fixed")
                lines += stack_problems(name, dict(entry), dict(models), scheme)
        grid = (entry or {}).get("grid") if isinstance(entry, Mapping) else None
        if isinstance(grid, (int, float)) and not any(abs(float(grid) - g) < 1e-9 for g in grids):
            lines.append(f"config models.{name}.grid: {grid:g} mm is not in preprocess.grids "
                         f"[{', '.join(f'{g:g}' for g in grids)}]; add it there or pick one of them")
    wanted = (config.get("infer") or {}).get("models")
    for name in wanted or []:
        if name not in models:
            guess = nearest(name, models)
            hint = f"did you mean {guess!r}?" if guess else f"configured: {', '.join(models) or 'none'}"
            lines.append(f"config infer.models: {name!r} is not a model of 'models' ({hint})")
    if wanted is not None and not wanted:
        lines.append("config infer.models: empty list; give model names or null for every model")
    if not models and "training" in config:
        lines.append("config models: no model configured; add at least one under 'models'")
    fractions = ((config.get("training") or {}).get("splits") or {}).get("fractions")
    if isinstance(fractions, list) and len(fractions) == 3 and all(isinstance(f, (int, float)) for f in fractions):
        names = ("train", "val", "test")
        for name, f in zip(names, fractions):
            if f <= 0:
                lines.append(f"config training.splits.fractions: the {name} fraction is {f:g}; "
                             f"every split needs a positive fraction")
        if abs(sum(fractions) - 1.0) > 1e-6:
            lines.append(f"config training.splits.fractions: {fractions} sums to {sum(fractions):g}, not 1 "
                         f"(train, val, test shares of the healthy controls)")
    return lines


def check_cohort(participants, config: Mapping, where: str) -> list[str]:
    """Problems of the cohort against the splits, from the planned ``participants`` table.

    The participant-level splits are made exactly as the ``splits`` rule makes them (same
    seed, fractions and age bins; QC exclusions are not known yet), and each split must hold
    at least :data:`MIN_SPLIT_SIZES` healthy controls.
    """
    from brainage.data.splits import make_splits

    splits_cfg = (config.get("training") or {}).get("splits") or {}
    fractions = tuple(splits_cfg.get("fractions", (0.8, 0.1, 0.1)))
    n_hc = int((participants["cohort"] == "HC").sum()) if len(participants) else 0
    if n_hc == 0:
        return [f"config {where}: no healthy controls (HC); the models train on healthy controls only"]
    if splits_cfg.get("scheme", "fixed") == "kfold":
        folds = int(splits_cfg.get("folds", 5))
        per_fold = n_hc // folds
        if per_fold < 2:
            return [f"config {where}: {n_hc} healthy controls for {folds}-fold cross-validation leave "
                    f"{per_fold} per fold (needs 2); add healthy controls or lower training.splits.folds"]
        return []
    table = make_splits(participants, int(config.get("seed", 0)), None, fractions,
                        float(splits_cfg.get("age_bin_years", 10)))
    counts = table["split"].value_counts()
    short = [f"{name} {int(counts.get(name, 0))} (needs {need})" for name, need in MIN_SPLIT_SIZES.items()
             if int(counts.get(name, 0)) < need]
    if short:
        return [f"config {where}: {n_hc} healthy controls split {list(fractions)} leave too few subjects: "
                f"{', '.join(short)}; add healthy controls or change training.splits.fractions"]
    n_val = int(counts.get("val", 0))
    if (config.get("infer") or {}).get("bias_correction") and n_val < 2:
        return [f"config {where}: infer.bias_correction fits a line of BAG on age over the validation split, "
                f"but {n_hc} healthy controls split {list(fractions)} leave it {n_val} subject(s) (needs 2); "
                "set infer.bias_correction: false or add healthy controls"]
    return []


def check_config(config: Mapping, schema_path: str | Path) -> None:
    """Raise :class:`ConfigError` listing every schema and cross-key problem of ``config``."""
    problems = schema_problems(config, schema_path)
    problems += [p for p in cross_key_problems(config) if p not in problems]
    if problems:
        raise ConfigError("\n".join(problems))


def _typed_scalar(value: Any) -> Any:
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if isinstance(parsed, (int, float, bool)) or parsed is None:
            return parsed
        try:
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as text
        except ValueError:
            return value
    if isinstance(value, Mapping):
        return {k: _typed_scalar(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed_scalar(v) for v in value]
    return value


def typed_overrides(config: dict, overrides: Mapping) -> dict:
    """``config`` with the nested ``--config`` values in ``overrides`` re-read as YAML scalars.

    Snakemake parses ``--config models={m: {epochs: 5}}`` with YAML's base loader, which leaves
    ``"5"``: each nested string leaf of ``overrides`` is written back into ``config`` at its key
    path as ``int``/``float``/``bool``/``null`` when it reads as one. Top-level values were
    already typed by Snakemake and are left alone. ``config`` is changed in place and returned.
    """

    def walk(target: dict, over: Mapping) -> None:
        for key, value in over.items():
            if isinstance(value, Mapping) and isinstance(target.get(key), dict):
                walk(target[key], value)
            elif isinstance(value, (Mapping, list, str)):
                target[key] = _typed_scalar(value)

    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            walk(config[key], value)
        elif isinstance(value, list):
            config[key] = _typed_scalar(value)
    return config


def layered(config: dict, configfiles, overrides: Mapping, order_of: str | Path | None = None) -> dict:
    """``config`` as Snakemake merged it, with ``models`` taken whole from the last config file,
    and its keys in the order of ``config/defaults.yaml``.

    Snakemake merges ``--configfile`` files key by key, so with two files that list models
    (``config/config.yaml config/pretrain_sim.yaml``) the first one's models would survive and
    mix their keys into the second's. A config file that lists ``models`` therefore replaces
    them whole; ``--config models={...}`` still changes single keys (:func:`typed_overrides`).

    Snakemake puts the ``--configfile`` files' keys first, so a section's key order would
    depend on which keys an overlay lists; a rule whose params hold a section (``training``,
    ``preprocess``) records it as its repr, and a new order would rerun it. Every mapping
    therefore takes the key order of ``order_of`` (default: ``config/defaults.yaml`` beside this
    package, when present), keys it lacks after. ``config`` is changed in place and returned.
    """
    models = None
    for path in configfiles or ():
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if isinstance(loaded, Mapping) and "models" in loaded:
            models = copy.deepcopy(loaded["models"])
    if models is not None:
        config["models"] = models
    order_of = Path(order_of) if order_of is not None else REPO_ROOT / DEFAULTS_FILE
    if order_of.is_file():
        _order_like(config, yaml.safe_load(order_of.read_text()) or {})
    return typed_overrides(config, overrides)


def _order_like(config: dict, reference: Mapping) -> None:
    """``config``'s keys, nested ones too, in place in ``reference``'s order, keys it lacks after."""
    keys = [key for key in reference if key in config] + [key for key in config if key not in reference]
    for key in keys:
        value = config.pop(key)
        config[key] = value
        if isinstance(value, dict) and isinstance(reference.get(key), Mapping):
            _order_like(value, reference[key])


def resolved_config(configfiles=(), root: str | Path | None = None) -> dict:
    """The configuration the Snakefile resolves for ``snakemake [--configfile FILE ...]`` (before
    ``--config`` overrides and the schema check).

    ``config/defaults.yaml`` (every key but the models), then the demo ``config/config.yaml``
    only when no file is given, then each of ``configfiles`` key by key, ``models`` taken whole
    from the last file that lists them (:func:`layered`). ``root``: the folder of the Snakefile
    and ``config/`` (default: the repository holding this package).
    """
    from snakemake.utils import update_config  # how Snakemake itself layers config files

    root = Path(root) if root is not None else REPO_ROOT
    files = [Path(path) for path in configfiles]
    config: dict = {}
    for path in [root / DEFAULTS_FILE, *(files or [root / DEMO_FILE])]:
        update_config(config, yaml.safe_load(Path(path).read_text()) or {})
    return layered(config, files, {}, order_of=root / DEFAULTS_FILE)


def _plain(value: Any) -> Any:
    """Mappings and sequences as dict and list (Snakemake may hand immutable mappings)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
