"""train_diffusion under torchrun: 2 CPU processes (gloo) at global batch 8 follow the loss
curve of one process at batch 8 (the draws of a step are seeded by (seed, step) for the whole
global batch, and each rank slices its share)."""

import json
import os
import socket
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "ddp_train_script.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], out: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, *args, SCRIPT, out], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    one = run([], str(tmp_path / "one.json"), env)
    port = free_port()
    two = run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(port)], str(tmp_path / "two.json"),
              {**env, "MASTER_PORT": str(port)})
    assert one["world"] == 1 and two["world"] == 2
    assert len(one["losses"]) == len(two["losses"]) == 4
    for a, b in zip(one["losses"], two["losses"]):
        assert b == pytest.approx(a, rel=1e-5)
    assert one["losses"][-1] < one["losses"][0]
    for k, v in one["weights"].items():  # sums of each weight tensor after the 4 steps
        assert two["weights"][k] == pytest.approx(v, rel=1e-3, abs=1e-4), k
