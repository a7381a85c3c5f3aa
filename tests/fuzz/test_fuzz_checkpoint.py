"""Every checkpoint loader refuses a truncated, garbage or missing file with a CheckpointError
naming it (issue 17; T3 of DESIGN.md), and tied weights survive a save and a load.

Loaders: trustfast.checkpoint.load_checkpoint / load_tensors / load_json,
trustfast.llm.checkpointing.load_unlearn_state / safe_torch_load (DeepSpeed's files) /
latest_tag, trustfast.config.load_config_file."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from trustfast.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_json,
    load_tensors,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
    save_checkpoint,
    save_json,
)
from trustfast.config import ConfigError, load_config_file

FUZZ = settings(max_examples=25, deadline=None)


class Tied(nn.Module):
    """Input and output embeddings that are one Parameter (tie_word_embeddings)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(7, 3)
        self.head = nn.Linear(3, 7, bias=False)
        self.head.weight = self.embed.weight
        self.norm = nn.LayerNorm(3)


def _saved(folder, seed: int = 0) -> tuple[str, str]:
    model = Tied(seed)
    save_checkpoint(str(folder), "ckpt", model.state_dict(), {"epoch": 3, "loss": 0.5})
    return str(folder / "ckpt.safetensors"), str(folder / "ckpt.json")


def test_tied_weights_save_once_and_load_under_both_names(tmp_path):
    weights, _ = _saved(tmp_path)
    tensors, state = load_checkpoint(str(tmp_path), "ckpt")
    assert state == {"epoch": 3, "loss": 0.5}
    assert set(tensors) == set(Tied().state_dict())
    assert tensors["head.weight"] is tensors["embed.weight"]
    fresh = Tied(seed=1)
    fresh.load_state_dict(tensors)
    assert fresh.head.weight is fresh.embed.weight  # still one Parameter
    assert torch.equal(fresh.head.weight, Tied(0).embed.weight)
    # the tied weight is stored once, its second name is an alias in the metadata
    from safetensors import safe_open

    with safe_open(weights, "pt") as f:
        assert set(f.keys()) == {"embed.weight", "norm.weight", "norm.bias"}


def test_overlapping_views_are_saved_as_copies(tmp_path):
    base = torch.arange(12.0)
    tensors = {"all": base, "head": base[:4], "view": base.view(3, 4), "again": base}
    save_checkpoint(str(tmp_path), "views", tensors, {})
    got, _ = load_checkpoint(str(tmp_path), "views")
    for k, v in tensors.items():
        assert torch.equal(got[k], v), k
    assert got["again"] is got["all"] and got["head"] is not got["all"]


def test_optimizer_state_round_trips_and_a_missing_tensor_names_the_file(tmp_path):
    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.head(model.embed(torch.tensor([1, 2]))).sum().backward()
    opt.step()
    tensors = dict(model.state_dict())
    saved = optimizer_to_checkpoint(opt, tensors)
    save_checkpoint(str(tmp_path), "run", tensors, {"optimizer": saved})
    tensors, state = load_checkpoint(str(tmp_path), "run")
    fresh = torch.optim.AdamW(Tied().parameters(), lr=0.1)
    optimizer_from_checkpoint(fresh, state["optimizer"], tensors)
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"],
                       opt.state_dict()["state"][0]["exp_avg"])
    del tensors["opt.0.exp_avg"]
    with pytest.raises(CheckpointError, match="run.json is damaged .*opt.0.exp_avg"):
        optimizer_from_checkpoint(fresh, state["optimizer"], tensors,
                                  where=str(tmp_path / "run.json"))


def test_missing_files(tmp_path):
    assert load_checkpoint(str(tmp_path), "none") is None
    weights, meta = _saved(tmp_path)
    os.remove(meta)  # an unfinished save: its tensors are ignored
    assert load_checkpoint(str(tmp_path), "ckpt") is None
    weights, meta = _saved(tmp_path)
    os.remove(weights)
    with pytest.raises(CheckpointError, match="ckpt.safetensors is missing.*delete"):
        load_checkpoint(str(tmp_path), "ckpt")


