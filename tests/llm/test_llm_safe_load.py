"""Checkpoints from someone else cannot run code (issue 17): DeepSpeed's checkpoints are read
with torch.load(weights_only=True) and only the DeepSpeed classes its own checkpoints pickle
(`use_safe_loads`); the single-process unlearning checkpoint is safetensors plus JSON, and a
damaged or foreign one is a clear error naming the file, with the model left as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from trustfast.checkpoint import CheckpointError  # noqa: E402
from trustfast.llm.checkpointing import (  # noqa: E402
    UNLEARN_CHECKPOINT,
    UnsafeCheckpointError,
    latest_tag,
    load_unlearn_state,
    safe_torch_load,
    save_unlearn_state,
)
from trustfast.llm.train import UnlearnConfig  # noqa: E402


class _Payload:
    """A pickle that, when unpickled with weights_only=False, creates `marker` (os.system-free:
    it calls builtins.open, which is enough to show that code of the file's choosing ran)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious(path, marker) -> None:
    torch.save({"module": _Payload(str(marker)), "epoch": 1}, str(path))


def test_safe_torch_load_refuses_a_malicious_pickle_and_runs_none_of_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "mp_rank_00_model_states.pt"
    _malicious(path, marker)
    with pytest.raises(UnsafeCheckpointError, match="mp_rank_00_model_states.pt: refusing"):
        safe_torch_load(str(path))
    assert not marker.exists()
    # the control: an unsafe load of the same file does run its code
    torch.load(str(path), weights_only=False)
    assert marker.exists()


def test_safe_torch_load_reads_deepspeed_state_and_names_damaged_files(tmp_path):
    deepspeed = pytest.importorskip("deepspeed")  # noqa: F841
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    from trustfast.llm.checkpointing import deepspeed_safe_globals

    state = {"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients,
             "fragment": fragment_address(numel=4, start=0), "w": torch.arange(4.0)}
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save(state, str(path))
    loaded = safe_torch_load(str(path), safe_globals=deepspeed_safe_globals())
    assert loaded["zero_stage"] is ZeroStageEnum.gradients
    assert loaded["fragment"] == fragment_address(numel=4, start=0)
    assert torch.equal(loaded["w"], torch.arange(4.0))
    with pytest.raises(UnsafeCheckpointError, match="LossScaler"):  # not admitted by default
        safe_torch_load(str(path))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="optim_states.pt is damaged"):
        safe_torch_load(str(path), safe_globals=deepspeed_safe_globals())


def test_latest_must_name_an_epoch_folder_inside_the_checkpoint(tmp_path):
    assert latest_tag(str(tmp_path)) is None
    (tmp_path / "latest").write_text("../../elsewhere")
    with pytest.raises(CheckpointError, match="latest is damaged.*'epoch3'"):
        latest_tag(str(tmp_path))
    (tmp_path / "latest").write_text("epoch2")
    with pytest.raises(CheckpointError, match="epoch2 is missing"):
        latest_tag(str(tmp_path))
    (tmp_path / "epoch2").mkdir()
    assert latest_tag(str(tmp_path)) == "epoch2"


def test_use_safe_loads_swaps_only_the_load_of_the_default_engine():
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    from trustfast.llm.checkpointing import use_safe_loads

    class Engine:  # the one attribute use_safe_loads touches
        checkpoint_engine = TorchCheckpointEngine(None)

    engine = Engine()
    use_safe_loads(engine)
    assert isinstance(engine.checkpoint_engine, TorchCheckpointEngine)
    assert type(engine.checkpoint_engine).load is not TorchCheckpointEngine.load
    assert type(engine.checkpoint_engine).save is TorchCheckpointEngine.save
    engine.checkpoint_engine = object()
    with pytest.raises(ValueError, match="only the default TorchCheckpointEngine"):
        use_safe_loads(engine)


