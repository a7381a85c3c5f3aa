"""Helper of test_train_ddp.py: train the tiny label UNet a few steps (global batch 8) and, on
rank 0, write the loss curve as JSON to argv[1]. Run alone (one process) or under
`python -m torch.distributed.run --nproc_per_node 2` (gloo on the CPU)."""

import faulthandler
import json
import os
import sys

import torch

from trustfast.diffusion.models import label_unet
from trustfast.diffusion.train import DiffusionTrainConfig, train_diffusion

STEPS = 4


def dataset():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, 16, 16, generator=gen)
    return [(images[i], i % 2) for i in range(16)]


def main(path: str) -> None:
    # A hung collective prints every thread's stack and exits instead of waiting forever.
    faulthandler.dump_traceback_later(90, exit=True)
    torch.set_num_threads(1)
    model = label_unet(2, sample_size=16, seed=0)
    config = DiffusionTrainConfig(max_steps=STEPS, batch_size=8, lr=1e-3, label_dropout=0.5,
                                  ema_decay=0.0)
    result = train_diffusion(model, dataset(), config, progress=False)
    if int(os.environ.get("RANK", "0")) == 0:
        weights = {k: float(v.double().sum()) for k, v in result.model.state_dict().items()}
        with open(path, "w") as f:
            json.dump({"losses": result.losses, "weights": weights,
                       "world": int(os.environ.get("WORLD_SIZE", "1"))}, f)


if __name__ == "__main__":
    main(sys.argv[1])
