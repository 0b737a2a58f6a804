"""The full-size architectures the benchmarks build have the published models' sizes."""

import pytest
import torch

from infer_kandinsky_2_2.kandinsky22_devkit.tiny import (
    FULL,
    build_decoder_pipeline,
    build_prior_pipeline,
    write_tokenizer,
)


def billions(module: torch.nn.Module) -> float:
    return round(sum(parameter.numel() for parameter in module.parameters()) / 1e9, 4)


def test_full_size_models_count_the_published_parameters(tmp_path):
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    with torch.device("meta"):
        prior = build_prior_pipeline(FULL, tokenizer)
        decoder = build_decoder_pipeline(FULL)
    assert billions(decoder.unet) == pytest.approx(1.253, abs=0.001)
    assert billions(decoder.movq) == pytest.approx(0.0678, abs=0.0001)
    assert billions(prior.prior) == pytest.approx(1.026, abs=0.001)
    assert billions(prior.text_encoder) == pytest.approx(0.695, abs=0.001)
    assert billions(prior.image_encoder) == pytest.approx(1.845, abs=0.001)
