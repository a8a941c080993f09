"""UnifiedVLM and its variants on smoke-scale configs: build, learn, train only what should, generate, round-trip."""
from __future__ import annotations

import pytest
import torch

from datamodules.smartwatch.source import SmartWatchSource
from zoo.catalog.presets import PRESETS, preset
from zoo.config import build
from zoo.model.generate import GenerationConfig, decode_images, generate
from zoo.model.unified import UnifiedVLM, trainable_parameter_count
from zoo.sample import Sample


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    source = SmartWatchSource(train=4, val=2, test=2, seed=0, size=64)
    return [source.sample("train", i) for i in range(6)]  # 2 images x (generation, vqa, caption)


def _model(name: str, **overrides) -> UnifiedVLM:
    torch.manual_seed(0)
    return build(preset(name, "smoke", **overrides))


@pytest.mark.parametrize("name", PRESETS)
def test_variant_learns_on_repeated_batch(name, samples):
    model = _model(name, lr=3e-3, projector_lr=3e-3)
    batch = model.processor(samples)
    assert batch["input_ids"].shape[0] == len(samples)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        loss, _ = model.loss(model(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9, losses


@pytest.mark.parametrize("name", ["siglip-siglip", "vq-siglip", "siglip-vq"])
def test_gradients_reach_only_trainable_parts(name, samples):
    model = _model(name)
    model.loss(model(model.processor(samples)))[0].backward()
    for pname, param in model.named_parameters():
        if pname.startswith(("read_space.", "write_space.")):
            assert param.grad is None, f"frozen space parameter {pname} got a gradient"
    parts = ["read_projector", "head", "backbone"]
    if model.write_projector is not model.read_projector:  # a shared projector is listed once, as read_projector
        parts.append("write_projector")
    for part in parts:
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(part + ".") and p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), f"{part} got no gradient"


def test_shared_projector_is_one_module():
    model = _model("siglip-siglip")
    assert model.write_projector is model.read_projector
    separate = _model("siglip-siglip", share_projector=False)
    assert separate.write_projector is not separate.read_projector


@pytest.mark.parametrize("name", PRESETS)
def test_cached_and_recompute_generation_agree(name, samples):
    model = _model(name).eval()
    # An untrained model never opens an image: bias <boi> so the image path runs in both modes.
    boi = model.backbone.token_ids["boi"]
    prompt = model.processor.prompt([s for s in samples if s.task == "generation"])
    logits_bias = torch.zeros(model.backbone.vocab_size)
    logits_bias[boi] = 1e4
    original = model.backbone.lm_logits

    def biased(hidden):
        return original(hidden) + logits_bias.to(hidden.dtype)

    model.backbone.lm_logits = biased  # type: ignore[method-assign]
    cfg = dict(max_new_tokens=4, max_images=1)
    cached = generate(model, prompt, GenerationConfig(**cfg, use_cache=True))
    recompute = generate(model, prompt, GenerationConfig(**cfg, use_cache=False))
    n = model.write_space.num_tokens
    assert all(len(imgs) == 1 and imgs[0].shape[0] == n for imgs in cached.images)
    assert cached.token_ids == recompute.token_ids
    for a, b in zip(cached.images, recompute.images):
        assert torch.allclose(a[0].float(), b[0].float(), atol=1e-4)
    if model.write_space.can_decode:
        pixels = decode_images(model, [imgs[0] for imgs in cached.images])
        assert pixels.shape[0] == len(cached.images) and pixels.shape[-1] == model.write_space.image_size


def test_every_variant_class_has_a_preset():
    import inspect

    import zoo.model.variants

    classes = {c for _, c in inspect.getmembers(zoo.model.variants, inspect.isclass)
               if issubclass(c, UnifiedVLM) and c is not UnifiedVLM}
    covered = {type(_model(name)) for name in PRESETS}
    assert classes and classes <= covered, f"variants without a preset (so untested): {classes - covered}"


@pytest.mark.parametrize("name", PRESETS)
def test_checkpoint_round_trip(name, tmp_path, samples):
    """Saved and reloaded by Lightning, every architecture gives the same losses, answers and images."""
    import lightning as L

    from zoo.eval.evaluation import evaluate_samples

    model = _model(name).eval()
    with torch.no_grad():  # move off the initialisation, so that a weight left behind would show
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn_like(param))
    batch = model.processor(samples)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(model)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    restored = type(model).load_from_checkpoint(path, weights_only=False).eval()
    assert type(restored) is type(model)
    with torch.no_grad():
        a, b = model(batch), restored(batch)
    for key in ("text_loss", "image_loss"):
        assert torch.allclose(a[key], b[key], atol=1e-6)
    config = GenerationConfig(max_new_tokens=6)
    before, after = evaluate_samples(model, samples, config), evaluate_samples(restored, samples, config)
    assert [r["task"] for r in before] == [r["task"] for r in after]
    assert sum(r["task"] == "generation" for r in before) == 2 and all(
        r["tokens"] is not None for r in before if r["task"] == "generation")
    for x, y in zip(before, after):
        assert x.get("answer") == y.get("answer")
        if x["task"] == "generation":
            assert torch.allclose(x["tokens"].float(), y["tokens"].float(), atol=1e-5)


