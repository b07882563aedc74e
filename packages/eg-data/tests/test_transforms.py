"""Image and audio transforms against hand computations."""

import io

import numpy as np
import pytest
import soundfile
import torch
from eg_data import AudioTransformConfig, ImageTransformConfig, transform_audio, transform_image
from eg_data.transforms import decode_audio, decode_image, sample_rng
from PIL import Image


def test_image_normalization_by_hand():
    img = Image.new("RGB", (12, 6), (51, 102, 204))  # 0.2, 0.4, 0.8
    cfg = ImageTransformConfig(size=4, mean=[0.5, 0.5, 0.5], std=[0.5, 0.25, 0.1])
    x = transform_image(img, cfg)
    assert x.shape == (3, 4, 4)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([-0.6, -0.4, 3.0]), atol=1e-5, rtol=0)


def test_center_crop_keeps_the_middle():
    arr = np.zeros((4, 12, 3), dtype=np.uint8)
    arr[:, 4:8] = 255  # white middle third
    x = transform_image(Image.fromarray(arr), ImageTransformConfig(size=4, mean=[0.0] * 3, std=[1.0] * 3))
    assert x.min() > 0.9  # the 4x4 center of a 4x12 image is the white band


def test_augmented_crop_is_deterministic_per_key():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8))
    cfg = ImageTransformConfig(size=8, augment=True, crop_scale_min=0.3)
    a = transform_image(img, cfg, sample_rng(0, 0, "k", "image"))
    b = transform_image(img, cfg, sample_rng(0, 0, "k", "image"))
    c = transform_image(img, cfg, sample_rng(0, 1, "k", "image"))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_audio_resampled_padded_and_masked():
    rate = 8000
    t = np.arange(int(0.3 * rate)) / rate
    buf = io.BytesIO()
    soundfile.write(buf, 0.5 * np.sin(2 * np.pi * 440 * t), rate, format="WAV")
    wave = decode_audio(buf.getvalue())
    assert abs(len(wave) - 4800) <= 2  # 0.3 s at 16 kHz
    mel, mask = transform_audio(wave, AudioTransformConfig(n_mels=80, n_samples=8000))  # 0.5 s context
    assert mel.shape == (80, 50) and mask.shape == (50,)
    assert mask.sum() == 30 and mask[:30].all()
    assert mel[:, 2:28].amax(dim=0).min() > mel[:, 35:].max() + 1.0  # every tone frame beats the padding
    trimmed, tmask = transform_audio(np.ones(20000, dtype=np.float32), AudioTransformConfig(n_samples=8000))
    assert trimmed.shape == (80, 50) and tmask.all()


def test_decoders_reject_garbage():
    with pytest.raises(OSError):  # PIL's UnidentifiedImageError
        decode_image(b"definitely not media")
    with pytest.raises(RuntimeError):  # soundfile's LibsndfileError
        decode_audio(b"definitely not media")
    assert decode_image(_tiny_png()).size == (2, 2)


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (2, 2), 9).save(buf, format="PNG")
    return buf.getvalue()
