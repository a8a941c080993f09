"""VQTokenizer: LlamaGen parity (names, shapes, golden vector), checkpoint loading, training pass."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from zoo.spaces import VQTokenizer

_HERE = Path(__file__).resolve().parent
# The reference files live in tests/data once vendored, else in the workspace's shared/reference.
_CANDIDATES = [_HERE / "data", _HERE.parent / "shared" / "reference", _HERE.parents[1] / "shared" / "reference"]
REFERENCE = next((p for p in _CANDIDATES if (p / "vq16_state_dict.json").is_file()), _CANDIDATES[0])
needs_reference = pytest.mark.skipif(not (REFERENCE / "vq16_state_dict.json").is_file(),
                                     reason="shared/reference not available")


def reference_entries() -> list[tuple[str, list[int]]]:
    return [(name, shape) for name, shape in json.loads((REFERENCE / "vq16_state_dict.json").read_text())["state_dict"]]


def golden_weights(entries: list[tuple[str, list[int]]]) -> dict[str, torch.Tensor]:
    """The README's recipe: randn * 0.05 seeded by 1000 + index, +1 on 1-D '.weight' tensors."""
    weights = {}
    for i, (name, shape) in enumerate(entries):
        t = torch.randn(shape, generator=torch.Generator().manual_seed(1000 + i)) * 0.05
        if len(shape) == 1 and name.endswith(".weight"):
            t = t + 1.0
        weights[name] = t
    return weights


@pytest.fixture(scope="module")
def vq16() -> VQTokenizer:
    return VQTokenizer("VQ-16", codebook_size=1024, codebook_dim=8, image_size=64)


@pytest.fixture(scope="module")
def tiny() -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer("tiny")


@needs_reference
def test_state_dict_matches_llamagen_exactly(vq16: VQTokenizer) -> None:
    config = json.loads((REFERENCE / "vq16_state_dict.json").read_text())["config"]
    assert vq16.codebook_size == config["codebook_size"] and vq16.dim == config["codebook_embed_dim"]
    ours = [(name, list(t.shape)) for name, t in vq16.model.state_dict().items()]
    assert ours == reference_entries()


