"""HiDDeN watermarking (trustfast.watermark): noise layers and metrics against explicit float64
computations and known answers, input validation, checkpoint/resume exactness, and the paper's
qualitative claim at small scale (a no-noise model hides 30 bits at PSNR >= 30 dB)."""

import dataclasses
import io
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import trustfast.watermark as wm
from trustfast.watermark.noise import (
    block_dct,
    block_idct,
    dct_matrix,
    gaussian_kernel1d,
    jpeg_quantization_tables,
    jpeg_roundtrip,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair(n=2, c=3, h=16, w=16, seed=0, dtype=torch.float64):
    g = _gen(seed)
    return (torch.rand(n, c, h, w, generator=g, dtype=dtype),
            torch.rand(n, c, h, w, generator=g, dtype=dtype))


# ---- DCT / JPEG -------------------------------------------------------------------------------

def _explicit_dct2(block: np.ndarray) -> np.ndarray:
    """The orthonormal 2-D DCT-II written out as its double sum, in float64."""
    n = block.shape[0]
    out = np.zeros((n, n))
    for k in range(n):
        for m in range(n):
            ak = math.sqrt((1 if k == 0 else 2) / n)
            am = math.sqrt((1 if m == 0 else 2) / n)
            total = 0.0
            for i in range(n):
                for j in range(n):
                    total += (block[i, j] * math.cos(math.pi * (2 * i + 1) * k / (2 * n))
                              * math.cos(math.pi * (2 * j + 1) * m / (2 * n)))
            out[k, m] = ak * am * total
    return out


def test_dct_matrix_is_orthonormal_dct2():
    d = dct_matrix(8)
    torch.testing.assert_close(d @ d.T, torch.eye(8, dtype=torch.float64), atol=1e-14, rtol=0)
    x = torch.rand(1, 1, 8, 16, generator=_gen(1), dtype=torch.float64)
    coefficients = block_dct(x)
    assert coefficients.shape == (1, 1, 1, 2, 8, 8)
    for bi in range(1):
        for bj in range(2):
            block = x[0, 0, 8 * bi:8 * bi + 8, 8 * bj:8 * bj + 8].numpy()
            np.testing.assert_allclose(coefficients[0, 0, bi, bj].numpy(),
                                       _explicit_dct2(block), atol=1e-12, rtol=0)
    torch.testing.assert_close(block_idct(coefficients), x, atol=1e-13, rtol=0)


def test_ycbcr_roundtrip_and_known_values():
    x = torch.rand(2, 3, 5, 7, generator=_gen(2), dtype=torch.float64)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, atol=1e-13, rtol=0)
    gray = torch.full((1, 3, 2, 2), 0.25, dtype=torch.float64)  # gray: Y = value, Cb = Cr = 0
    ycc = rgb_to_ycbcr(gray)
    torch.testing.assert_close(ycc[:, 0], gray[:, 0], atol=1e-6, rtol=0)
    assert ycc[:, 1:].abs().max() < 1e-6