@FUZZ
@given(cut=st.floats(0.0, 0.999))
def test_a_truncated_safetensors_file_names_the_file(tmp_path_factory, cut):
    folder = tmp_path_factory.mktemp("cut")
    weights, _ = _saved(folder)
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError, match=r"ckpt.safetensors is damaged \(truncated"):
        load_checkpoint(str(folder), "ckpt")


@FUZZ
@given(cut=st.floats(0.0, 0.999))
def test_a_truncated_json_state_names_the_file(tmp_path_factory, cut):
    folder = tmp_path_factory.mktemp("cut")
    _, meta = _saved(folder)
    text = open(meta).read()
    open(meta, "w").write(text[: int(len(text) * cut)])
    with pytest.raises(CheckpointError, match=r"ckpt.json is damaged \(not valid JSON"):
        load_checkpoint(str(folder), "ckpt")


@FUZZ
@given(garbage=st.binary(max_size=300))
def test_garbage_in_every_loader_is_a_checkpoint_error_naming_the_file(tmp_path_factory,
                                                                       garbage):
    folder = tmp_path_factory.mktemp("junk")
    path = folder / "x.safetensors"
    path.write_bytes(garbage)
    with pytest.raises(CheckpointError, match="x.safetensors is damaged"):
        load_tensors(str(path))
    path = folder / "x.json"
    path.write_bytes(garbage)
    try:
        load_json(str(path))  # a few byte strings are valid JSON ("1", "[]")
    except CheckpointError as exc:
        assert "x.json is damaged" in str(exc)
    path = folder / "x.yaml"
    path.write_bytes(garbage)
    try:
        assert isinstance(load_config_file(str(path)), dict)
    except ConfigError as exc:
        assert "x.yaml" in str(exc)


@FUZZ
@given(garbage=st.binary(max_size=300))
def test_garbage_deepspeed_files_are_refused_naming_the_file(tmp_path_factory, garbage):
    from trustfast.llm.checkpointing import safe_torch_load

    path = tmp_path_factory.mktemp("ds") / "mp_rank_00_model_states.pt"
    path.write_bytes(garbage)
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt"):
        safe_torch_load(str(path))


@FUZZ
@given(cut=st.floats(0.0, 0.999))
def test_a_truncated_torch_file_is_damaged_not_unsafe(tmp_path_factory, cut):
    from trustfast.llm.checkpointing import UnsafeCheckpointError, safe_torch_load

    path = tmp_path_factory.mktemp("ds") / "optim_states.pt"
    torch.save({"w": torch.arange(50.0), "step": 3}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError, match="optim_states.pt is damaged") as err:
        safe_torch_load(str(path))
    assert not isinstance(err.value, UnsafeCheckpointError)


@pytest.mark.parametrize("state", [[1, 2], "text", 3])
def test_a_state_that_is_not_a_mapping_names_the_file(tmp_path, state):
    _, meta = _saved(tmp_path)
    json.dump(state, open(meta, "w"))
    with pytest.raises(CheckpointError, match="ckpt.json is damaged .*not a mapping"):
        load_checkpoint(str(tmp_path), "ckpt")


def test_a_damaged_alias_record_names_the_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.ones(2)}, str(tmp_path / "t.safetensors"),
              metadata={"trustfast.aliases": json.dumps({"b": "missing"})})
    with pytest.raises(CheckpointError, match="t.safetensors is damaged .*aliases"):
        load_tensors(str(tmp_path / "t.safetensors"))


@FUZZ
@given(values=st.lists(st.one_of(st.floats(), st.integers(), st.none(), st.text(max_size=3)),
                       max_size=6))
def test_save_json_writes_strict_json(tmp_path_factory, values):
    """NaN and +-Inf become null: a strict parser (no NaN / Infinity literals) reads it."""
    path = tmp_path_factory.mktemp("json") / "results.json"
    save_json(str(path), {"rows": [{"v": v} for v in values], "nested": {"t": tuple(values)}})

    def refuse(literal):
        raise ValueError(f"non-standard JSON literal {literal}")

    data = json.loads(path.read_text(), parse_constant=refuse)
    want = [None if isinstance(v, float) and v != v or v in (float("inf"), float("-inf"))
            else v for v in values]
    assert [r["v"] for r in data["rows"]] == want
    assert data["nested"]["t"] == want
