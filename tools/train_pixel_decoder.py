"""Training the pixel view of a continuous space (`zoo.spaces.pixel_decoder.FeatureDecoder`) on fresh renders.

    python -m tools.train_spaces decoder --out zoo/assets/spaces/siglip-smartwatch-tiny-v2-decoder-l1.safetensors \
        --set 'space={"class_path": "zoo.spaces.hf.HFVisionSpace", "init_args": {"model_class":
               "transformers.SiglipVisionModel", "pretrained": "zoo:siglip-smartwatch-tiny-v2", "layer": 1}}'

Loss: detail-weighted MSE + L1 to the render, plus `reader_weight` x the frozen attribute reader's loss on the
decoded image (`tools.space_objectives`). The card's `ceiling_*` metrics are the reader on decoded *true*
features of fresh test renders: the best any generated features can score through this decoder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from datamodules.smartwatch.reader import DEFAULT_READER
from tools import space_eval as ev
from tools.space_objectives import ReaderConsistency, weighted_reconstruction


def train_decoder(out: str | Path, *, space: dict[str, Any], seed: int = 0, steps: int = 1500, batch_size: int = 32,
                  lr: float = 1e-3, width: int = 128, detail_weight: float = 4.0, l1_weight: float = 0.2,
                  reader_weight: float = 0.1, reader: str = DEFAULT_READER, judge: str | None = None,
                  eval_test: int = 500, threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Fit a FeatureDecoder from `space` (an ImageSpace spec) tokens to its renders; save to `out`; return its card."""
    from tools.train_spaces import _card, _progress, _reader_metrics, _setup, _tick
    from zoo.config import build
    from zoo.spaces.pixel_decoder import FeatureDecoder, load_decoder, save_decoder

    env = _setup(seed, threads)
    frozen = build(space).eval()
    size = frozen.image_size
    layer = space.get("init_args", {}).get("layer")
    decoder = FeatureDecoder(frozen.num_tokens, frozen.dim, size, width=width, layer=layer,
                             space=space.get("init_args", {}).get("pretrained"))
    consistency = ReaderConsistency(reader) if reader_weight > 0 else None
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: ev.cosine_lr(s, steps, max(1, steps // 20)))
    decoder.train()
    with _progress(progress) as bar:
        task = bar.add_task("decoder", total=steps, info="")
        for step in range(steps):
            specs = ev.watches(seed, "train", range(step * batch_size, (step + 1) * batch_size))
            pixels = ev.render_pixels(specs, size)  # [-1, 1], the decoder's output convention
            with torch.no_grad():
                tokens, _ = frozen.encode(ev.to_space_pixels(pixels, frozen))
            recon = decoder(tokens)
            rec_loss = weighted_reconstruction(recon, pixels, detail_weight, l1_weight)
            loss = rec_loss + (reader_weight * consistency(recon, specs) if consistency is not None else 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            _tick(bar, task, step, f"rec {rec_loss.item():.4f} loss {loss.item():.3f}")
    out = Path(out)
    digest = save_decoder(decoder.eval(), out)
    saved = load_decoder(out)
    decode_true = lambda px: saved(frozen.encode(ev.to_space_pixels(px, frozen))[0])  # noqa: E731
    metrics = {f"ceiling_{k}": v for k, v in _reader_metrics(decode_true, seed, eval_test, size, reader, judge).items()}
    with torch.no_grad():
        px = ev.render_pixels(ev.watches(seed, "test", range(64)), size)
        metrics["psnr_db@64"] = float(ev.psnr(px, decode_true(px)).mean())
    card = _card(Path(out).stem, out, env, seed, metrics, steps, batch_size,
                 f"ceiling_*: the attribute reader (judge_*: an independent reader) on decode(true features) of "
                 f"{eval_test} fresh test renders; trained with detail weight {detail_weight}, reader weight "
                 f"{reader_weight}")
    card["decoder_config"] = dict(saved.config)
    assert card["sha256"] == digest
    return card