@needs_reference
def test_golden_vector(vq16: VQTokenizer) -> None:
    vq16.model.load_state_dict(golden_weights(reference_entries()), strict=True)
    golden = load_file(str(REFERENCE / "vq16_golden.safetensors"))
    features, codes = vq16.encode(golden["input"])
    assert torch.equal(codes, golden["indices"].to(codes.dtype))
    quant = features.transpose(1, 2).reshape(golden["quant"].shape)  # [B, N, D] -> [B, D, h, w], row-major
    torch.testing.assert_close(quant, golden["quant"], atol=1e-4, rtol=0)
    torch.testing.assert_close(vq16.decode(features=features), golden["decoded"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(vq16.decode(codes=codes), golden["decoded"], atol=1e-4, rtol=1e-4)


def test_real_codebook_size_only_changes_embedding() -> None:
    small = VQTokenizer("VQ-16", codebook_size=1024, channels=32, image_size=64).model.state_dict()
    big = VQTokenizer("VQ-16", channels=32, image_size=64).model.state_dict()
    assert list(small) == list(big)
    differ = [k for k in small if small[k].shape != big[k].shape]
    assert differ == ["quantize.embedding.weight"] and big[differ[0]].shape == (16384, 8)


def test_variants_and_sizes() -> None:
    vq8 = VQTokenizer("VQ-8", channels=32, image_size=64)
    assert vq8.config.downsample == 8 and vq8.num_tokens == 64 and vq8.codebook_size == 16384
    assert VQTokenizer("VQ-16", channels=32).num_tokens == 256  # 256 px / 16
    with pytest.raises(ValueError, match="60.*8"):
        VQTokenizer("tiny", image_size=60)
    with pytest.raises(ValueError, match="unknown variant"):
        VQTokenizer("VQ-32")
    with pytest.raises(ValueError, match="norm_groups"):
        VQTokenizer("tiny", channels=12)


def test_pt_checkpoint_roundtrip(tmp_path: Path, tiny: VQTokenizer) -> None:
    path = tmp_path / "vq.pt"
    torch.save({"model": tiny.model.state_dict(), "steps": 3}, path)
    loaded = VQTokenizer("tiny", checkpoint=str(path))
    for name, tensor in tiny.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(loaded.encode(pixels)[1], tiny.encode(pixels)[1])


def test_safetensors_checkpoint_and_bad_files(tmp_path: Path, tiny: VQTokenizer) -> None:
    good = tmp_path / "vq.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(good))
    loaded = VQTokenizer("tiny", checkpoint=str(good))
    assert torch.equal(loaded.model.quantize.embedding.weight, tiny.model.quantize.embedding.weight)
    with pytest.raises(ValueError, match="does not fit"):
        VQTokenizer("tiny", codebook_size=512, checkpoint=str(good))
    nokey = tmp_path / "other.pt"
    torch.save({"weights": {"a": 1}}, nokey)
    with pytest.raises(ValueError, match="other.pt.*'model'"):
        VQTokenizer("tiny", checkpoint=str(nokey))
    with pytest.raises(ValueError, match="no such file"):
        VQTokenizer("tiny", checkpoint=str(tmp_path / "missing.pt"))


def test_encode_embed_decode(tiny: VQTokenizer) -> None:
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    features, codes = tiny.encode(pixels)
    assert features.shape == (2, 64, 8) and codes.shape == (2, 64) and codes.dtype == torch.long
    assert tiny.discrete and tiny.can_decode and tiny.num_tokens == 64 and tiny.dim == 8
    assert torch.equal(tiny.embed_codes(codes), features)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(2, 64))
    out = tiny.decode(features=features)
    assert out.shape == (2, 3, 64, 64)
    torch.testing.assert_close(tiny.decode_codes(codes), out)
    with pytest.raises(ValueError, match="1024"):
        tiny.embed_codes(torch.full((1, 64), 1024))
    with pytest.raises(ValueError, match="exactly one"):
        tiny.decode()
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        tiny.encode(torch.zeros(1, 3, 32, 32))


def test_codes_are_nearest_codebook_entries(tiny: VQTokenizer) -> None:
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    _, codes = tiny.encode(pixels)
    latent = torch.nn.functional.normalize(tiny.model.quant_conv(tiny.model.encoder(pixels)), dim=1)
    sims = latent.flatten(2).transpose(1, 2) @ tiny.model.quantize.codebook().t()
    assert torch.equal(codes, sims.argmax(-1))


def test_frozen_by_default(tiny: VQTokenizer) -> None:
    parent = nn.ModuleDict({"space": tiny, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training and not tiny.training and not tiny.model.encoder.training
    assert not any(p.requires_grad for p in tiny.parameters())
    features, _ = tiny.encode(torch.zeros(1, 3, 64, 64))
    assert not features.requires_grad


def test_training_pass_losses_and_gradients() -> None:
    torch.manual_seed(0)
    vq = VQTokenizer("tiny", trainable=True, entropy_weight=0.1)
    nn.ModuleDict({"vq": vq}).train()
    assert vq.training and all(p.requires_grad for p in vq.parameters())
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    recon, losses = vq(pixels)
    assert recon.shape == pixels.shape and set(losses) == {"codebook", "commitment", "entropy"}
    assert all(torch.isfinite(v) for v in losses.values())
    torch.testing.assert_close(losses["commitment"], 0.25 * losses["codebook"])  # same distance, beta 0.25
    loss = (recon - pixels).pow(2).mean() + sum(losses.values())
    loss.backward()
    # The straight-through estimator carries the reconstruction gradient into the encoder.
    assert vq.model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert vq.model.quantize.embedding.weight.grad.abs().sum() > 0
    assert 0 < vq.codebook_usage() <= 1


def test_preprocess_range_and_postprocess() -> None:
    vq = VQTokenizer("tiny", channels=8)
    image = Image.new("RGB", (64, 64), (255, 0, 128))
    pixels = vq.preprocess(image)
    assert pixels.shape == (3, 64, 64) and pixels.min() >= -1 and pixels.max() <= 1
    assert pixels[0].mean().item() == pytest.approx(1.0) and pixels[1].mean().item() == pytest.approx(-1.0)
    assert vq.postprocess(pixels.unsqueeze(0))[0].getpixel((5, 5)) == (255, 0, 128)
    assert vq.describe()["tokens"] == 64 and "VQTokenizer(tiny)" == vq.describe()["name"]
