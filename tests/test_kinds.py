"""The model kinds are one registry (brainage.models.kinds): every kind has a trainer, a config
entry maps to the kind its keys say, and a model file names a kind the code knows."""

from __future__ import annotations

import pytest
import torch

from brainage.core.io import InputError
from brainage.models.files import load_model
from brainage.models.kinds import CLASSICAL, E2E, KINDS, RNC, kind_named, kind_of
from brainage.models.spec import ModelSpec, has_saliency
from brainage.report.roles import model_roles
from brainage.train.engine import STAGES, TRAINERS


@pytest.mark.parametrize("entry, kind", [
    ({"backbone": "resnet18", "grid": 4, "loss": "l1", "batch_size": 4, "epochs": 1}, E2E),
    ({"backbone": "resnet18", "grid": 4, "batch_size": 4, "epochs": 1}, E2E),  # loss defaults to l1
    ({"backbone": "sfcn", "grid": 4, "loss": "l1", "batch_size": 4, "epochs": 1}, E2E),
    ({"backbone": "resnet50", "grid": 2, "loss": "rnc", "batch_size": 4, "epochs": 1}, RNC),
    ({"backbone": "pca_gpr", "grid": 4}, CLASSICAL),
])
def test_an_entry_resolves_once_into_the_kind_its_keys_say(entry, kind):
    spec = ModelSpec.resolve("m", entry)
    assert spec.kind is kind is kind_of(entry)
    assert has_saliency(entry) == kind.network
    # the resolved settings are what model.pt records: every default filled, the entry untouched
    assert all(spec[k] == v for k, v in entry.items())
    assert kind is CLASSICAL or spec["optimiser"]["name"] == ("sgd" if kind is RNC else "adam")


def test_every_kind_has_a_trainer_and_every_network_kind_a_stage():
    # a stack is fitted on predictions (brainage.train.stack), an ensemble assembled (brainage.train.deploy)
    assert set(TRAINERS) == {"e2e", "rnc", "classical"} == {k.name for k in KINDS.values() if k.trained}
    assert set(STAGES) == {k.name for k in KINDS.values() if k.network}
    assert all(STAGES[name].views == KINDS[name].views for name in STAGES)


def test_the_tables_roles_follow_the_kinds():
    roles = model_roles({"a": {"backbone": "resnet18", "loss": "l1"}, "b": {"backbone": "resnet18", "loss": "rnc"},
                         "c": {"backbone": "sfcn", "loss": "l1"}, "d": {"backbone": "pca_gpr", "grid": 4}})
    assert (roles.e2e, roles.rnc, roles.sfcn, roles.classical) == (("a",), ("b",), ("c",), ("d",))


def test_a_model_file_of_an_unknown_kind_is_refused_in_one_line(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {}, "meta": {"kind": "quantum", "name": "x"}}, path)
    with pytest.raises(InputError, match=r"model.pt: unknown model kind 'quantum' \(known: e2e, rnc, classical, stack, ensemble\)"):
        load_model(path)
    assert kind_named("rnc") is RNC


def test_the_same_model_saved_twice_gives_the_same_bytes(tmp_path):
    """A model file is a function of its weights and metadata only: torch names a zip's records
    after the file it writes, and the atomic write's temporary name is random."""
    from brainage.models.files import save_model

    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    save_model(state, {"kind": "e2e", "name": "m"}, tmp_path / "a" / "model.pt")
    save_model(state, {"kind": "e2e", "name": "m"}, tmp_path / "b" / "model.pt")
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
