"""Augmentation: identity at zero strength, per-sample randomness, seeding, and the stain round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as tvf
from skimage.color import hed2rgb, rgb2hed

from wsi_pipeline.model.tta import dihedral
from wsi_pipeline.training.augment import (
    HED_FROM_RGB,
    RGB_FROM_HED,
    AugmentConfig,
    augment,
    colour_jitter,
    hed_jitter,
    random_dihedral,
)

OFF = AugmentConfig(dihedral=False, brightness=0, contrast=0, saturation=0, hue=0, hed_scale=0, hed_shift=0)


def batch(n: int = 16, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_zero_strengths_are_the_identity():
    x = batch()
    x[0] = 0.0  # black and white survive the optical-density round trip
    x[1] = 1.0
    torch.testing.assert_close(augment(x, OFF, gen()), x, atol=2e-5, rtol=0)


def test_the_eight_symmetries_match_numpy_and_are_distinct():
    x = batch(1, 5)
    images = [dihedral(x, k)[0].numpy() for k in range(8)]
    hwc = x[0].numpy()
    expected = [np.rot90(hwc, k % 4, axes=(1, 2)) for k in range(8)]
    expected = [e if k < 4 else e[:, :, ::-1] for k, e in enumerate(expected)]
    for k in range(8):
        np.testing.assert_array_equal(images[k], expected[k])
    assert len({image.tobytes() for image in images}) == 8


def test_random_dihedral_transforms_each_sample_by_a_symmetry():
    x = batch(64, 6)
    out = random_dihedral(x, gen())
    used = []
    for image, result in zip(x, out, strict=True):
        matches = [k for k in range(8) if torch.equal(dihedral(image, k), result)]
        assert matches
        used.append(matches[0])
    assert len(set(used)) == 8  # all symmetries occur across 64 samples


def test_seeded_and_per_sample():
    x = batch()
    config = AugmentConfig(hue=0.05)
    first, again, other = augment(x, config, gen(3)), augment(x, config, gen(3)), augment(x, config, gen(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    same = x[:1].expand(8, -1, -1, -1).clone()  # one image eight times: each copy jittered differently
    jittered = colour_jitter(same, gen(), brightness=0.3)
    assert len({round(float(image.mean()), 6) for image in jittered}) == 8
    assert float(jittered.min()) >= 0 and float(jittered.max()) <= 1


def test_colour_jitter_matches_torchvision_step_by_step():
    x = 0.3 + 0.4 * batch(6)  # mid-range: no clipping, so clipping once equals clipping after each step
    generator = gen(5)
    out = colour_jitter(x, generator, brightness=0.2, contrast=0.3, saturation=0.4)
    # the factors, drawn as colour_jitter draws them: U(-1, 1) per sample, scaled by each strength
    b, c, s = 1 + (torch.rand((3, 6), generator=gen(5)) * 2 - 1) * torch.tensor([[0.2], [0.3], [0.4]])
    for i in range(6):
        expected = tvf.adjust_saturation(tvf.adjust_contrast(tvf.adjust_brightness(x[i], b[i]), c[i]), s[i])
        torch.testing.assert_close(out[i], expected, atol=1e-4, rtol=0)  # torchvision's luma: 0.2989 for red


def test_hue_rotation_keeps_luma_and_chroma_and_grey():
    x = 0.2 + 0.6 * batch(8)
    x[0] = 0.5  # grey
    out = colour_jitter(x, gen(), hue=0.5)
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    before, after = (torch.einsum("ij,njhw->nihw", to_yiq, images) for images in (x, out))
    unclipped = (out > 0).all(1) & (out < 1).all(1)
    torch.testing.assert_close(after[:, 0][unclipped], before[:, 0][unclipped], atol=1e-5, rtol=0)
    chroma_before, chroma_after = before[:, 1:].norm(dim=1), after[:, 1:].norm(dim=1)
    torch.testing.assert_close(chroma_after[unclipped], chroma_before[unclipped], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0], x[0], atol=1e-6, rtol=0)
    assert (out[1:] - x[1:]).abs().max() > 0.1


def test_hed_scale_matches_scikit_image():
    # stain mixtures (non-negative concentrations: scikit-image clips negative ones to zero)
    concentrations = batch(4, 8).permute(0, 2, 3, 1) * torch.tensor([1.0, 0.8, 0.2])
    x = torch.exp(-concentrations @ RGB_FROM_HED).permute(0, 3, 1, 2)
    out = hed_jitter(x, gen(7), scale=0.3)
    alpha = 1 + (torch.rand((4, 3), generator=gen(7)) * 2 - 1) * 0.3  # as hed_jitter draws it
    for i in range(4):
        stains = rgb2hed(x[i].permute(1, 2, 0).double().numpy()) * alpha[i].double().numpy()
        expected = torch.from_numpy(hed2rgb(stains)).permute(2, 0, 1).float()
        torch.testing.assert_close(out[i], expected, atol=1e-4, rtol=0)
    assert (out - x).abs().max() > 0.05


def test_brightness_scales_within_strength():
    x = torch.full((200, 3, 2, 2), 0.5)
    factors = colour_jitter(x, gen(), brightness=0.2)[:, 0, 0, 0] / 0.5
    assert 0.8 <= float(factors.min()) < 0.85 and 1.15 < float(factors.max()) <= 1.2


def test_saturation_zero_gives_grey():
    x = batch()
    grey = colour_jitter(x, gen(), saturation=0.0)
    assert torch.allclose(grey, x, atol=1e-6)
    # U(1 - s, 1 + s) with s close to 1 can reach nearly grey: channels nearly equal for some samples
    washed = colour_jitter(x, gen(), saturation=0.999)
    spread = (washed.max(1).values - washed.min(1).values).mean(dim=(-2, -1))
    assert float(spread.min()) < 0.1 * float((x.max(1).values - x.min(1).values).mean())


def test_stain_matrix_is_ruifrok_johnston_and_a_shift_moves_each_stain_within_bounds():
    torch.testing.assert_close(RGB_FROM_HED @ HED_FROM_RGB, torch.eye(3), atol=1e-6, rtol=0)
    assert RGB_FROM_HED[0].tolist() == pytest.approx([0.65, 0.70, 0.29])

    def concentrations(images: torch.Tensor) -> torch.Tensor:
        return -torch.log(images[:, :, 0, 0]) @ HED_FROM_RGB

    grey = torch.full((400, 3, 1, 1), 0.5)  # mid-grey: a ±0.2 stain shift never clips
    delta = concentrations(hed_jitter(grey, gen(), scale=0.0, shift=0.2)) - concentrations(grey)
    assert float(delta.abs().max()) <= 0.2 + 1e-4
    assert float(delta.abs().max()) > 0.19  # the shifts span their range, per stain
    assert float(delta.std(0).min()) > 0.1
