"""fl_core.registry: known answers, bad input, and every family in the catalogue."""

from __future__ import annotations

import importlib
import inspect

import pytest

from fl_core.errors import ConfigError, UnknownNameError
from fl_core.registry import Entry, Registry, catalogue, default_of, normalise

FAMILIES = {
    "dataset": "fl_core.data",
    "model": "fl_core.models",
    "partition scheme": "fl_core.data",
    "server optimizer": "fl_core.server_opt",
    "robust aggregator": "defenses.robust",
    "DP mechanism": "defenses.dp.registry",
    "DP-FedAvg variant": "defenses.dp.registry",
    "secure aggregation protocol": "secure_agg.registry",
    "attack": "attacks.registry",
    "reconstruction attack": "attacks.reconstruction.registry",
    "FM attack": "attacks.fm.registry",
    "FM defense": "defenses.fm.registry",
}


def _toys() -> Registry:
    reg = Registry("toy", listed=False)

    @reg.register("two-knobs", description="a class with a required and an optional knob", colour="red")
    class TwoKnobs:
        def __init__(self, *, a: int, b: float = 0.5) -> None:
            self.a, self.b = a, b

    @reg.register("factory", description="a factory function")
    def factory(x: int = 1, *, y: str = "y") -> tuple[int, str]:
        return x, y

    return reg


def test_make_returns_the_registered_class_with_the_params() -> None:
    reg = _toys()
    obj = reg.make("two-knobs", a=3)
    assert type(obj).__name__ == "TwoKnobs" and (obj.a, obj.b) == (3, 0.5)
    assert reg.make("two_knobs", a=1, b=2.0).b == 2.0  # '-' and '_' match
    assert reg.make("TWO-KNOBS", a=1).a == 1  # case-insensitive
    assert reg.make("factory", x=4, y="z") == (4, "z")
    assert reg.make("factory") == (1, "y")


def test_get_names_entries_parameters_and_tags() -> None:
    reg = _toys()
    assert reg.names() == ["factory", "two-knobs"]
    assert list(reg) == reg.names() and len(reg) == 2
    assert "two_knobs" in reg and "three-knobs" not in reg and 3 not in reg
    entry = reg.get("two-knobs")
    assert isinstance(entry, Entry) and entry.name == "two-knobs" and entry.family == "toy"
    assert entry.colour == "red" and entry.cls is entry.obj
    with pytest.raises(AttributeError, match="no attribute or tag 'shape'"):
        _ = entry.shape
    assert reg.names(colour="red") == ["two-knobs"]
    params = reg.parameters("two-knobs")
    assert [(p.name, p.default) for p in params] == [("a", inspect.Parameter.empty), ("b", 0.5)]
    assert reg.defaults("two-knobs") == {"b": 0.5}
    assert reg.defaults("factory") == {"x": 1, "y": "y"}
    assert reg.descriptions() == {
        "factory": "a factory function",
        "two-knobs": "a class with a required and an optional knob",
    }


def test_unknown_name_lists_close_matches() -> None:
    reg = _toys()
    with pytest.raises(UnknownNameError, match=r"unknown toy 'two-knob'\. Did you mean 'two-knobs'\?") as info:
        reg.make("two-knob", a=1)
    assert info.value.valid == ("factory", "two-knobs")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_wrong_and_missing_parameters_name_the_component_and_the_valid_ones() -> None:
    reg = _toys()
    with pytest.raises(ConfigError, match=r"two-knobs \(TwoKnobs\) got unknown parameter 'c'; valid parameters: a, b"):
        reg.make("two-knobs", a=1, c=2)
    with pytest.raises(ConfigError, match=r"got unknown parameters 'c', 'd'; valid parameters: a, b"):
        reg.make("two-knobs", a=1, c=2, d=3)
    with pytest.raises(ConfigError, match=r"two-knobs \(TwoKnobs\) needs the parameter 'a'; valid parameters: a, b"):
        reg.make("two-knobs", b=1.0)
    with pytest.raises(ConfigError, match=r"toy factory got unknown parameter 'z'; valid parameters: x, y"):
        reg.make("factory", z=1)


