"""Val-split scores of the test protocol during fit (choices are made on val), and the pixel decoder's plumbing."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from datamodules.mixed import MixedTaskDataModule
from datamodules.smartwatch.source import SmartWatchSource
from zoo.catalog.presets import preset
from zoo.config import build
from zoo.eval.validation import ValidationScores


@pytest.mark.parametrize("name", ["vq-vq", "siglip-siglip"])
def test_validation_logs_vqa_and_generation_scores_of_val_samples(name):
    torch.manual_seed(0)
    model = build(preset(name, "smoke", lr=1e-3, projector_lr=1e-3, weight_decay=0.0, warmup_ratio=0.0))
    data = MixedTaskDataModule([SmartWatchSource(train=4, val=4, test=1, size=32)], batch_size=4)
    scores = ValidationScores(max_samples=3, batch_size=8)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, accelerator="cpu", devices=1,
                        num_sanity_val_steps=0, callbacks=[scores])
    trainer.fit(model, datamodule=data)
    chosen = scores.samples(trainer)
    assert {s.task for s in chosen} == {"vqa", "caption", "generation"}
    assert all(sum(s.task == t for s in chosen) <= 3 for t in ("vqa", "caption", "generation"))
    logged = {k for k in trainer.callback_metrics if k.startswith("val/")}
    assert any(k.startswith("val/vqa") for k in logged), logged
    assert "val/generation/feature_cosine" in logged
    if name == "vq-vq":  # decodable: the attribute reader scores the generated images
        assert any("reader" in k or "agreement" in k or "hour" in k for k in scores.last if "vqa" not in k), scores.last


def test_validation_scores_refuse_bad_sizes():
    with pytest.raises(ValueError, match="max_samples"):
        ValidationScores(max_samples=0)


def test_a_continuous_space_with_a_pixel_decoder_decodes_and_checks_its_shape(tmp_path):
    from zoo.spaces.hf import HFVisionSpace
    from zoo.spaces.pixel_decoder import FeatureDecoder, save_decoder

    cfg = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 1,
           "intermediate_size": 64}
    plain = HFVisionSpace(config=cfg, layer=1)
    assert not plain.can_decode
    decoder = FeatureDecoder(plain.num_tokens, plain.dim, plain.image_size, width=32, layer=1)
    save_decoder(decoder, tmp_path / "dec.safetensors")
    space = HFVisionSpace(config=cfg, layer=1, pixel_decoder=str(tmp_path / "dec.safetensors"))
    assert space.can_decode
    features, _ = space.encode(torch.zeros(2, 3, 32, 32))
    pixels = space.decode(features=features)
    assert pixels.shape == (2, 3, 32, 32)
    with torch.no_grad():
        expected = (decoder(features) + 1) / 2  # [0, 1], then the space's own normalisation
    mean, std = torch.tensor(space.mean).view(1, 3, 1, 1), torch.tensor(space.std).view(1, 3, 1, 1)
    assert torch.allclose(pixels, (expected - mean) / std, atol=1e-5)
    with pytest.raises(ValueError, match="layer 1"):
        HFVisionSpace(config=cfg, layer=2, pixel_decoder=str(tmp_path / "dec.safetensors"))
    bigger = {**cfg, "hidden_size": 64}
    with pytest.raises(ValueError, match="decodes 16 x 32"):
        HFVisionSpace(config=bigger, layer=1, pixel_decoder=str(tmp_path / "dec.safetensors"))
