"""Image watermarking with HiDDeN (Zhu et al., "HiDDeN: Hiding Data With Deep Networks", ECCV
2018): an encoder hides a message of bits in an image (NCHW, float in [0, 1]), differentiable
noise layers (dropout, cropout, crop, resize, blur, JPEG-Mask, real JPEG with a straight-through
gradient) stand for what happens to the image, and a decoder reads the bits back.

    import torch
    import trustfast.watermark as wm
    covers, bits = torch.rand(64, 3, 32, 32), torch.randint(0, 2, (64, 30)).float()
    model, history = wm.train_watermark(covers, wm.WatermarkTrainConfig(epochs=2))
    print(wm.bit_accuracy(model.decode(model.embed(covers, bits)), bits))

See `train_watermark` for the loss and training schedule, `make_noise` for the noise specs.
"""

from trustfast.watermark.metrics import bit_accuracy, psnr, ssim
from trustfast.watermark.models import (
    Decoder,
    Discriminator,
    Encoder,
    HiddenConfig,
    WatermarkModel,
)
from trustfast.watermark.noise import (
    Combined,
    Crop,
    Cropout,
    Dropout,
    GaussianBlur,
    Identity,
    JpegMask,
    NoiseLayer,
    RealJpeg,
    Resize,
    make_noise,
)
from trustfast.watermark.train import WatermarkTrainConfig, train_watermark

__all__ = [
    "Combined", "Crop", "Cropout", "Decoder", "Discriminator", "Dropout", "Encoder",
    "GaussianBlur", "HiddenConfig", "Identity", "JpegMask", "NoiseLayer", "RealJpeg", "Resize",
    "WatermarkModel", "WatermarkTrainConfig", "bit_accuracy", "make_noise", "psnr", "ssim",
    "train_watermark",
]