def test_check_validates_without_calling() -> None:
    calls = []
    reg = Registry("counter", listed=False)

    @reg.register("c", description="counts calls")
    def count(*, k: int) -> None:
        calls.append(k)

    assert reg.check("c", {"k": 1}).name == "c"
    with pytest.raises(ConfigError, match="needs the parameter 'k'"):
        reg.check("c", {})
    assert calls == []


def test_context_parameters_are_hidden_from_users_but_still_checked() -> None:
    reg = Registry("ctx", context=("labels",), listed=False)

    @reg.register("split", description="a function with one context parameter")
    def split(labels: list[int], *, parts: int = 2) -> int:
        return len(labels) // parts

    assert [p.name for p in reg.parameters("split")] == ["parts"]
    assert reg.make("split", labels=[0, 1, 2, 3]) == 2
    with pytest.raises(ConfigError, match="needs the parameter 'labels'; valid parameters: parts"):
        reg.make("split", parts=2)
    with pytest.raises(ConfigError, match="got unknown parameter 'labels'"):
        reg.check("split", {"labels": [1]}, context=False)
    reg.check("split", {"parts": 3}, context=False)  # the caller adds the context later


def test_kwargs_components_accept_any_parameter() -> None:
    reg = Registry("open", listed=False)

    @reg.register("open", description="takes anything")
    def anything(**kw: object) -> dict[str, object]:
        return kw

    assert reg.takes_any("open") and reg.make("open", q=1) == {"q": 1}


def test_duplicates_are_refused() -> None:
    reg = _toys()
    with pytest.raises(ConfigError, match="already registered"):

        @reg.register("two_knobs", description="same name after normalisation")
        class Other:
            pass

    with pytest.raises(ConfigError, match="a registry of the family 'robust aggregator' already exists"):
        importlib.import_module("defenses.robust")
        Registry("robust aggregator")
    with pytest.raises(ConfigError, match="non-empty string"):
        reg.register("  ", description="blank")


def test_re_registering_the_same_object_is_a_no_op() -> None:
    reg = Registry("same", listed=False)

    def f(*, a: int = 1) -> int:
        return a

    reg.register("f", description="one")(f)
    reg.register("F", description="one")(f)
    assert reg.names() == ["f"]


def test_exact_registries_do_not_normalise_but_refuse_near_duplicates() -> None:
    reg = Registry("exact", normalise=False, listed=False)
    reg.register("label-flip", description="hyphenated")(lambda: 1)
    assert reg.make("label-flip") == 1
    with pytest.raises(UnknownNameError, match="Did you mean 'label-flip'"):
        reg.get("label_flip")
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("label_flip", description="near duplicate")(lambda: 2)


def test_normalise_and_default_of() -> None:
    assert normalise(" Multi-Krum ") == "multi_krum"

    def f(*, top_k: int = 64, need: int) -> None: ...

    assert default_of(f, "top_k") == 64
    with pytest.raises(ConfigError, match="'need'"):
        default_of(f, "need")
    with pytest.raises(ConfigError, match="'nope'"):
        default_of(f, "nope")


def test_every_family_is_in_the_catalogue_and_non_empty() -> None:
    for module in set(FAMILIES.values()):
        importlib.import_module(module)
    families = catalogue()
    assert set(FAMILIES) <= set(families)
    for family in FAMILIES:
        assert len(families[family]) > 0, family
        assert families[family].family == family


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_entry_has_a_readable_signature_and_description(family: str) -> None:
    importlib.import_module(FAMILIES[family])
    registry = catalogue()[family]
    for entry in registry.entries():
        assert entry.description.strip(), (family, entry.name)
        params = registry.parameters(entry.name)
        assert all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)
        assert set(registry.defaults(entry.name)) <= {p.name for p in params}
        assert registry.get(entry.name) is entry


