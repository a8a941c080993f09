"""`unizoo generate` (tools.generate): load a briefly trained smoke model from its run and answer / draw."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from datamodules.mixed import MixedTaskDataModule
from datamodules.smartwatch.source import SmartWatchSource
from tools.generate import find_checkpoint, generate, load_model
from zoo.catalog.presets import preset
from zoo.config import build


def _trained_run(root, name: str, **overrides):
    """A run directory holding checkpoints/last.ckpt of `name` at smoke scale after 2 training steps."""
    torch.manual_seed(0)
    # The optimiser settings are spelled out: a spec built outside the CLI records only what it was given.
    model = build(preset(name, "smoke", lr=1e-3, projector_lr=1e-3, weight_decay=0.0, warmup_ratio=0.0, **overrides))
    data = MixedTaskDataModule([SmartWatchSource(train=4, val=1, test=1, size=32)], batch_size=4)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1)
    trainer.fit(model, datamodule=data)
    (root / "checkpoints").mkdir(parents=True)
    trainer.save_checkpoint(root / "checkpoints" / "last.ckpt")
    return root, model


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    return _trained_run(tmp_path_factory.mktemp("vq-vq"), "vq-vq")


@pytest.fixture()
def watch_png(tmp_path):
    path = tmp_path / "watch.png"
    SmartWatchSource(train=1, val=1, test=1, size=48).sample("test", 1).images[0].save(path)
    return path


def test_question_about_an_image(vq_run, watch_png, capsys):
    run, _ = vq_run
    generate(str(run), "what time is it?", image=str(watch_png), max_new_tokens=5)
    answer = capsys.readouterr().out
    assert answer.endswith("\n") and "Traceback" not in answer
    # Greedy decoding is deterministic: the same request gives the same printed answer.
    generate(str(run), "what time is it?", image=str(watch_png), max_new_tokens=5)
    assert capsys.readouterr().out == answer


def test_generation_request_writes_a_png(vq_run, tmp_path, capsys):
    run, model = vq_run
    out = tmp_path / "out"
    generate(str(run / "checkpoints" / "last.ckpt"), "please draw a smart watch reading 10:15:00.", out=str(out),
             max_new_tokens=3, draw=True)
    printed = capsys.readouterr().out
    png = out / "image-0.png"
    assert f"image written to {png}" in printed
    with Image.open(png) as im:
        assert im.size == (model.write_space.image_size,) * 2 and im.mode == "RGB"


def test_continuous_output_is_saved_as_features(tmp_path, capsys):
    run, model = _trained_run(tmp_path / "run", "siglip-siglip")
    out = tmp_path / "out"
    generate(str(run), "please draw a smart watch.", out=str(out), max_new_tokens=2, draw=True)
    assert "cannot be shown as pixels" in capsys.readouterr().out
    features = load_file(str(out / "image-0.safetensors"))["features"]
    assert features.shape == (model.write_space.num_tokens, model.write_space.dim)


def test_continuous_output_with_a_pixel_decoder_is_drawn_as_png(tmp_path, capsys):
    from zoo.spaces.pixel_decoder import FeatureDecoder, save_decoder

    space = build(preset("siglip-siglip", "smoke")["init_args"]["space"])
    decoder_file = tmp_path / "decoder.safetensors"
    save_decoder(FeatureDecoder(space.num_tokens, space.dim, space.image_size, width=32), decoder_file)
    run, model = _trained_run(tmp_path / "run", "siglip-siglip",
                              space={"init_args": {"pixel_decoder": str(decoder_file)}})
    assert model.write_space.can_decode
    out = tmp_path / "out"
    generate(str(run), "please draw a smart watch.", out=str(out), max_new_tokens=2, draw=True)
    assert "image written to" in capsys.readouterr().out
    with Image.open(out / "image-0.png") as picture:
        assert picture.size == (space.image_size, space.image_size)


def test_loaded_model_is_the_trained_one(vq_run):
    run, trained = vq_run
    loaded = load_model(run, device="cpu")
    assert type(loaded) is type(trained)
    own = trained.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, own[key]), key


def test_run_directory_resolves_to_last_checkpoint(tmp_path):
    (tmp_path / "version_0" / "checkpoints").mkdir(parents=True)
    (tmp_path / "version_0" / "checkpoints" / "epoch=0-step=5.ckpt").write_bytes(b"x")
    (tmp_path / "version_0" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert find_checkpoint(tmp_path).name == "last.ckpt"


@pytest.mark.parametrize("what", ["missing", "empty_dir", "not_a_checkpoint"])
def test_bad_checkpoint_is_a_clear_error(tmp_path, what):
    target = tmp_path / "nothing"
    if what == "empty_dir":
        target.mkdir()
    elif what == "not_a_checkpoint":
        target = tmp_path / "junk.ckpt"
        target.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=str(target.name)):
        generate(str(target), "hello")


def test_unreadable_image_is_a_clear_error(vq_run, tmp_path):
    run, _ = vq_run
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is no image")
    with pytest.raises(ValueError, match="broken.png.*cannot be read"):
        generate(str(run), "what time is it?", image=str(bad))
    with pytest.raises(ValueError, match="missing.png: no such file"):
        generate(str(run), "what time is it?", image=str(tmp_path / "missing.png"))


def test_command_line_takes_ckpt_and_prompt_as_flags(vq_run, watch_png, capsys):
    from tools.cli import main

    run, _ = vq_run
    # The syntax of the README and the issue: `unizoo generate --ckpt RUN --prompt "..." [--image FILE]`.
    main(["generate", "--ckpt", str(run), "--prompt", "what time is it?", "--image", str(watch_png),
          "--max_new_tokens", "5"])
    by_flags = capsys.readouterr().out
    generate(str(run), "what time is it?", image=str(watch_png), max_new_tokens=5)
    assert by_flags == capsys.readouterr().out
    with pytest.raises(ValueError, match="--prompt is required"):
        main(["generate", "--ckpt", str(run)])