def _low_frequency_image(n, h, w, seed):
    """An RGB image whose every 8x8 block of Y holds only the 5x5, of Cb/Cr only the 3x3 lowest
    DCT frequencies."""
    g = _gen(seed)
    coefficients = torch.zeros(n, 3, h // 8, w // 8, 8, 8, dtype=torch.float64)
    coefficients[:, 0, :, :, :5, :5] = torch.randn(n, h // 8, w // 8, 5, 5, generator=g,
                                                   dtype=torch.float64)
    coefficients[:, 1:, :, :, :3, :3] = torch.randn(n, 2, h // 8, w // 8, 3, 3, generator=g,
                                                    dtype=torch.float64)
    return ycbcr_to_rgb(block_idct(coefficients * 0.05)) + 0.5


def test_jpeg_mask_keeps_low_frequency_images_and_removes_high_frequencies():
    mask = wm.JpegMask()
    x = _low_frequency_image(2, 16, 24, seed=3)
    torch.testing.assert_close(mask(x, x), x, atol=1e-12, rtol=0)
    # one high frequency in Y (5, 5) and one in Cb (3, 0): both are zeroed
    coefficients = torch.zeros(1, 3, 2, 2, 8, 8, dtype=torch.float64)
    coefficients[0, 0, 1, 0, 5, 5] = 1.0
    coefficients[0, 1, 0, 1, 3, 0] = 1.0
    high = ycbcr_to_rgb(block_idct(coefficients))
    assert high.abs().max() > 0.05
    assert mask(high, high).abs().max() < 1e-12
    # linear and idempotent, any size (padded to multiples of 8 and cropped back)
    y, _ = _pair(2, 3, 13, 21, seed=4)
    once = mask(y, y)
    assert once.shape == y.shape
    torch.testing.assert_close(mask(once, once)[..., :8, :16], once[..., :8, :16], atol=1e-12,
                               rtol=0)
    part = x[..., :13, :21]
    torch.testing.assert_close(mask(2 * y + part, y), 2 * once + mask(part, part), atol=1e-12,
                               rtol=0)
    # differentiable: autograd's gradient matches finite differences
    z = torch.rand(1, 3, 8, 8, generator=_gen(5), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: mask(t, t), (z,), fast_mode=True)


def test_quantization_tables_known_answers():
    q50 = jpeg_quantization_tables(50)
    assert q50[0, 0, 0] == 16 and q50[0, 7, 7] == 99 and q50[1, 0, 0] == 17 and q50[1, 7, 7] == 99
    assert (jpeg_quantization_tables(100) == 1).all()
    torch.testing.assert_close(jpeg_quantization_tables(25), (2 * q50).clamp(max=255))
    q75 = jpeg_quantization_tables(75)  # scale 50: floor((16 * 50 + 50) / 100) = 8
    assert q75[0, 0, 0] == 8 and q75[0, 0, 1] == 6
    for bad in (0, 101, 50.0, True):
        with pytest.raises(ValueError, match="quality"):
            jpeg_quantization_tables(bad)


def test_real_jpeg_matches_pil_and_has_identity_gradient():
    image_module = pytest.importorskip("PIL.Image")
    g = _gen(5)
    x = (F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(32, 40), mode="bilinear")
         * 0.8 + 0.2 * torch.rand(1, 3, 32, 40, generator=g))
    x = torch.round(x * 255) / 255
    for quality in (30, 50, 90):
        arr = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        image_module.fromarray(arr).save(buf, "JPEG", quality=quality, subsampling=0)
        buf.seek(0)
        pil = torch.tensor(np.array(image_module.open(buf))).permute(2, 0, 1)[None] / 255.0
        ours = jpeg_roundtrip(x, quality)
        err_ours, err_pil = (ours - x).abs().mean(), (pil - x).abs().mean()
        # libjpeg's integer DCT and colour conversion flip a few roundings: the two decodes
        # differ by under one level on average, their errors from the original by ~1%
        assert (ours - pil).abs().mean() < 1.0 / 255, quality
        assert abs(err_ours - err_pil) < 0.03 * err_pil, (quality, err_ours, err_pil)
        assert torch.equal(ours, torch.round(ours * 255) / 255)  # 8-bit output
    layer = wm.RealJpeg(50)
    z = x.clone().requires_grad_(True)
    out = layer(z, x)
    torch.testing.assert_close(out.detach(), jpeg_roundtrip(x, 50), atol=1e-6, rtol=0)
    weights = torch.randn(x.shape, generator=g)
    (out * weights).sum().backward()
    assert torch.equal(z.grad, weights)  # straight-through: exactly the identity


# ---- pixel-domain noise layers -----------------------------------------------------------------

