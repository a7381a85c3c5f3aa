"""Diffusion models on diffusers: trustfast attention (`FastAttnProcessor`,
`enable_fast_attention`), conditional UNets from config or a local folder (`models`), DDPM
training (`train`), seeded sampling (`sampling`), FairSkin's resampling (`fairskin`) and a tiny
UNet sampler for tests (`tiny`). diffusers is imported lazily, on first use."""

from trustfast.diffusion.attention import (
    FastAttnProcessor,
    Replacement,
    disable_fast_attention,
    enable_fast_attention,
)
from trustfast.diffusion.models import label_unet, load_unet, null_label, token_unet
from trustfast.diffusion.sampling import generate
from trustfast.diffusion.train import DiffusionTrainConfig, TrainResult, train_diffusion

__all__ = [
    "DiffusionTrainConfig", "FastAttnProcessor", "Replacement", "TrainResult",
    "disable_fast_attention", "enable_fast_attention", "generate", "label_unet", "load_unet",
    "null_label", "token_unet", "train_diffusion",
]