@pytest.mark.parametrize(
    ("family", "name", "params", "cls"),
    [
        ("robust aggregator", "multi-krum", {"f": 1, "m": 3}, "MultiKrum"),
        ("server optimizer", "fedavgm", {"lr": 0.5}, "FedAvgM"),
        ("DP mechanism", "laplace", {"scale": 2.0}, "LaplaceMechanism"),
        ("DP mechanism", "skellam", {"mu": 4.0}, "SkellamMechanism"),
        (
            "DP-FedAvg variant",
            "central",
            {"noise_multiplier": 1.0, "expected_clients": 10, "sample_rate": 0.5, "delta": 1e-5, "clip_norm": 1.0},
            "CentralDPFedAvg",
        ),
        ("DP-FedAvg variant", "local", {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5}, "LocalGaussianDP"),
        ("secure aggregation protocol", "secagg-plus", {"clip": 1.0}, "SecAggPlusAggregator"),
        ("secure aggregation protocol", "ckks", {"clip": 1.0}, "CKKSAggregator"),
        ("reconstruction attack", "dlg", {"iterations": 5}, "DLG"),
        ("FM defense", "reinit-top", {"r": 2}, "ReinitTopDefense"),
        ("FM attack", "fm-public-data", {"server_training": "init"}, "FMPublicData"),
    ],
)
def test_known_answers_per_family(family: str, name: str, params: dict, cls: str) -> None:
    importlib.import_module(FAMILIES[family])
    obj = catalogue()[family].make(name, **params)
    assert type(obj).__name__ == cls
    for k, v in params.items():
        if hasattr(obj, k):
            assert getattr(obj, k) == v


def test_defaults_live_in_the_signatures() -> None:
    from attacks.fm.compromised import FMBackdoor
    from attacks.fm.registry import FM_ATTACKS
    from defenses.fm.registry import FM_DEFENSES
    from defenses.fm.trigger_scan import scan_for_triggers
    from fl_core.data.partition import PARTITIONS
    from fl_core.server_opt import FedAdam, build_server_optimizer

    assert build_server_optimizer("fedadam").lr == inspect.signature(FedAdam).parameters["lr"].default
    assert PARTITIONS.defaults("dirichlet")["alpha"] == 0.5
    scan = inspect.signature(scan_for_triggers).parameters
    assert FM_DEFENSES.defaults("trigger-scan")["top_k"] == scan["top_k"].default
    assert FM_ATTACKS.defaults("compromised-fm")["epochs"] == inspect.signature(FMBackdoor).parameters["epochs"].default


def test_family_wrappers_raise_before_any_work() -> None:
    import numpy as np
    import torch

    from fl_core.data import load_dataset, partition
    from fl_core.models import build_model
    from fl_core.server_opt import build_server_optimizer

    with pytest.raises(UnknownNameError, match="Did you mean 'fedavg'"):
        build_server_optimizer("fedavgg")
    with pytest.raises(ConfigError, match="server optimizer fedavg \\(FedAvg\\) got unknown parameter 'momentum'"):
        build_server_optimizer("fedavg", momentum=0.9)
    with pytest.raises(ConfigError, match="got unknown parameter 'width'; valid parameters: hidden"):
        build_model("mlp", input_shape=(1, 4, 4), num_classes=2, generator=torch.Generator(), width=3)
    m = build_model(
        "mlp", input_shape=(1, 4, 4), num_classes=2, generator=torch.Generator().manual_seed(0), hidden=(3,)
    )
    assert sum(p.numel() for p in m.parameters()) == 16 * 3 + 3 + 3 * 2 + 2
    with pytest.raises(ConfigError, match="got unknown parameter 'alfa'"):
        partition(np.arange(10), scheme="dirichlet", n_clients=2, generator=np.random.default_rng(0), alfa=1.0)
    # the shared options are ignored by the schemes that do not take them
    parts = partition(np.arange(10), scheme="iid", n_clients=2, generator=np.random.default_rng(0), alpha=0.1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    with pytest.raises(UnknownNameError, match="unknown dataset 'digit'"):
        load_dataset("digit")
