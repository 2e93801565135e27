import math

import pytest
import torch

from sah import dsp

torch.set_num_threads(1)


def _sine(rate: int, seconds: float = 1.0, freq: float = 1000.0) -> torch.Tensor:
    # Built in float64 so float32 tests measure the resampler, not float32 phase error in the input.
    t = torch.arange(round(rate * seconds), dtype=torch.float64) / rate
    return torch.sin(2 * math.pi * freq * t)


def _interior_error(out: torch.Tensor, rate: int, freq: float = 1000.0) -> float:
    expected = _sine(rate, out.shape[-1] / rate, freq)[: out.shape[-1]]
    edge = rate // 20  # the signal is zero outside its span, so the first and last 50 ms ring
    return (out.double() - expected)[..., edge:-edge].abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("orig_rate", [44100, 8000, 192000, 48000, 22050])
def test_resample_matches_analytic_sine(orig_rate, dtype):
    out = dsp.resample(_sine(orig_rate).to(dtype), orig_rate, 16000)
    assert out.dtype == dtype
    assert out.shape == (16000,)
    assert _interior_error(out, 16000) < 1e-3


def test_resample_upsamples_and_keeps_leading_dims():
    x = _sine(16000).float().expand(2, 3, -1)
    out = dsp.resample(x, 16000, 48000)
    assert out.shape == (2, 3, 48000)
    assert _interior_error(out, 48000) < 1e-3


def test_resample_output_length_is_ceil():
    assert dsp.resample(torch.zeros(1, 441), 44100, 16000).shape[-1] == math.ceil(441 * 16000 / 44100)
    assert dsp.resample(torch.zeros(7), 3, 2).shape[-1] == 5


def test_resample_removes_content_above_new_nyquist():
    out = dsp.resample(_sine(44100, freq=12000.0), 44100, 16000)
    assert out[800:-800].abs().max() < 1e-4


def test_resample_same_rate_is_identity():
    x = torch.randn(2, 100)
    assert dsp.resample(x, 16000, 16000) is x


def test_resample_coprime_rates_use_the_direct_path_accurately():
    # 44100 and 44099 share no factor: a polyphase bank would need 44099 phases.
    out = dsp.resample(_sine(44100, 0.3).float(), 44100, 44099)
    assert _interior_error(out, 44099) < 1e-3


def test_direct_and_polyphase_paths_agree():
    x = torch.randn(2, 500, dtype=torch.float64)
    down, up, cutoff, width = dsp._reduced(3, 2)
    out_len = math.ceil(500 * up / down)
    poly = dsp._polyphase(x, down, up, cutoff, width, out_len)
    direct = dsp._direct(x, down, up, cutoff, width, out_len)
    torch.testing.assert_close(poly, direct, atol=1e-10, rtol=0)


def test_resample_is_differentiable():
    x = torch.randn(1, 60, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: dsp.resample(w, 3, 2), (x,))
    y = torch.randn(2, 1, 4410, requires_grad=True)
    dsp.resample(y, 44100, 16000).square().sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_resample_rejects_bad_input():
    with pytest.raises(ValueError):
        dsp.resample(torch.zeros(10), 0, 16000)
    with pytest.raises(TypeError):
        dsp.resample(torch.zeros(10, dtype=torch.int16), 8000, 16000)


def test_to_mono_averages_channels():
    x = torch.stack([torch.ones(5), -torch.ones(5) * 3]).unsqueeze(0)
    out = dsp.to_mono(x)
    assert out.shape == (1, 1, 5)
    assert torch.allclose(out, torch.full((1, 1, 5), -1.0))
    with pytest.raises(ValueError):
        dsp.to_mono(torch.zeros(2, 5))


def test_fit_length_start():
    x = torch.arange(1.0, 6.0).reshape(1, 1, 5)
    assert dsp.fit_length(x, 3).flatten().tolist() == [1, 2, 3]
    assert dsp.fit_length(x, 7).flatten().tolist() == [1, 2, 3, 4, 5, 0, 0]
    assert dsp.fit_length(x, 5).flatten().tolist() == [1, 2, 3, 4, 5]


def test_fit_length_center():
    x = torch.arange(1.0, 6.0)
    assert dsp.fit_length(x, 3, mode="center").tolist() == [2, 3, 4]
    assert dsp.fit_length(x, 8, mode="center").tolist() == [0, 1, 2, 3, 4, 5, 0, 0]
    assert dsp.fit_length(x, 0, mode="center").numel() == 0


def test_fit_length_is_differentiable_and_validates():
    x = torch.randn(2, 10, requires_grad=True)
    dsp.fit_length(x, 14, mode="center").sum().backward()
    assert torch.equal(x.grad, torch.ones(2, 10))
    with pytest.raises(ValueError):
        dsp.fit_length(x, 4, mode="end")
    with pytest.raises(ValueError):
        dsp.fit_length(x, -1)
