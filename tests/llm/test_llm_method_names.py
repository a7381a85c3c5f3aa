"""OpenUnlearning's method names (GradAscent, GradDiff, NPO, SimNPO, RMU, DPO), in any case,
wherever a method name is taken; the canonical name is what configs and results store."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from trustfast.llm.losses import METHODS, OPENUNLEARNING_NAMES, LossConfig, canonical_method
from trustfast.llm.train import UnlearnConfig

ALIASES = [("GradAscent", "ga"), ("GradDiff", "graddiff"), ("NPO", "npo"),
           ("SimNPO", "simnpo"), ("RMU", "rmu"), ("DPO", "idkdpo")]


@pytest.mark.parametrize("name, canonical", ALIASES)
def test_openunlearning_names_map_to_ours(name, canonical):
    assert OPENUNLEARNING_NAMES[name] == canonical
    for spelling in (name, name.lower(), name.upper(), f" {name} "):
        assert canonical_method(spelling) == canonical
        assert LossConfig(spelling).method == canonical
        assert asdict(UnlearnConfig(method=spelling))["method"] == canonical
    # the method's defaults follow the canonical name (SimNPO's beta 4.5, RMU's alpha 1200)
    for key in ("beta", "gamma", "alpha", "retain_loss"):
        assert getattr(LossConfig(name), key) == getattr(LossConfig(canonical), key)


def test_our_names_in_any_case_and_unknown_names_list_both_spellings():
    for name in METHODS:
        assert canonical_method(name.upper()) == name
    with pytest.raises(ValueError, match="method must be one of") as err:
        UnlearnConfig(method="GradAscnt")
    message = str(err.value)
    assert "'ga'" in message and "'GradAscent'" in message and "'DPO'" in message
    with pytest.raises(TypeError, match="method must be a str"):
        LossConfig(3)


def test_experiment_config_stores_canonical_names():
    from trustfast.experiments.llm import TINY_OVERRIDES, LLMUnlearnConfig

    cfg = LLMUnlearnConfig(methods=["GradAscent", "NPO", "simnpo"],
                           overrides={"RMU": {"epochs": 2}})
    assert cfg.methods == ["ga", "npo", "simnpo"]
    # over the tiny model's RMU constants (a model folder gets only the user's)
    assert cfg.overrides == {"rmu": {**TINY_OVERRIDES["rmu"], "epochs": 2}}
    assert cfg.method_config("npo").method == "npo"
    with pytest.raises(ValueError, match="methods must be one of"):
        LLMUnlearnConfig(methods=["nope"])
    with pytest.raises(ValueError, match="overrides must be one of"):
        LLMUnlearnConfig(overrides={"nope": {}})
    with pytest.raises(ValueError, match="unlearn.method must be left out"):
        LLMUnlearnConfig(unlearn={"method": "SimNPO"})
    with pytest.raises(ValueError, match=r"unlearn\.grad_accum_steps must be >= 1"):
        LLMUnlearnConfig(unlearn={"grad_accum_steps": 0})
