"""Diffusion models on diffusers: trustfast attention (`FastAttnProcessor`,
`enable_fast_attention`), conditional UNets from config or a local folder (`models`), DDPM
training (`train`), seeded sampling (`sampling`), FairSkin's resampling (`fairskin`), backdoors
by data poisoning with the diffusion classifier (`backdoor`) and a tiny UNet sampler for tests
(`tiny`). diffusers is imported lazily, on first use."""

from trustfast.diffusion.attention import (
    FastAttnProcessor,
    Replacement,
    disable_fast_attention,
    enable_fast_attention,
)
from trustfast.diffusion.backdoor import (
    DiffusionClassifier,
    TemplateDetector,
    audit_generations,
    poison_for_diffusion,
    train_trigger_detector,
    trigger_ratio,
)
from trustfast.diffusion.models import label_unet, load_unet, null_label, token_unet
from trustfast.diffusion.sampling import generate
from trustfast.diffusion.train import DiffusionTrainConfig, TrainResult, train_diffusion

__all__ = [
    "DiffusionClassifier", "DiffusionTrainConfig", "FastAttnProcessor", "Replacement",
    "TemplateDetector", "TrainResult", "audit_generations", "disable_fast_attention",
    "enable_fast_attention", "generate", "label_unet", "load_unet", "null_label",
    "poison_for_diffusion", "token_unet", "train_diffusion", "train_trigger_detector",
    "trigger_ratio",
]