@pytest.fixture(scope="module")
def talking_model(samples) -> tuple[UnifiedVLM, list[Sample]]:
    """siglip-siglip fitted for a few steps to the understanding samples: it answers in varied free text."""
    understanding = [s for s in samples if s.task in ("vqa", "caption")]
    source = SmartWatchSource(train=8, val=2, test=2, seed=0, size=64)
    understanding += [source.sample("train", i) for i in range(6, 12) if i % 3]  # 4 more: 8 prompts in all
    model = _model("siglip-siglip")
    batch = model.processor(understanding)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(25):
        loss = model(batch)["text_loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), understanding


def test_kv_cache_matches_recompute_on_free_text_in_a_left_padded_batch(talking_model):
    """Free decoding (no forced token): the KV-cached path, the reference path that recomputes the whole
    sequence every step (use_cache=False) and each prompt decoded alone (no padding) write the same text."""
    model, understanding = talking_model
    prompt = model.processor.prompt(understanding)
    pads = (prompt["attention_mask"] == 0).sum(1)
    assert pads.min() == 0 and pads.max() >= 2, "the batch must be left-padded by different amounts"
    config = dict(max_new_tokens=16)
    cached = generate(model, prompt, GenerationConfig(**config, use_cache=True))
    recompute = generate(model, prompt, GenerationConfig(**config, use_cache=False))
    alone = [generate(model, model.processor.prompt([s]), GenerationConfig(**config)).token_ids[0] for s in understanding]
    # The test must be able to fail: the answers are long and differ between prompts.
    assert len({tuple(t) for t in cached.token_ids}) >= 4 and max(len(t) for t in cached.token_ids) >= 8
    assert cached.token_ids == recompute.token_ids
    assert cached.token_ids == alone


def test_checkpoint_of_other_architecture_is_refused(tmp_path):
    import lightning as L

    model = _model("siglip-siglip")
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(model)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    other = _model("vq-vq")
    state = torch.load(path, weights_only=False)["state_dict"]
    with pytest.raises(RuntimeError, match="another architecture"):
        other.load_state_dict(state)


def test_trainable_counts_full_lora_frozen():
    counts = {}
    for mode in ("full", "lora", "frozen"):
        spec = preset("siglip-siglip", "smoke")
        spec["init_args"]["backbone"]["init_args"].update(train_mode=mode, lora_r=4, lora_alpha=8)
        counts[mode] = trainable_parameter_count(build(spec))[0]
    assert counts["full"] > counts["lora"] > counts["frozen"] > 0


def test_subclass_is_a_few_lines(samples):
    class SquaredErrorVLM(UnifiedVLM):
        """A new architecture: a different generation objective, nothing else."""

        def image_loss(self, prediction, target):
            return (prediction - target).pow(2).sum(-1)

    spec = preset("siglip-siglip", "smoke")["init_args"]
    model = SquaredErrorVLM(
        backbone=spec["backbone"], read_space=spec["space"], write_space=spec["space"], image_loss="mse"
    )
    out = model(model.processor(samples))
    assert out["image_loss"].shape[0] == 2 * model.write_space.num_tokens
    assert torch.isfinite(out["image_loss"]).all()


def test_init_from_copies_matching_weights(tmp_path):
    import lightning as L

    first = _model("siglip-siglip")
    with torch.no_grad():
        first.read_projector[0].weight.add_(1.0)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(first)
    path = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(path)
    second = _model("siglip-siglip", init_from=str(path))
    assert torch.equal(second.read_projector[0].weight, first.read_projector[0].weight)
    saved = torch.load(path, weights_only=True)
    assert saved["hyper_parameters"].get("init_from") is None
    with pytest.raises(FileNotFoundError, match="init_from"):
        _model("siglip-siglip", init_from=str(tmp_path / "missing.ckpt"))


def test_init_from_reads_zoo_names_and_safetensors(tmp_path):
    """A stage 2 starts from a published zoo model by name (sha256-checked) or from its .safetensors file."""
    from safetensors.torch import save_file

    from zoo.catalog import hub
    from zoo.catalog.registry import UnknownModelError, create_model, get_entry

    entry = get_entry("smartwatch-vq-vq-study")
    published = hub.load_state_dict_file(hub.fetch(entry.weights))
    # SigLIP-VQ shares the LM, write projector and head names with VQ-VQ; its MLP read projector does not fit.
    model = create_model("siglip-vq.study", init_from="zoo:smartwatch-vq-vq-study")
    assert torch.equal(model.head.weight, published["head.weight"])
    assert torch.equal(model.write_projector.weight, published["write_projector.weight"])
    fresh = create_model("siglip-vq.study")
    assert not torch.equal(fresh.head.weight, published["head.weight"])
    path = tmp_path / "stage1.safetensors"
    save_file({"head.weight": published["head.weight"].clone()}, str(path))
    assert torch.equal(create_model("siglip-vq.study", init_from=str(path)).head.weight, published["head.weight"])
    with pytest.raises(UnknownModelError, match="no-such-model"):
        create_model("siglip-vq.study", init_from="zoo:no-such-model")


@pytest.mark.parametrize("name,flag", [("siglip-siglip", "cache_features"), ("vq-vq", "cache_codes")])
def test_cached_encoder_outputs_give_the_same_losses(name, flag, samples):
    plain = _model(name).eval()
    cached = _model(name, **{flag: True}).eval()
    cached.load_state_dict(plain.state_dict())
    batch, cached_batch = plain.processor(samples), cached.processor(samples)
    side = "features" if flag == "cache_features" else "codes"
    assert cached_batch[f"write_{side}"] is not None and cached_batch["write_pixels"] is None
    with torch.no_grad():
        a, b = plain(batch), cached(cached_batch)
    for key in ("text_loss", "image_loss"):
        assert torch.allclose(a[key], b[key], atol=1e-5)
    assert len(cached.processor.code_cache) == len({k for s in samples for k in s.image_keys})


def test_cosine_outputs_are_fed_back_at_the_written_features_norm(samples):
    model = _model("siglip-siglip").train()
    batch = model.processor(samples)
    hidden = torch.randn(3, model.backbone.hidden_size)
    raw, _ = model.next_image_token(hidden)
    assert torch.equal(raw, model.head(hidden)), "before training no norm is known: the raw prediction"
    model(batch)
    _, targets = model.encode_write(batch)
    assert model.write_feature_norm.item() == pytest.approx(targets.norm(dim=-1).mean().item(), rel=1e-5)
    fed, embedding = model.next_image_token(hidden)
    assert torch.allclose(fed.norm(dim=-1), model.write_feature_norm.expand(3), rtol=1e-4)
    assert torch.allclose(torch.nn.functional.cosine_similarity(fed, raw, dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(embedding, model.write_projector(fed.unsqueeze(1)).squeeze(1))
    model.eval()(batch)  # evaluation passes leave the statistic alone
    assert model.write_feature_norm.item() == pytest.approx(targets.norm(dim=-1).mean().item(), rel=1e-5)
    older = {k: v for k, v in model.state_dict().items() if k != "write_feature_norm"}
    fresh = _model("siglip-siglip")
    fresh.load_state_dict(older)  # checkpoints from before the statistic still load
    assert fresh.write_feature_norm.item() == 0.0
    assert not hasattr(_model("vq-vq"), "write_feature_norm")


def test_loss_is_text_plus_alpha_times_image(samples):
    model = _model("siglip-vq", alpha=0.3)
    out = model(model.processor(samples))
    total, parts = model.loss(out)
    assert set(parts) == {"text_loss", "image_loss"}
    assert torch.allclose(parts["text_loss"], out["text_loss"].mean())
    assert torch.allclose(total, out["text_loss"].mean() + 0.3 * out["image_loss"].mean())
    understanding = model(model.processor([s for s in samples if s.task != "generation"]))
    total, parts = model.loss(understanding)
    assert set(parts) == {"text_loss"} and torch.equal(total, parts["text_loss"])


def test_settings_groups_keep_the_flat_arguments():
    from zoo.eval.writer import EvalWriter
    from zoo.model.settings import EvalSettings, OptimSettings

    model = _model("vq-vq", lr=1e-3, projector_lr=2e-3, weight_decay=0.1, eval_max_new_tokens=7, eval_image_top_k=3)
    assert model.optim_settings == OptimSettings(lr=1e-3, projector_lr=2e-3, weight_decay=0.1, warmup_ratio=0.03)
    assert model.eval_settings == EvalSettings(max_new_tokens=7, image_top_k=3)
    config = model.generation_config()
    assert (config.max_new_tokens, config.image_top_k, config.seed) == (7, 3, 0)
    optimizer = model.configure_optimizers()["optimizer"]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.1]
    assert [g["initial_lr"] for g in optimizer.param_groups] == [1e-3, 2e-3]
    assert model.hparams["lr"] == 1e-3 and model.hparams["eval_max_new_tokens"] == 7  # checkpoints keep flat names
    assert [type(c) for c in model.configure_callbacks()] == [EvalWriter]  # test/predict outputs, any trainer


def test_emphasis_maps_weigh_the_written_tokens_of_their_patches(samples):
    from datamodules.smartwatch.render import part_boxes
    from datamodules.smartwatch.spec import sample_watch

    model = _model("vq-vq").eval()
    weighted = SmartWatchSource(train=4, val=2, test=2, seed=0, size=64, emphasis={"weather": 9.0})
    emphasised = [weighted.sample("train", i) for i in range(6)]
    assert [bool(s.emphasis) for s in emphasised] == [s.task == "generation" for s in emphasised]
    assert model.processor(samples)["write_weights"] is None  # no maps: the plain objective
    batch = model.processor(emphasised)
    weights = batch["write_weights"]
    n = model.write_space.num_tokens
    side = int(n ** 0.5)
    assert weights.shape == (2, n)
    for row, image in enumerate((0, 1)):  # the generation samples are items 0 and 3: images 0 and 1
        x0, y0, x1, y1 = part_boxes(sample_watch(0, "train", image), 64)["weather"]
        cell = 64 // side
        inside = {(r, c) for r in range(side) for c in range(side)
                  if r * cell < y1 and (r + 1) * cell > y0 and c * cell < x1 and (c + 1) * cell > x0}
        grid = weights[row].view(side, side)
        assert all(grid[r, c] > 1 for r, c in inside) and grid.sum() == pytest.approx(n + 8 * 12 * 12 / cell**2)
        assert all(grid[r, c] == 1 for r in range(side) for c in range(side) if (r, c) not in inside)
    with torch.no_grad():
        plain_out, out = model(model.processor(samples)), model(batch)
    assert torch.equal(plain_out["image_loss"], out["image_loss"])  # the maps change the objective only
    _, parts = model.loss(out)
    total, _ = model.loss(out)
    expected = parts["text_loss"] + model.alpha * (out["image_weight"] * out["image_loss"]).mean()
    assert torch.allclose(total, expected) and not torch.allclose(total, model.loss(plain_out)[0])
    with pytest.raises(ValueError, match="emphasis part 'hands'"):
        SmartWatchSource(train=4, val=2, test=2, emphasis={"hands": 2.0})
    with pytest.raises(ValueError, match="2 emphasis maps for 1 images"):
        Sample("generation", emphasised[0].turns, emphasised[0].images, emphasis=[None, None]).validate()
