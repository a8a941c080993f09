"""The pieces that let generation learn: 2-D image positions, noisy feedback, condition dropout, guidance."""
from __future__ import annotations

import pytest
import torch

from datamodules.smartwatch.source import SmartWatchSource
from zoo.catalog.presets import preset
from zoo.config import build
from zoo.eval.evaluation import _image_prompt
from zoo.model.adapters import GridPositionEmbedding
from zoo.model.generate import GenerationConfig, generate, generate_images
from zoo.model.processor import UNCONDITIONAL_PROMPT, unconditional_turn


@pytest.fixture(scope="module")
def generation_samples():
    source = SmartWatchSource(train=6, val=2, test=2, seed=0, size=64)
    return [s for s in (source.sample("train", i) for i in range(18)) if s.task == "generation"]


def _model(name: str, **overrides):
    torch.manual_seed(0)
    return build(preset(name, "smoke", **overrides)).eval()


def test_grid_positions_are_row_plus_column():
    grid = GridPositionEmbedding(16, 8)
    table = grid.table()
    assert table.shape == (16, 8)
    # token (r, c) = row r + column c: tokens of one row differ only by their columns' vectors
    assert torch.allclose(table[5] - table[4], grid.col[1] - grid.col[0])
    assert torch.allclose(table[4] - table[0], grid.row[1] - grid.row[0])
    odd = GridPositionEmbedding(10, 4)  # not a square: one vector per index
    assert odd.table().shape == (10, 4) and (odd.rows, odd.cols) == (10, 1)


@pytest.mark.parametrize("name", ["vq-vq", "siglip-siglip"])
def test_positions_change_reading_and_writing_and_decoding_agrees(name, generation_samples):
    plain, placed = _model(name), _model(name, image_positions="grid")
    assert hasattr(placed, "read_positions") and hasattr(placed, "write_positions")
    batch = placed.processor(generation_samples[:2])
    with torch.no_grad():
        placed.write_positions.row.add_(1.0)  # a visible place: the losses must change with it
        before = placed(batch)["image_loss"].mean()
        placed.write_positions.row.zero_(), placed.write_positions.col.zero_()
        zeroed = placed(batch)["image_loss"].mean()
        plain_loss = plain(plain.processor(generation_samples[:2]))["image_loss"].mean()
    assert not torch.isclose(before, zeroed)
    assert torch.isclose(zeroed, plain_loss, atol=1e-5)  # zero places = the model without them (same init)
    # The general decoder and the image-only decoder feed back the same placed tokens.
    with torch.no_grad():
        placed.write_positions.row.normal_(0, 0.5)
    prompt = _image_prompt(placed, generation_samples[:2])
    cfg = GenerationConfig(max_new_tokens=0, max_images=1)
    images = generate(placed, prompt, cfg, start_in_image=True).images
    written = generate_images(placed, prompt, cfg)
    for i in range(2):
        assert torch.allclose(images[i][0].float(), written[i].float(), atol=1e-4)


def test_feedback_noise_only_in_training(generation_samples):
    model = _model("siglip-siglip", feedback_noise=0.5)
    batch = model.processor(generation_samples[:2])
    with torch.no_grad():
        a, b = model(batch)["image_loss"], model(batch)["image_loss"]
        assert torch.equal(a, b)  # eval: no noise
        model.train()
        c = model(batch)["image_loss"]
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("arch", ["vq-vq", "siglip-siglip"])
def test_feedback_corruption_replaces_fed_back_tokens_only_in_training(generation_samples, arch):
    model = _model(arch, feedback_corruption=0.5)
    batch = model.processor(generation_samples[:2])
    with torch.no_grad():
        fed_eval, targets_eval = model.encode_write(batch)
        model.train()
        fed_train, targets_train = model.encode_write(batch)
    assert torch.equal(targets_eval, targets_train)  # the targets are never corrupted
    changed = (fed_eval - fed_train).abs().amax(-1) > 1e-6
    assert 0.3 < changed.float().mean() < 0.7, changed.float().mean()  # about half of the fed-back tokens


