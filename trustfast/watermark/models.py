"""HiDDeN's encoder, decoder and discriminator (Zhu et al., "HiDDeN: Hiding Data With Deep
Networks", ECCV 2018), for images in [0, 1], NCHW, and messages of bits in {0, 1}, and
`WatermarkModel`, the encoder/decoder pair behind a validating API."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trustfast import checks
from trustfast.checkpoint import load_checkpoint, save_checkpoint
from trustfast.config import Config
from trustfast.utils import eval_mode

_CHECKPOINT_NAME = "watermark_model"
_BIT_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
               torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class HiddenConfig(Config):
    """Network sizes; the defaults are HiDDeN's (30 bits, 64 channels, 4/7/3 blocks) except
    `message_tile`.

    message_tile = P > 0 expands the message spatially through a learned Linear(L, L * P * P)
    into an L x P x P tile repeated over the image from its top-left corner, and the decoder
    reads the image's high frequencies (x - its 3x3 box mean) through a conv of kernel and
    stride P aligned with that tile. The encoder thus has a position-dependent carrier to
    modulate even on flat image regions, which a spatially constant message cannot give a
    translation-equivariant conv stack: measured on colored digits (32 px, one CPU thread,
    ~50 s of training), 0.99 held-out bit accuracy at 32 dB where HiDDeN's layout reached 0.62.
    The price is alignment: decoding needs the tile grid where the encoder put it, so noise that
    shifts or rescales the image (crop, resize) is read only by message_tile = 0, HiDDeN's
    original layout (bits repeated over H x W, a decoder of 3x3 conv blocks).
    """

    message_bits: int = 30  # L, bits carried per image
    channels: int = 64  # width of every conv-BN-ReLU block
    encoder_blocks: int = 4  # conv-BN-ReLU blocks on the cover before the message joins
    decoder_blocks: int = 7  # conv-BN-ReLU blocks before the conv to L channels
    image_channels: int = 3  # 3 for RGB, 1 for gray
    discriminator_blocks: int = 3  # conv-BN-ReLU blocks of the adversary
    use_discriminator: bool = False  # train an adversary against the encoder (HiDDeN's GAN term)
    residual_scale: float = 1.0  # encoded = clamp(cover + residual_scale * encoder output, 0, 1)
    message_tile: int = 8  # P: the message as a learned P x P tile; 0: HiDDeN's constant map
    decoder_channels: int | None = None  # decoder width (None: channels); >= 2 L reads L bits

    def check(self) -> None:
        for name in ("message_bits", "channels", "encoder_blocks", "decoder_blocks",
                     "image_channels", "discriminator_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        tile = self.message_tile
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 0:
            raise ValueError(f"message_tile must be an int >= 0, got {tile!r}")
        width = self.decoder_channels
        if width is not None and (isinstance(width, bool) or not isinstance(width, int)
                                  or width < 1):
            raise ValueError(f"decoder_channels must be None or an int >= 1, got {width!r}")
        if not isinstance(self.use_discriminator, bool):
            raise ValueError(f"use_discriminator must be a bool, got {self.use_discriminator!r}")
        scale = self.residual_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                or not 0 < scale < math.inf:
            raise ValueError(f"residual_scale must be a finite number > 0, got {scale!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def decoder_width(self) -> int:
        return self.channels if self.decoder_channels is None else self.decoder_channels


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def _stack(c_in: int, channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[_conv_bn_relu(c_in if i == 0 else channels, channels)
                           for i in range(blocks)])


class Encoder(nn.Module):
    """HiDDeN's encoder: conv-BN-ReLU features of the cover, concatenated with the message map
    (bits mapped to +-1, then repeated over H x W, or with message_tile = P expanded by a learned
    linear map to an L x P x P tile repeated over H x W) and the cover itself, one more
    conv-BN-ReLU, then a 1x1 conv to the image channels.

    Unlike HiDDeN, which outputs the encoded image directly, the 1x1 conv predicts a residual:
    encoded = clamp(cover + residual_scale * residual, 0, 1), and that conv starts at zero, so
    the encoded image starts as the cover (infinite PSNR) and training only has to learn the
    watermark, not to reproduce the cover first.
    """

    def __init__(self, cfg: HiddenConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.features = _stack(cfg.image_channels, cfg.channels, cfg.encoder_blocks)
        self.after_concat = _conv_bn_relu(cfg.channels + cfg.message_bits + cfg.image_channels,
                                          cfg.channels)
        self.to_image = nn.Conv2d(cfg.channels, cfg.image_channels, 1)
        nn.init.zeros_(self.to_image.weight)
        nn.init.zeros_(self.to_image.bias)
        tile = cfg.message_tile
        self.expand = (nn.Linear(cfg.message_bits, cfg.message_bits * tile * tile) if tile
                       else None)

    def message_map(self, bits: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(N, L, h, w): the message expanded over the image."""
        n = bits.shape[0]
        signs = 2.0 * bits - 1.0
        if self.expand is None:
            return signs.view(n, -1, 1, 1).expand(-1, -1, h, w)
        p = self.cfg.message_tile
        tile = self.expand(signs).view(n, -1, p, p)
        return tile.repeat(1, 1, -(-h // p), -(-w // p))[:, :, :h, :w]

    def residual(self, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """The encoder's raw output: what is added (times residual_scale) to the cover."""
        _, _, h, w = images.shape
        message = self.message_map(bits.to(images.dtype), h, w)
        x = torch.cat([self.features(images), message, images], dim=1)
        return self.to_image(self.after_concat(x))

    def forward(self, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        out = images + self.cfg.residual_scale * self.residual(images, bits)
        return out.clamp(0.0, 1.0)


class HighPass(nn.Module):
    """x minus its 3x3 box mean (the border mean over the pixels inside the image)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class Decoder(nn.Module):
    """HiDDeN's decoder: conv-BN-ReLU blocks, a conv-BN-ReLU to L channels, global average
    pooling and Linear(L, L) to one logit per bit (bit = logit > 0). With message_tile = P the
    first block is a high-pass filter and a conv of kernel and stride P (one step per tile), and
    the other decoder_blocks - 1 blocks run on that grid. Any image size works (at least P)."""

    def __init__(self, cfg: HiddenConfig):
        super().__init__()
        cfg.validate()
        width, p = cfg.decoder_width, cfg.message_tile
        if p:
            stem = nn.Sequential(HighPass(), nn.Conv2d(cfg.image_channels, width, p, stride=p),
                                 nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                 *_stack(width, width, cfg.decoder_blocks - 1))
        else:
            stem = _stack(cfg.image_channels, width, cfg.decoder_blocks)
        self.features = nn.Sequential(
            stem,
            _conv_bn_relu(width, cfg.message_bits),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.linear = nn.Linear(cfg.message_bits, cfg.message_bits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(images))


class Discriminator(nn.Module):
    """HiDDeN's adversary: conv-BN-ReLU blocks, global average pooling and Linear(C, 1): one
    logit per image, > 0 for 'encoded', < 0 for 'cover'."""

    def __init__(self, cfg: HiddenConfig):
        super().__init__()
        cfg.validate()
        self.features = nn.Sequential(
            _stack(cfg.image_channels, cfg.channels, cfg.discriminator_blocks),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.linear = nn.Linear(cfg.channels, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(images)).squeeze(1)



def check_images(images: torch.Tensor, channels: int, name: str = "images") -> None:
    """A non-empty float NCHW batch in [0, 1] (no NaN) with `channels` channels, else a
    TypeError (not a float tensor) or ValueError (shape, channels, values) naming `name`."""
    checks.check_images(name, images, channels=channels)
    if images.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one image, got shape {tuple(images.shape)}")


def check_bits(bits: torch.Tensor, n: int, message_bits: int, name: str = "bits") -> None:
    """An (n, message_bits) bool / integer / float tensor of 0s and 1s, else a TypeError (not
    such a tensor) or ValueError (shape, other values, NaN) naming `name`."""
    checks.check_tensor(name, bits, dtypes=_BIT_DTYPES, shape=(n, message_bits),
                        hint="(images, HiddenConfig.message_bits)")
    checks.check_tensor(name, bits, binary=True)


class WatermarkModel(nn.Module):
    """HiDDeN (Zhu et al., ECCV 2018): `embed(images, bits)` hides `message_bits` bits in each
    image, `decode(images)` reads them back (bit = logit > 0). Both run the networks in eval
    mode (BatchNorm running statistics) and keep autograd on, so attacks can differentiate
    through them; wrap calls in `torch.no_grad()` when no gradient is needed."""

    def __init__(self, config: HiddenConfig | None = None):
        super().__init__()
        self.config = (config or HiddenConfig()).validate()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.discriminator = Discriminator(self.config) if self.config.use_discriminator else None

    def forward(self, images: torch.Tensor, bits: torch.Tensor) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
        """(encoded images, decoder logits on them), in the modules' current mode."""
        encoded = self.encoder(images, bits)
        return encoded, self.decoder(encoded)

    def embed(self, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """Watermarked images (N, C, H, W) in [0, 1] carrying `bits` (N, message_bits) of 0/1."""
        check_images(images, self.config.image_channels)
        check_bits(bits, images.shape[0], self.config.message_bits)
        with eval_mode(self):
            return self.encoder(images, bits)

    def decode_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, message_bits) logits, > 0 for a 1 bit; any image size (at least message_tile)."""
        check_images(images, self.config.image_channels)
        tile = self.config.message_tile
        if min(images.shape[-2:]) < tile:
            raise ValueError(f"images must be at least message_tile = {tile} pixels on each "
                             f"side, got shape {tuple(images.shape)}")
        with eval_mode(self):
            return self.decoder(images)

    def decode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, message_bits) decoded bits as 0.0 / 1.0 in the images' dtype."""
        return (self.decode_logits(images) > 0).to(images.dtype)

    def save(self, path: str) -> None:
        """Write the weights (safetensors) and the HiddenConfig (JSON) into the folder `path`."""
        save_checkpoint(path, _CHECKPOINT_NAME, self.state_dict(),
                        {"hidden_config": self.config.to_dict()})

    @classmethod
    def load(cls, path: str, map_location: str | torch.device = "cpu") -> WatermarkModel:
        """The model saved by `save(path)`."""
        done = load_checkpoint(path, _CHECKPOINT_NAME)
        if done is None:
            raise ValueError(f"path {path!r} holds no saved WatermarkModel")
        tensors, state = done
        model = cls(HiddenConfig(**state["hidden_config"]))
        model.load_state_dict(tensors)
        return model.to(map_location)
