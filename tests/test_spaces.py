"""Continuous image spaces (transformers, timm) and the AffineSpace misalignment wrapper."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from zoo.spaces import AffineSpace, HFVisionSpace, ImageSpace, TimmSpace, VQTokenizer

TINY_HF = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 2, "intermediate_size": 64}
TINY_TIMM = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
CLIP = "transformers.CLIPVisionModel"


def batch(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(7))


def image(size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, (250, 20, 90))


@pytest.fixture(scope="module")
def siglip() -> HFVisionSpace:
    return HFVisionSpace(config=TINY_HF)


@pytest.fixture(scope="module")
def vit() -> TimmSpace:
    return TimmSpace(**TINY_TIMM)


@pytest.fixture(scope="module")
def vq() -> VQTokenizer:
    return VQTokenizer("tiny", channels=8, image_size=32)


def test_siglip_shapes(siglip: HFVisionSpace) -> None:
    pixels = siglip.preprocess(image())
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    features, codes = siglip.encode(torch.stack([pixels, pixels]))
    assert features.shape == (2, 16, 32) and codes is None
    assert (siglip.num_tokens, siglip.dim, siglip.discrete, siglip.codebook_size) == (16, 32, False, None)
    assert not siglip.can_decode
    with pytest.raises(NotImplementedError):
        siglip.embed_codes(torch.zeros(1, 16, dtype=torch.long))
    assert siglip.describe()["name"] == "HFVisionSpace(SiglipVisionModel)" and "tokens=16" in repr(siglip)


def test_mean_std_defaults_follow_the_config_class(siglip: HFVisionSpace) -> None:
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    assert siglip.mean == [0.5, 0.5, 0.5] and siglip.std == [0.5, 0.5, 0.5]
    clip = HFVisionSpace(CLIP, config=TINY_HF)
    assert clip.mean == pytest.approx(OPENAI_CLIP_MEAN) and clip.std == pytest.approx(OPENAI_CLIP_STD)
    custom = HFVisionSpace(config=TINY_HF, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    assert custom.preprocess(image())[0].mean().item() == pytest.approx(250 / 255, abs=1e-3)


def test_preprocess_postprocess_roundtrip(siglip: HFVisionSpace) -> None:
    pixels = siglip.preprocess(image((32, 32)).convert("L"))
    assert pixels.shape == (3, 32, 32)
    back = siglip.postprocess(siglip.preprocess(image((32, 32))).unsqueeze(0))[0]
    assert back.size == (32, 32) and back.getpixel((3, 3)) == (250, 20, 90)
    with pytest.raises(ValueError, match="PIL"):
        siglip.preprocess(torch.zeros(3, 32, 32))


def test_clip_cls_patch_token_count() -> None:
    patch = HFVisionSpace(CLIP, config=TINY_HF, features="patch")
    cls_patch = HFVisionSpace(CLIP, config=TINY_HF, features="cls_patch")
    assert (patch.num_tokens, cls_patch.num_tokens) == (16, 17)
    only_patches, _ = patch.encode(batch())
    with_cls, _ = cls_patch.encode(batch())
    assert only_patches.shape == (2, 16, 32) and with_cls.shape == (2, 17, 32)
    torch.testing.assert_close(with_cls[:, 1:], only_patches)


def test_siglip_has_no_cls_token() -> None:
    with pytest.raises(ValueError, match="class token"):
        HFVisionSpace(config=TINY_HF, features="cls_patch")


def test_layer_choice_changes_output(siglip: HFVisionSpace) -> None:
    last = HFVisionSpace(config=TINY_HF, layer=-1)
    assert not torch.allclose(last.encode(batch())[0], siglip.encode(batch())[0])
    # The same seed gives the same random model; hidden_states[-1] and [2] are the same layer here.
    torch.testing.assert_close(HFVisionSpace(config=TINY_HF, layer=2).encode(batch())[0], last.encode(batch())[0])
    assert not torch.allclose(HFVisionSpace(config=TINY_HF, seed=1).encode(batch())[0], siglip.encode(batch())[0])
    with pytest.raises(ValueError, match="layer 5"):
        HFVisionSpace(config=TINY_HF, layer=5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="30.*8"):
        HFVisionSpace(config={**TINY_HF, "image_size": 30})
    with pytest.raises(ValueError, match="cannot import"):
        HFVisionSpace("transformers.NoSuchVisionModel", config=TINY_HF)
    with pytest.raises(ValueError, match="features"):
        HFVisionSpace(config=TINY_HF, features="cls")
    with pytest.raises(ValueError, match="not both"):
        HFVisionSpace(pretrained="some/model", config=TINY_HF)


def frozen_checks(space: ImageSpace, pixels: torch.Tensor) -> None:
    parent = nn.ModuleDict({"space": space, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training
    assert not any(m.training for m in space.modules())
    assert not any(p.requires_grad for p in space.parameters())
    features, _ = space.encode(pixels)
    assert not features.requires_grad


def test_spaces_are_frozen_by_default(siglip: HFVisionSpace, vit: TimmSpace) -> None:
    frozen_checks(siglip, batch())
    frozen_checks(vit, batch())


def test_trainable_spaces_train() -> None:
    for space in (HFVisionSpace(config=TINY_HF, trainable=True), TimmSpace(**TINY_TIMM, trainable=True)):
        space.train()
        assert space.training and all(p.requires_grad for p in space.parameters())
        space.encode(batch())[0].sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in space.parameters())
        space.eval()
        assert not space.training


def test_timm_patch_grid(vit: TimmSpace) -> None:
    features, codes = vit.encode(vit.preprocess(image()).unsqueeze(0))
    assert features.shape == (1, 16, 32) and codes is None  # class token dropped
    assert (vit.num_tokens, vit.dim, vit.image_size) == (16, 32, 32)
    assert vit.mean == [0.5, 0.5, 0.5]  # vit_tiny_patch16_224's pretrained_cfg
    first = TimmSpace(**TINY_TIMM, layer=0)
    assert len(first.model.blocks) == 1  # later blocks pruned
    assert not torch.allclose(first.encode(batch())[0], vit.encode(batch())[0])
    with pytest.raises(ValueError, match="30.*8"):
        TimmSpace(**{**TINY_TIMM, "img_size": 30})
    with pytest.raises(ValueError, match="layer 2"):
        TimmSpace(**TINY_TIMM, layer=2)


def test_timm_local_checkpoint(tmp_path: Path, vit: TimmSpace) -> None:
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.model.state_dict().items()}, str(path))
    loaded = TimmSpace(**TINY_TIMM, seed=3, checkpoint_path=str(path))
    torch.testing.assert_close(loaded.encode(batch())[0], vit.encode(batch())[0])
    assert not torch.allclose(TimmSpace(**TINY_TIMM, seed=3).encode(batch())[0], vit.encode(batch())[0])
    with pytest.raises(ValueError, match="not a file"):
        TimmSpace(**TINY_TIMM, checkpoint_path=str(tmp_path / "missing.safetensors"))


def test_affine_map_properties(siglip: HFVisionSpace) -> None:
    space = AffineSpace(siglip, strength=0.3, seed=5)
    q = space.rotation
    torch.testing.assert_close(q @ q.t(), torch.eye(32), atol=1e-5, rtol=0)
    assert (space.scale >= 0.7).all() and (space.scale <= 1.3).all() and (space.shift.abs() <= 0.3).all()
    base_features, _ = siglip.encode(batch())
    features, codes = space.encode(batch())
    torch.testing.assert_close(features, (base_features @ q) * space.scale + space.shift)
    torch.testing.assert_close(space.inverse(features), base_features, atol=1e-5, rtol=1e-5)
    assert codes is None and space.num_tokens == 16 and space.dim == 32 and space.image_size == 32
    assert torch.equal(space.preprocess(image()), siglip.preprocess(image()))
    assert space.describe()["strength"] == 0.3


def test_affine_strength_zero_is_identity(siglip: HFVisionSpace) -> None:
    space = AffineSpace(siglip, strength=0.0)
    torch.testing.assert_close(space.encode(batch())[0], siglip.encode(batch())[0])
    with pytest.raises(ValueError, match="strength"):
        AffineSpace(siglip, strength=-0.1)


def test_affine_deterministic_and_saved(siglip: HFVisionSpace) -> None:
    a, b, c = AffineSpace(siglip, 0.2, seed=1), AffineSpace(siglip, 0.2, seed=1), AffineSpace(siglip, 0.2, seed=2)
    for name in ("rotation", "scale", "shift"):
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert not torch.equal(getattr(a, name), getattr(c, name))
    state = a.state_dict()
    assert {"rotation", "scale", "shift"} <= set(state)
    c.load_state_dict(state)
    assert torch.equal(c.rotation, a.rotation)


def test_affine_on_vq_keeps_codes(vq: VQTokenizer) -> None:
    space = AffineSpace(vq, strength=0.1, seed=0)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    base_features, base_codes = vq.encode(pixels)
    features, codes = space.encode(pixels)
    assert torch.equal(codes, base_codes) and space.discrete and space.codebook_size == 1024
    torch.testing.assert_close(space.embed_codes(codes), features)
    assert not torch.allclose(features, base_features)
    torch.testing.assert_close(space.decode(features=features), vq.decode(codes=codes), atol=1e-4, rtol=1e-4)
    frozen_checks(space, pixels)


def test_pretrained_from_local_folder(tmp_path: Path) -> None:
    from transformers import CLIPImageProcessor

    source = HFVisionSpace(CLIP, config=TINY_HF, seed=4)
    source.model.save_pretrained(tmp_path / "with_proc")
    CLIPImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(tmp_path / "with_proc")
    loaded = HFVisionSpace(CLIP, pretrained=str(tmp_path / "with_proc"))
    assert loaded.mean == pytest.approx([0.1, 0.2, 0.3]) and loaded.std == pytest.approx([0.4, 0.5, 0.6])
    torch.testing.assert_close(loaded.encode(batch())[0], source.encode(batch())[0])
    source.model.save_pretrained(tmp_path / "bare")
    with pytest.warns(UserWarning, match="family defaults"):
        bare = HFVisionSpace(CLIP, pretrained=str(tmp_path / "bare"))
    assert bare.mean == pytest.approx(source.mean)