def test_identity_dropout_cropout():
    encoded, cover = _pair(3, 3, 20, 24)
    assert wm.Identity()(encoded, cover) is encoded
    assert torch.equal(wm.Dropout(0.0)(encoded, cover, _gen()), cover)
    assert torch.equal(wm.Dropout(1.0)(encoded, cover, _gen()), encoded)
    big_e, big_c = torch.ones(4, 3, 64, 64), torch.zeros(4, 3, 64, 64)
    out = wm.Dropout(0.3)(big_e, big_c, _gen(1))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])  # per pixel
    assert abs(float(out.mean()) - 0.3) < 0.02
    assert torch.equal(out, wm.Dropout(0.3)(big_e, big_c, _gen(1)))  # seeded
    assert not torch.equal(out, wm.Dropout(0.3)(big_e, big_c, _gen(2)))

    out = wm.Cropout(0.25)(big_e, big_c, _gen(3))  # 32 x 32 window of ones per image
    for i in range(4):
        kept = out[i, 0].nonzero()
        assert len(kept) == 32 * 32
        rows, cols = kept[:, 0], kept[:, 1]
        assert int(rows.max() - rows.min()) == 31 and int(cols.max() - cols.min()) == 31
    assert torch.equal(out[:, 0], out[:, 2])
    torch.testing.assert_close(wm.Cropout(1.0)(encoded, cover, _gen()), encoded)


def test_crop_returns_smaller_window_and_decoder_reads_any_size():
    encoded, cover = _pair(3, 3, 32, 32)
    out = wm.Crop(0.25)(encoded, cover, _gen(4))
    assert out.shape == (3, 3, 16, 16)
    for i in range(3):  # each crop is a window of its own encoded image
        windows = encoded[i].unfold(1, 16, 1).unfold(2, 16, 1)  # (C, 17, 17, 16, 16)
        match = (windows == out[i][:, None, None]).flatten(3).all(-1).all(0)
        assert match.any()
    cfg = wm.HiddenConfig(message_bits=7, channels=8, decoder_blocks=2, message_tile=0)
    decoder = wm.Decoder(cfg).eval()  # eval: a 1x1 image is fine for BatchNorm
    for shape in ((3, 3, 16, 16), (2, 3, 9, 23), (1, 3, 1, 1)):
        assert decoder(torch.rand(shape)).shape == (shape[0], 7)
    tiled = wm.WatermarkModel(wm.HiddenConfig(message_bits=7, channels=8, decoder_blocks=2))
    for shape in ((3, 3, 16, 16), (2, 3, 9, 23), (1, 3, 8, 8)):  # at least one 8x8 tile
        assert tiled.decode_logits(torch.rand(shape)).shape == (shape[0], 7)
    with pytest.raises(ValueError, match="message_tile = 8"):
        tiled.decode_logits(torch.rand(1, 3, 7, 30))