def _tied_model():
    from trustfast.llm.models import tiny_llama

    model = tiny_llama(40, 16, seed=0, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def _checkpointed(tmp_path):
    model = _tied_model()
    cfg = UnlearnConfig(epochs=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    save_unlearn_state(str(tmp_path), model, opt, cfg, 1, [{"loss": 1.0}])
    return model, opt, cfg


def test_unlearn_checkpoint_of_a_tied_model_round_trips(tmp_path):
    model, opt, cfg = _checkpointed(tmp_path)
    fresh = _tied_model()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    epoch, history = load_unlearn_state(str(tmp_path), fresh, fresh_opt, cfg)
    assert (epoch, history) == (1, [{"loss": 1.0}])
    for (k, v), w in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(v, w), k
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight  # still tied


@pytest.mark.parametrize("damage", ["truncate_tensors", "truncate_json", "drop_key",
                                    "drop_tensors", "other_model"])
def test_damaged_unlearn_checkpoint_names_the_file_and_leaves_the_model(tmp_path, damage):
    _checkpointed(tmp_path)
    stem = tmp_path / UNLEARN_CHECKPOINT
    weights, meta = f"{stem}.safetensors", f"{stem}.json"
    if damage == "truncate_tensors":
        data = open(weights, "rb").read()
        open(weights, "wb").write(data[: len(data) // 2])
        match = "unlearn.safetensors is damaged"
    elif damage == "truncate_json":
        text = open(meta).read()
        open(meta, "w").write(text[: len(text) // 2])
        match = "unlearn.json is damaged"
    elif damage == "drop_key":
        state = json.load(open(meta))
        del state["optimizer"]
        json.dump(state, open(meta, "w"))
        match = "unlearn.json is damaged .*'optimizer'"
    elif damage == "drop_tensors":
        os.remove(weights)
        match = "unlearn.safetensors is missing"
    else:
        match = "does not hold this model's weights"
    if damage == "other_model":
        from trustfast.llm.models import tiny_llama

        fresh = tiny_llama(41, 16, seed=1, tie_word_embeddings=True)
    else:
        fresh = _tied_model()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    with pytest.raises(CheckpointError, match=match):
        load_unlearn_state(str(tmp_path), fresh, opt, UnlearnConfig(epochs=2))
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, before[k]), k  # nothing was loaded into the model


def _run(config: str, out, env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "trustfast.llm.train", "--config", config, "--out", str(out),
           "--resume"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_resume_of_a_deepspeed_folder_with_a_malicious_pickle_runs_none_of_it(tmp_path):
    """`python -m trustfast.llm.train --resume` (one process, ZeRO-2) on a checkpoint folder
    whose model-states file was replaced by a pickle that would create a marker file."""
    pytest.importorskip("deepspeed")
    import yaml

    config = tmp_path / "run.yaml"
    yaml.safe_dump({"n_people": 10, "forget_share": 0.2, "hidden_size": 16,
                    "finetune_epochs": 1, "retain_eval": 2, "max_new_tokens": 2,
                    "methods": ["npo"], "device": "cpu", "save_models": False,
                    "unlearn": {"epochs": 1, "batch_size": 2}, "zero": {"stage": 2}},
                   open(config, "w"))
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONWARNINGS="ignore",
               DS_ACCELERATOR="cpu")
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.getcwd(), ".torch_extensions"))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    out = tmp_path / "out"
    first = _run(str(config), out, env)
    assert first.returncode == 0, first.stderr[-4000:]
    folder = out / "checkpoints" / "npo" / "epoch1"
    target = folder / "mp_rank_00_model_states.pt"
    assert target.exists(), sorted(os.listdir(folder))
    marker = tmp_path / "pwned"
    _malicious(target, marker)
    for name in ("rows.json", "run.json", "results.json"):  # make the resume load it
        os.remove(out / name)
    shutil.rmtree(out / "models", ignore_errors=True)
    second = _run(str(config), out, env)
    assert second.returncode != 0
    assert not marker.exists()
    assert "mp_rank_00_model_states.pt: refusing to load it" in second.stderr, \
        second.stderr[-4000:]