def test_condition_dropout_replaces_a_fixed_share_of_requests(generation_samples):
    source = SmartWatchSource(train=400, val=2, test=2, seed=0, size=64)
    many = [s for s in (source.sample("train", i) for i in range(600)) if s.task == "generation"]
    model = _model("vq-vq", condition_dropout=0.2)
    dropped = [model.processor._maybe_unconditional(s)[0]["content"] == UNCONDITIONAL_PROMPT for s in many]
    share = sum(dropped) / len(dropped)
    assert 0.12 < share < 0.28, share
    again = [model.processor._maybe_unconditional(s)[0]["content"] == UNCONDITIONAL_PROMPT for s in many]
    assert dropped == again  # deterministic
    assert all(model.processor._maybe_unconditional(s) == s.turns for s in many if s.task != "generation")
    off = _model("vq-vq")
    assert not any(off.processor._maybe_unconditional(s)[0]["content"] == UNCONDITIONAL_PROMPT for s in many)


def test_guidance_scale_one_is_conditional_and_other_scales_mix_both(generation_samples):
    from dataclasses import replace

    model = _model("vq-vq")
    samples = generation_samples[:3]
    prompt = _image_prompt(model, samples)
    nulls = _image_prompt(model, [replace(s, turns=[unconditional_turn(s.turns[0]), *s.turns[1:]]) for s in samples])
    plain = generate_images(model, prompt, GenerationConfig(guidance_scale=1.0), nulls)
    assert torch.equal(plain, generate_images(model, prompt, GenerationConfig()))
    # Scale 0 is the unconditional stream alone.
    zero = generate_images(model, prompt, GenerationConfig(guidance_scale=0.0), nulls)
    assert torch.equal(zero, generate_images(model, nulls, GenerationConfig()))
    guided = generate_images(model, prompt, GenerationConfig(guidance_scale=3.0), nulls)
    assert guided.shape == plain.shape and guided.dtype == torch.long


def test_sampled_codes_respect_top_k_and_seed(generation_samples):
    model = _model("vq-vq")
    prompt = _image_prompt(model, generation_samples[:2])
    cfg = GenerationConfig(image_temperature=1.0, image_top_k=1, seed=3)
    greedy = generate_images(model, prompt, GenerationConfig())
    assert torch.equal(generate_images(model, prompt, cfg), greedy)  # top-1 sampling is greedy
    wide = GenerationConfig(image_temperature=1.0, image_top_k=0, seed=3)
    assert torch.equal(generate_images(model, prompt, wide), generate_images(model, prompt, wide))


def test_conditional_baseline_uses_peers_sharing_the_stated_attributes():
    from zoo.eval.evaluation import conditional_baseline_cosine

    def rec(weather, corner, mentioned):
        return {"attrs": {"weather": weather, "weather_pos": corner, "battery_pos": "top-left", "mentioned": mentioned}}

    records = [rec("sunny", "top-right", ["time", "weather"]), rec("sunny", "bottom-left", ["time"]),
               rec("raining", "top-right", ["time", "weather"])]
    a, b, c = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[-1.0, 0.0]])
    target = torch.stack([a, b, c])  # [3, N=1, D=2]
    # 0: peers sharing "sunny" -> record 1 (cos 0); 1: states nothing -> mean of 0 and 2 = 0 vector...
    # use the cosine helper's convention (zero vector -> 0); 2: no raining peer -> mean of 0 and 1.
    got = conditional_baseline_cosine(records, target)
    expected = (0.0 + 0.0 + float(torch.nn.functional.cosine_similarity(torch.tensor([0.5, 0.5]), c[0], dim=0))) / 3
    assert got == pytest.approx(expected, abs=1e-6)
    assert conditional_baseline_cosine([{"attrs": {}}], target[:1]) is None


def test_train_on_inputs_labels_the_user_turns_but_never_image_positions(generation_samples):
    plain, inputs = _model("vq-vq"), _model("vq-vq", train_on_inputs=True)
    a, b = plain.processor(generation_samples[:2]), inputs.processor(generation_samples[:2])
    assert torch.equal(a["input_ids"], b["input_ids"])
    labelled_a, labelled_b = a["labels"] != -100, b["labels"] != -100
    assert (labelled_a <= labelled_b).all() and labelled_b.sum() > labelled_a.sum()  # more text labelled, none lost
    image = b["input_ids"] == inputs.backbone.token_ids["image_out"]
    assert not labelled_b[image].any()
    padded = b["attention_mask"] == 0
    assert not labelled_b[padded].any()