def test_tiled_message_map_repeats_its_tile_and_decoder_ignores_flat_offsets():
    torch.manual_seed(0)
    model = wm.WatermarkModel(wm.HiddenConfig(message_bits=5, channels=8, encoder_blocks=1,
                                              decoder_blocks=2, message_tile=4))
    bits = torch.randint(0, 2, (2, 5)).float()
    m = model.encoder.message_map(bits, 10, 13)
    assert m.shape == (2, 5, 10, 13)
    torch.testing.assert_close(m[:, :, 4:8, 4:8], m[:, :, :4, :4], rtol=0, atol=0)
    torch.testing.assert_close(m[:, :, :, 8:12], m[:, :, :, :4], rtol=0, atol=0)
    torch.testing.assert_close(m[:, :, 8:, 12:], m[:, :, :2, :1], rtol=0, atol=0)
    assert not torch.equal(m[0, :, 0, 0], m[0, :, 0, 1])  # position-dependent within a tile
    assert not torch.equal(m[0], m[1]) or torch.equal(bits[0], bits[1])
    # HiDDeN's layout: the +-1 bits, the same at every pixel
    flat = wm.Encoder(wm.HiddenConfig(message_bits=5, channels=8, message_tile=0))
    torch.testing.assert_close(flat.message_map(bits, 3, 4),
                               (2 * bits - 1)[:, :, None, None].expand(2, 5, 3, 4))
    # the tiled decoder reads x - its 3x3 box mean: a flat brightness change is invisible
    x = torch.rand(3, 3, 12, 16, dtype=torch.float64) * 0.8
    decoder = model.decoder.double().eval()
    torch.testing.assert_close(decoder(x + 0.15), decoder(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="message_tile"):
        wm.HiddenConfig(message_tile=-1).validate()
    with pytest.raises(ValueError, match="decoder_channels"):
        wm.HiddenConfig(decoder_channels=0).validate()


def test_resize_and_blur_known_answers():
    encoded, cover = _pair(2, 3, 20, 30)
    assert wm.Resize(0.5)(encoded, cover).shape == (2, 3, 10, 15)
    assert wm.Resize(1.0)(encoded, cover) is encoded
    constant = torch.full((1, 3, 20, 30), 0.3, dtype=torch.float64)
    torch.testing.assert_close(wm.Resize(0.7)(constant, constant),
                               torch.full((1, 3, 14, 21), 0.3, dtype=torch.float64))

    blur = wm.GaussianBlur(1.0)
    assert blur.kernel_size == 7
    torch.testing.assert_close(blur(constant, constant), constant, atol=1e-15, rtol=0)
    k = gaussian_kernel1d(1.0, 7)
    assert abs(float(k.sum()) - 1) < 1e-15
    # against the 2-D Gaussian convolution written out, replicate padding
    x = encoded[:1, :1]
    padded = F.pad(x, (3, 3, 3, 3), mode="replicate")[0, 0]
    weights = torch.exp(-(torch.arange(-3, 4.0, dtype=torch.float64) ** 2) / 2)
    weights2d = torch.outer(weights, weights) / torch.outer(weights, weights).sum()
    expected = torch.empty(20, 30, dtype=torch.float64)
    for i in range(20):
        for j in range(30):
            expected[i, j] = (padded[i:i + 7, j:j + 7] * weights2d).sum()
    torch.testing.assert_close(blur(x, x)[0, 0], expected, atol=1e-14, rtol=0)
    with pytest.raises(ValueError, match="kernel_size"):
        wm.GaussianBlur(1.0, 4)
    with pytest.raises(ValueError, match="sigma"):
        wm.GaussianBlur(0.0)


def test_combined_picks_each_layer_and_is_seeded():
    encoded, cover = torch.ones(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)
    layer = wm.Combined([wm.Identity(), wm.Dropout(0.0)])
    seen = {float(layer(encoded, cover, _gen(s)).mean()) for s in range(20)}
    assert seen == {0.0, 1.0}
    draws = [float(layer(encoded, cover, _gen(7)).mean()) for _ in range(3)]
    assert len(set(draws)) == 1
    with pytest.raises(ValueError, match="layers"):
        wm.Combined([])


def test_make_noise_specs_and_errors():
    cases = {
        "identity": wm.Identity, "dropout(0.3)": wm.Dropout, "cropout(0.3)": wm.Cropout,
        "crop(0.5)": wm.Crop, "resize(0.7)": wm.Resize, "blur(2.0)": wm.GaussianBlur,
        "blur(1.5,5)": wm.GaussianBlur, "jpeg_mask": wm.JpegMask, "jpeg(50)": wm.RealJpeg,
        " Combined( dropout(0.3) + jpeg_mask ) ": wm.Combined,
    }
    for spec, cls in cases.items():
        layer = wm.make_noise(spec)
        assert type(layer) is cls, spec
        assert wm.make_noise(layer.spec).spec == layer.spec  # spec round-trips
    assert wm.make_noise("dropout(0.3)").p == 0.3
    assert wm.make_noise("blur(1.5,5)").kernel_size == 5
    assert wm.make_noise("jpeg(50)").quality == 50
    nested = wm.make_noise("combined(crop(0.5)+combined(jpeg(40)+identity))")
    assert [type(x) for x in nested.layers] == [wm.Crop, wm.Combined]
    for bad in ("nope", "dropout(abc)", "dropout(1.5)", "jpeg(50.5)", "jpeg(0)", "combined()",
                "dropout(0.3", "blur()", "identity(1)", "crop(0)", "combined(dropout(0.3)+x)"):
        with pytest.raises(ValueError, match=r"noise spec"):
            wm.make_noise(bad)


def test_noise_layers_keep_gradients_to_encoded():
    encoded, cover = _pair(2, 3, 16, 16, seed=9)
    for spec in ("identity", "dropout(0.5)", "cropout(0.5)", "crop(0.5)", "resize(0.5)",
                 "blur(1.0)", "jpeg_mask", "jpeg(50)"):
        z = encoded.clone().requires_grad_(True)
        wm.make_noise(spec)(z, cover, _gen()).sum().backward()
        assert z.grad is not None and z.grad.abs().sum() > 0, spec


# ---- metrics -----------------------------------------------------------------------------------

def _explicit_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of 2-D float64 images written out window by window (11x11 Gaussian, sigma 1.5)."""
    x = np.arange(11) - 5.0
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2)
                          / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_against_explicit_computation_and_known_answers():
    a, b = _pair(2, 2, 13, 14, seed=11)
    b = 0.7 * a + 0.3 * b
    per_image = wm.ssim(a, b, reduction="none")
    for i in range(2):
        expected = np.mean([_explicit_ssim(a[i, c].numpy(), b[i, c].numpy()) for c in range(2)])
        assert abs(float(per_image[i]) - expected) < 1e-12
    assert abs(float(wm.ssim(a, b)) - float(per_image.mean())) < 1e-15
    assert abs(float(wm.ssim(a, a)) - 1.0) < 1e-12
    c1, c2 = 0.2, 0.6  # constant images: SSIM = (2 c1 c2 + C1) / (c1^2 + c2^2 + C1)
    flat_a, flat_b = torch.full((1, 3, 11, 11), c1), torch.full((1, 3, 11, 11), c2)
    expected = (2 * c1 * c2 + 1e-4) / (c1 ** 2 + c2 ** 2 + 1e-4)
    assert abs(float(wm.ssim(flat_a, flat_b)) - expected) < 1e-6
    with pytest.raises(ValueError, match="sides >= 11"):
        wm.ssim(torch.rand(1, 3, 10, 20), torch.rand(1, 3, 10, 20))


def test_psnr_and_bit_accuracy_known_answers():
    a = torch.full((3, 3, 8, 8), 0.5, dtype=torch.float64)
    b = a.clone()
    b[0] += 0.01  # MSE 1e-4: 40 dB
    b[1] += 0.1  # MSE 1e-2: 20 dB
    b[2, :, :4] += 0.1  # MSE 5e-3: 10 log10(200) dB
    per_image = wm.psnr(a, b, reduction="none")
    torch.testing.assert_close(per_image, torch.tensor([40.0, 20.0, 10 * math.log10(200)],
                                                       dtype=torch.float64))
    assert abs(float(wm.psnr(a, b)) - float(per_image.mean())) < 1e-12
    assert abs(float(wm.psnr(a * 255, b * 255, data_range=255.0)[()]) - float(per_image.mean())
               ) < 1e-9
    assert math.isinf(float(wm.psnr(a, a)))
    with pytest.raises(ValueError, match="reduction"):
        wm.psnr(a, b, reduction="sum")
    with pytest.raises(ValueError, match="b must have the shape of a"):
        wm.psnr(a, b[:2])

    sent = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0]])
    got = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    assert wm.bit_accuracy(got, sent) == 6 / 8
    assert wm.bit_accuracy(sent.bool(), sent) == 1.0
    with pytest.raises(ValueError, match="decoded"):
        wm.bit_accuracy(torch.randn(2, 4), sent)


# ---- models and validation ---------------------------------------------------------------------

def test_hidden_config_validation_names_the_argument():
    for kwargs, name in (({"message_bits": 0}, "message_bits"), ({"channels": 2.0}, "channels"),
                         ({"decoder_blocks": True}, "decoder_blocks"),
                         ({"use_discriminator": 1}, "use_discriminator"),
                         ({"residual_scale": 0.0}, "residual_scale")):
        with pytest.raises(ValueError, match=name):
            wm.HiddenConfig(**kwargs).validate()
    with pytest.raises(ValueError, match="batch_size"):
        wm.WatermarkTrainConfig(batch_size=0).validate()
    with pytest.raises(ValueError, match="lr"):
        wm.WatermarkTrainConfig(lr=0.0).validate()
    with pytest.raises(ValueError, match="nope"):
        wm.WatermarkTrainConfig(noise="nope").validate()


def test_model_shapes_range_and_input_validation():
    torch.manual_seed(0)
    cfg = wm.HiddenConfig(message_bits=5, channels=8, encoder_blocks=2, decoder_blocks=2,
                          discriminator_blocks=1, use_discriminator=True)
    model = wm.WatermarkModel(cfg)
    images = torch.rand(4, 3, 12, 12)
    bits = torch.randint(0, 2, (4, 5)).float()
    assert torch.equal(model.embed(images, bits), images)  # zero-initialized residual conv
    with torch.no_grad():
        model.encoder.to_image.weight.normal_(std=0.05)
    marked = model.embed(images, bits)
    assert marked.shape == images.shape and 0 <= marked.min() and marked.max() <= 1
    assert not torch.equal(marked, images)
    assert model.decode_logits(marked).shape == (4, 5)
    decoded = model.decode(marked)
    assert decoded.dtype == marked.dtype and set(decoded.unique().tolist()) <= {0.0, 1.0}
    assert model.discriminator(marked).shape == (4,)
    assert model.training  # embed/decode restore the mode they found
    half = wm.Encoder(dataclasses.replace(cfg, residual_scale=0.5)).eval()
    half.load_state_dict(model.encoder.state_dict())
    mid = 0.4 + 0.2 * images  # far enough from 0 and 1 that nothing is clamped
    with torch.no_grad():
        full_residual = model.encoder.eval()(mid, bits) - mid
        torch.testing.assert_close(half(mid, bits) - mid, 0.5 * full_residual)
    model.train()

    with pytest.raises(ValueError, match="images must have 4 dimensions"):
        model.embed(images[0], bits)
    with pytest.raises(TypeError, match="images must be a floating tensor"):
        model.embed((images * 255).to(torch.uint8), bits)
    with pytest.raises(ValueError, match="3 channels"):
        model.decode(torch.rand(4, 1, 12, 12))
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        model.embed(images * 2, bits)
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        model.decode(torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match=r"bits must have shape \(4, 5\)"):
        model.embed(images, bits[:, :4])
    with pytest.raises(ValueError, match="bits must hold only 0 and 1"):
        model.embed(images, bits * 2)
    with pytest.raises(ValueError, match="images"):
        wm.train_watermark(images * 2, wm.WatermarkTrainConfig(epochs=1), cfg, progress=False)
    with pytest.raises(ValueError, match=r"noise 'jpeg\(50\)' cannot run"):
        wm.train_watermark(images[:, :1], wm.WatermarkTrainConfig(epochs=1, noise="jpeg(50)"),
                           dataclasses.replace(cfg, image_channels=1), progress=False)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        wm.train_watermark(images, wm.WatermarkTrainConfig(epochs=1), cfg, resume=True,
                           progress=False)


# ---- training ----------------------------------------------------------------------------------

def _small_images(n=24, size=16, seed=0):
    g = _gen(seed)
    base = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size),
                         mode="bilinear", align_corners=False)
    return (0.1 + 0.8 * base + 0.05 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def test_resume_is_exact_and_save_load_roundtrips(tmp_path, one_intra_op_thread):
    images = _small_images()
    hidden = wm.HiddenConfig(message_bits=6, channels=8, encoder_blocks=2, decoder_blocks=2,
                             discriminator_blocks=1, use_discriminator=True)
    cfg = wm.WatermarkTrainConfig(epochs=2, batch_size=10, lr=3e-3, noise="dropout(0.5)",
                                  image_weight_warmup_epochs=1)
    full, full_history = wm.train_watermark(images, cfg, hidden, progress=False)

    folder = str(tmp_path / "run")  # 1 epoch, then resume to 2
    wm.train_watermark(images, dataclasses.replace(cfg, epochs=1), hidden,
                       checkpoint_dir=folder, progress=False)
    resumed, history = wm.train_watermark(images, cfg, hidden, checkpoint_dir=folder,
                                          resume=True, progress=False)
    assert history == full_history and len(history) == 2
    full_state, resumed_state = full.state_dict(), resumed.state_dict()
    assert full_state.keys() == resumed_state.keys()
    for key in full_state:
        assert torch.equal(full_state[key], resumed_state[key]), key
    assert {"adversarial", "discriminator_loss"} <= history[0].keys()
    assert [row["image_weight"] for row in history] == [0.0, cfg.image_weight]

    # resuming a finished run trains nothing; another config is refused
    again, again_history = wm.train_watermark(images, cfg, hidden, checkpoint_dir=folder,
                                              resume=True, progress=False)
    assert again_history == history
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in resumed_state.items())
    with pytest.raises(ValueError, match="another config"):
        wm.train_watermark(images, dataclasses.replace(cfg, lr=1e-3), hidden,
                           checkpoint_dir=folder, resume=True, progress=False)

    path = str(tmp_path / "model")
    resumed.save(path)
    loaded = wm.WatermarkModel.load(path)
    assert loaded.config == resumed.config
    bits = torch.randint(0, 2, (len(images), 6), generator=_gen(3)).float()
    marked = resumed.embed(images, bits)
    assert torch.equal(loaded.embed(images, bits), marked)
    assert torch.equal(loaded.decode_logits(marked), resumed.decode_logits(marked))
    with pytest.raises(ValueError, match="no saved WatermarkModel"):
        wm.WatermarkModel.load(str(tmp_path / "nothing"))


def test_nan_gradient_steps_are_skipped(monkeypatch, one_intra_op_thread):
    import trustfast.watermark.train as train_module

    class NanNoise(wm.NoiseLayer):
        spec = "identity"

        def forward(self, encoded, cover, generator=None):
            return encoded * float("nan")

    monkeypatch.setattr(train_module, "make_noise", lambda spec: NanNoise())
    images = _small_images(8, 12)
    hidden = wm.HiddenConfig(message_bits=4, channels=4, encoder_blocks=1, decoder_blocks=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        initial = wm.WatermarkModel(hidden).state_dict()
    with pytest.warns(RuntimeWarning, match="step skipped"):
        model, history = wm.train_watermark(images, wm.WatermarkTrainConfig(epochs=1,
                                            batch_size=4), hidden, progress=False)
    assert history[0]["skipped_steps"] == 2
    for key, value in model.state_dict().items():
        if "running" not in key and "num_batches" not in key:  # BN statistics still update
            assert torch.equal(value, initial[key]), key


def test_schedules_known_answers():
    cfg = wm.WatermarkTrainConfig(epochs=10, lr=1e-3, image_weight=2.0,
                                  image_weight_warmup_epochs=4, lr_decay_epochs=3)
    assert [cfg.image_weight_at(e) for e in range(6)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert [cfg.lr_at(e) for e in (0, 6, 7, 8, 9)] == pytest.approx([1e-3, 1e-3, 7e-4, 4e-4,
                                                                      1e-4])
    flat = wm.WatermarkTrainConfig(epochs=3)
    assert [flat.lr_at(e) for e in range(3)] == [1e-3] * 3
    assert [flat.image_weight_at(e) for e in range(3)] == [0.7] * 3


@pytest.mark.parametrize("noise", ["dropout(0.3)", "jpeg_mask"])
def test_training_through_a_noise_layer_lowers_the_message_loss(noise, one_intra_op_thread):
    from trustfast.data import colored_digits

    images = colored_digits(size=16)[0].tensors[0][:512]
    hidden = wm.HiddenConfig(channels=16, encoder_blocks=2, decoder_blocks=3)
    # message term only: what is tested is that the decoder learns through the noise layer
    cfg = wm.WatermarkTrainConfig(epochs=4, batch_size=16, lr=3e-3, noise=noise,
                                  image_weight=0.0)
    _, history = wm.train_watermark(images, cfg, hidden, progress=False)
    losses = [row["message_loss"] for row in history]
    # measured: dropout(0.3) 0.692 -> 0.667, jpeg_mask 0.688 -> 0.654 (ln 2 = 0.693 is chance)
    assert losses[-1] < losses[0] - 0.015, losses
    assert history[-1]["bit_accuracy"] > 0.56, history[-1]


# The paper's claim at small scale: without noise, HiDDeN hides a 30-bit message in a cover at
# PSNR >= 30 dB, and the decoder reads it back on held-out covers with fresh messages. The
# budget is 900 steps of batch 16 on one CPU thread (about 50 s at 32 px, 160 s at 64 px). The
# tiled message layout (message_tile 8, a 64-wide decoder of one block) gets there; HiDDeN's own
# layout (the message repeated over H x W, 4 decoder blocks of 16 channels) reached 0.62 at
# 32.2 dB at 32 px in 86 s.
SLOW_HIDDEN = {"channels": 16, "encoder_blocks": 3, "decoder_blocks": 1,
               "decoder_channels": 64}
SLOW_TRAIN = {"epochs": 10, "batch_size": 16, "lr": 3e-3, "image_weight": 1.0,
              "image_weight_warmup_epochs": 6}


@pytest.fixture(scope="module", params=[32, 64], ids=["32px", "64px"])
def no_noise_run(request):
    """HiDDeN without noise layers on colored digits (one thread): figures on held-out images,
    at 32 and at 64 pixels (the issue's range)."""
    from trustfast.data import colored_digits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, test = colored_digits(size=request.param)
        covers, held_out = train.tensors[0], test.tensors[0]
        start = time.perf_counter()
        model, history = wm.train_watermark(covers, wm.WatermarkTrainConfig(**SLOW_TRAIN),
                                            wm.HiddenConfig(**SLOW_HIDDEN), progress=False)
        seconds = time.perf_counter() - start
        bits = torch.randint(0, 2, (len(held_out), 30), generator=_gen(123)).float()
        with torch.no_grad():
            marked = model.embed(held_out, bits)
            accuracy = wm.bit_accuracy(model.decode(marked), bits)
            quality = float(wm.psnr(marked, held_out))
            similarity = float(wm.ssim(marked, held_out))
    finally:
        torch.set_num_threads(before)
    print(f"HiDDeN no noise, {request.param} px: bit accuracy {accuracy:.3f}, "
          f"PSNR {quality:.1f} dB, SSIM {similarity:.3f}, {seconds:.0f} s")
    return history, accuracy, quality, similarity


@pytest.mark.slow
def test_no_noise_hidden_carries_30_bits_at_psnr_30(no_noise_run):
    """The issue's bar: bit accuracy >= 0.95 at 30 bits and PSNR >= 30 dB, on held-out covers
    with fresh messages. Measured: 0.988 at 31.9 dB, SSIM 0.962 (51 s) at 32 px; 0.968 at
    38.0 dB, SSIM 0.987 (164 s) at 64 px."""
    history, accuracy, quality, similarity = no_noise_run
    assert history[-1]["message_loss"] < history[0]["message_loss"] - 0.3
    assert accuracy >= 0.95, accuracy
    assert quality >= 30.0, quality
    assert similarity >= 0.94, similarity
