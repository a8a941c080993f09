"""Training the zoo's tiny frozen spaces on fresh smart-watch renders (the tiny stand-ins for SigLIP and VQ-16).

* `train_siglip`: a tiny SigLIP vision tower (the tiny preset's config) and a bag-of-n-grams text tower, trained
  with SigLIP's pairwise sigmoid loss on renders and captions that state every attribute. Only the vision
  tower ships, in Hugging Face format (config.json, model.safetensors, preprocessor_config.json), so
  `HFVisionSpace(model_class="transformers.SiglipVisionModel", pretrained=<dir>)` loads it.
* `train_vq`: `VQTokenizer(variant="tiny", image_size=64)` trained with LlamaGen's codebook and commitment
  losses plus an MSE + L1 reconstruction loss (no GAN, no perceptual loss); ships as one safetensors file.

Every batch is a new watch of the train split (index = step * batch + i), so runs are deterministic from the
seed and never see an image twice. Metrics are computed from the saved files (`tools.space_eval`) and, with
`--entry`, written with the sha256 into a zoo entry JSON (`zoo/assets/weights/*.json` ships it).

    python -m tools.train_spaces siglip --out zoo/assets/spaces/siglip-smartwatch-tiny \
        --entry zoo/assets/weights/siglip-smartwatch-tiny.json
    python -m tools.train_spaces vq --out zoo/assets/spaces/vq-smartwatch-tiny.safetensors \
        --entry zoo/assets/weights/vq-smartwatch-tiny.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.nn import functional as F

from datamodules.smartwatch.reader import DEFAULT_READER, _Heads, reader_loss, watch_labels
from tools import space_eval as ev
from tools.space_objectives import ReaderConsistency, hard_negative_batch, weighted_reconstruction
from zoo.catalog import hub, presets

IMAGE_SIZE = 64
SIGLIP_NAME, VQ_NAME = "siglip-smartwatch-tiny", "vq-smartwatch-tiny"
CAPTION_TOKENS = 64  # the longest full caption has 59 tokens


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled)


def _tick(bar: Progress, task: Any, step: int, info: str) -> None:
    """Advance the bar; without a terminal (nohup, CI) also print a plain line every 10 steps."""
    bar.update(task, advance=1, info=info)
    if not bar.console.is_terminal and not bar.disable and step % 10 == 0:
        print(f"{bar.tasks[0].description} step {step + 1}/{bar.tasks[0].total} {info} "
              f"({bar.tasks[0].elapsed or 0:.0f} s)", flush=True)


def _setup(seed: int, threads: int | None) -> dict[str, Any]:
    """Seed torch, fix the thread count, and record the machine's state for the card."""
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    return {"threads": torch.get_num_threads(), "loadavg_at_start": round(os.getloadavg()[0], 2), "t0": time.time()}


def _wall(env: dict[str, Any]) -> str:
    minutes = (time.time() - env["t0"]) / 60
    return (f"{minutes:.1f} min on {env['threads']} CPU thread(s) of a shared 2-core machine "
            f"(load average {env['loadavg_at_start']} at start)")


# ----------------------------------------------------------------------------- SigLIP


class TextBatcher:
    """Captions -> fixed-length token ids, padded at the end as SigLIP does (it pools the last position)."""

    def __init__(self, length: int) -> None:
        from transformers import AutoTokenizer

        from zoo.config import resolve_asset

        self.tokenizer = AutoTokenizer.from_pretrained(resolve_asset(presets.TOKENIZER))
        self.length = length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """Token ids [B, length] (truncated or padded)."""
        return self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.length,
                              return_tensors="pt")["input_ids"]


def _siglip_batch(seed: int, start: int, size: int, batcher: TextBatcher,
                  group: int = 1) -> tuple[torch.Tensor, torch.Tensor, list]:
    """A batch of renders and full captions; with `group` > 1, groups of hard negatives (time and battery differ)."""
    anchors = ev.watches(seed, "train", range(start // group, (start + size) // group))
    specs = hard_negative_batch(anchors, group, seed, start // group) if group > 1 else anchors
    # Caption phrasing is drawn per (watch index); variants of an anchor get their own draw.
    captions = [ev.full_caption(s, seed, "train", start + i) for i, s in enumerate(specs)]
    return ev.render_pixels(specs, IMAGE_SIZE), batcher(captions), specs


class BagOfNgrams(torch.nn.Module):
    """The text tower: mean of learned word and word-bigram embeddings, then LayerNorm + linear.

    A bag rather than a SigLIP text transformer: at this budget (a few thousand pairs) two transformers
    trained from scratch stayed at the trivial all-negative solution, while a bag separates captions from the
    first step. Bigrams keep some order ("0 3" vs "3 0" in times; which corner follows which item).
    """

    def __init__(self, vocab_size: int, dim: int, pad_id: int) -> None:
        super().__init__()
        self.vocab_size, self.pad_id = vocab_size, pad_id
        self.embed = torch.nn.Embedding(vocab_size + vocab_size * vocab_size, dim)
        self.out = torch.nn.Sequential(torch.nn.LayerNorm(dim), torch.nn.Linear(dim, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] (padded with pad_id) -> embeddings [B, dim]."""
        bigrams = self.vocab_size + ids[:, :-1] * self.vocab_size + ids[:, 1:]
        grams = torch.cat([ids, bigrams], 1)
        real = (ids != self.pad_id).float()
        mask = torch.cat([real, real[:, :-1] * real[:, 1:]], 1)
        summed = (self.embed(grams) * mask.unsqueeze(-1)).sum(1)
        return self.out(summed / mask.sum(1, keepdim=True).clamp_min(1))


def sigmoid_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """SigLIP's loss: every image-text pair is a binary match/no-match problem (mean over images)."""
    logits = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).t() * scale.exp() + bias
    labels = 2 * torch.eye(len(logits)) - 1
    return -F.logsigmoid(labels * logits).sum() / len(logits)


def train_siglip(out: str | Path, *, seed: int = 0, steps: int = 2000, batch_size: int = 32, lr: float = 5e-4,
                 vision_config: dict[str, Any] | None = None, hard_negatives: int = 4, read_layer: int = 1,
                 caption_weight: float = 1.0, eval_fit: int = 1000, eval_test: int = 500, threads: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Train the tiny SigLIP pair, save the vision tower to folder `out`; return its card (metrics from the saved files).

    `hard_negatives`: batches are groups of this many watches differing only in time and battery (1: random
    batches, the first release). The card adds linear probes on the flattened tokens of `read_layer`, the
    tokens the tiny recipes' LM reads. `caption_weight`: an auxiliary structured-caption loss, small heads
    predicting every caption field (time, battery, weather, corners) from the pooled output. SigLIP 2 adds a
    captioning decoder (LocCa) to the sigmoid loss for the same reason: contrastive training alone keeps
    what separates a batch cheaply (weather, corners) and suppresses fine detail (the clock; measured:
    hard negatives alone left the layer-1 hour probe at 0.68). The heads are thrown away with the text tower.
    """
    if batch_size % max(1, hard_negatives):
        raise ValueError(f"train_siglip: batch_size {batch_size} is not a multiple of hard_negatives {hard_negatives}")
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    from zoo.spaces.hf import HFVisionSpace

    # --- setup
    env = _setup(seed, threads)
    vcfg = {**presets.siglip("tiny")["init_args"]["config"], **(vision_config or {})}
    batcher = TextBatcher(CAPTION_TOKENS)
    tok = batcher.tokenizer
    vision = SiglipVisionModel(SiglipVisionConfig(**vcfg))
    text = BagOfNgrams(len(tok), vcfg["hidden_size"], tok.pad_token_id)
    fields = _Heads(vcfg["hidden_size"])  # the structured caption: every attribute a full caption states
    # SigLIP's initial temperature (t = log 10); the bias starts at -log(batch), the prior of a match here.
    scale = torch.nn.Parameter(torch.tensor(10.0).log())
    bias = torch.nn.Parameter(torch.tensor(-math.log(batch_size)))
    params = [*vision.parameters(), *text.parameters(), *fields.parameters(), scale, bias]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: ev.cosine_lr(s, steps, max(1, steps // 20)))

    # --- fit
    vision.train(), text.train()
    with _progress(progress) as bar:
        task = bar.add_task("siglip", total=steps, info="")
        for step in range(steps):
            pixels, ids, specs = _siglip_batch(seed, step * batch_size, batch_size, batcher, max(1, hard_negatives))
            pooled = vision(pixel_values=pixels).pooler_output
            loss = sigmoid_loss(pooled, text(ids), scale, bias)
            if caption_weight > 0:
                loss = loss + caption_weight * reader_loss(fields(pooled), watch_labels(specs))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            _tick(bar, task, step, f"loss {loss.item():.3f}")

    # --- save (vision tower only) and measure from the saved folder
    vision.eval(), text.eval()
    out = Path(out)
    vision.save_pretrained(out, safe_serialization=True)
    SiglipImageProcessor(size={"height": vcfg["image_size"], "width": vcfg["image_size"]},
                         image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(out)
    space = HFVisionSpace(model_class="transformers.SiglipVisionModel", pretrained=str(out))
    pooled = lambda px: space.model(pixel_values=px).pooler_output  # noqa: E731
    metrics = ev.probe_accuracies(pooled, seed, vcfg["image_size"], eval_fit, eval_test)
    # The same probes at the size the tests recompute (`ev.CHECK_FIT` / `ev.CHECK_TEST`), for a tight comparison.
    check = ev.probe_accuracies(pooled, seed, vcfg["image_size"], ev.CHECK_FIT, ev.CHECK_TEST)
    metrics.update({f"{k}@{ev.CHECK_TEST}": v for k, v in check.items()})
    specs = ev.watches(seed, "test", range(eval_test))
    with torch.no_grad():
        image_emb = ev.encode_batches(pooled, specs, vcfg["image_size"])
        captions = [ev.full_caption(s, seed, "test", i) for i, s in enumerate(specs)]
        text_emb = torch.cat([text(batcher(captions[i:i + 128]))
                              for i in range(0, len(captions), 128)])
    metrics.update(ev.retrieval_recall(image_emb, text_emb))
    read = HFVisionSpace(model_class="transformers.SiglipVisionModel", pretrained=str(out), layer=read_layer)
    tokens = ev.token_probe_accuracies(lambda px: read.encode(px)[0], seed, vcfg["image_size"], 1500, eval_test)
    metrics.update({f"layer{read_layer}_{k}": v for k, v in tokens.items()})
    return _card(SIGLIP_NAME, out / "model.safetensors", env, seed, metrics, steps, batch_size,
                 f"probes fitted on {eval_fit} val renders, scored on {eval_test} test renders (pooler output; "
                 f"layer{read_layer}_token_probe_*: flattened layer-{read_layer} tokens, 1500 val fit); "
                 f"hard-negative groups of {hard_negatives}; structured-caption weight {caption_weight}; "
                 f"retrieval among the {eval_test} test captions (text tower not shipped)")


# ----------------------------------------------------------------------------- VQ


def train_vq(out: str | Path, *, seed: int = 0, steps: int = 3000, batch_size: int = 32, lr: float = 5e-4,
             overrides: dict[str, Any] | None = None, entropy_weight: float = 0.05, l1_weight: float = 0.2,
             detail_weight: float = 4.0, reader_weight: float = 0.1, reader: str = DEFAULT_READER,
             judge: str | None = None, eval_test: int = 500, threads: int | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Train `VQTokenizer(variant="tiny")` on fresh renders, save its state dict to `out` (.safetensors); return its card.

    Loss: detail-weighted MSE + L1, LlamaGen's codebook/commitment terms, and `reader_weight` x the frozen
    attribute reader's loss on the reconstruction (`tools.space_objectives`). The card reports what the
    reader reads on reconstructions of fresh test renders, and, with `judge`, what an independently
    trained reader reads (the training reader could be fooled by its own blind spots; a second one checks).
    """
    from zoo.spaces.vq import VQTokenizer

    # --- setup
    env = _setup(seed, threads)
    init = {**presets.vq("tiny")["init_args"], **(overrides or {})}
    consistency = ReaderConsistency(reader) if reader_weight > 0 else None
    # The entropy term only shapes training (it keeps the codebook in use); inference never reads it.
    tokenizer = VQTokenizer(**init, entropy_weight=entropy_weight, trainable=True)
    vq, size = tokenizer.model, tokenizer.image_size
    opt = torch.optim.Adam(vq.parameters(), lr=lr, betas=(0.9, 0.95))  # LlamaGen's betas
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: ev.cosine_lr(s, steps, max(1, steps // 20)))

    # --- fit
    vq.train()
    with _progress(progress) as bar:
        task = bar.add_task("vq", total=steps, info="")
        for step in range(steps):
            specs = ev.watches(seed, "train", range(step * batch_size, (step + 1) * batch_size))
            pixels = ev.render_pixels(specs, size)
            recon, losses = vq(pixels)
            rec_loss = weighted_reconstruction(recon, pixels, detail_weight, l1_weight)
            loss = rec_loss + sum(losses.values())
            if consistency is not None:
                loss = loss + reader_weight * consistency(recon, specs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            _tick(bar, task, step, f"rec {rec_loss.item():.4f} usage {vq.quantize.usage():.2f}")

    # --- save and measure from the saved file
    vq.eval()
    out = Path(out)
    # One metadata key: safetensors writes several in hash-map order, which would change the file's sha256.
    digest = hub.save_state_dict_file(vq.state_dict(), out, metadata={"unizoo": json.dumps({**init, "seed": seed},
                                                                                           sort_keys=True)})
    saved = VQTokenizer(**init, checkpoint=str(out))
    metrics = ev.vq_metrics(saved, seed, eval_test)
    metrics[f"psnr_db@{ev.CHECK_VQ}"] = ev.vq_metrics(saved, seed, ev.CHECK_VQ)["psnr_db"]  # what the tests recompute
    metrics["train_codebook_usage"] = vq.quantize.usage()
    roundtrip = lambda px: saved.decode(codes=saved.encode(px)[1])  # noqa: E731
    metrics.update(_reader_metrics(roundtrip, seed, eval_test, size, reader, judge))
    card = _card(VQ_NAME, out, env, seed, metrics, steps, batch_size,
                 f"PSNR (mean over images, [0, 1] scale), codebook usage and the attribute reader's reading of "
                 f"decode(encode(x)) (reader_*; judge_*: an independently trained reader) on {eval_test} fresh test "
                 f"renders; trained with detail weight {detail_weight}, reader weight {reader_weight}")
    assert card["sha256"] == digest
    return card


# ----------------------------------------------------------------------------- cards and entries


def _reader_metrics(images: Any, seed: int, n_test: int, size: int, reader: str, judge: str | None) -> dict[str, float]:
    """reader_* (and judge_*) accuracies of the attribute reader(s) on `images(pixels)` of fresh test renders."""
    from datamodules.smartwatch.reader import load_reader, resolve_reader_path

    out: dict[str, float] = {}
    for prefix, path in (("reader", reader), ("judge", judge)):
        if path:
            net, _ = load_reader(resolve_reader_path(path))
            scores = ev.reader_on_images(net, images, seed, n_test, size)
            out.update({f"{prefix}_{k}": v for k, v in scores.items()})
    return out



def _card(name: str, weights: Path, env: dict[str, Any], seed: int, metrics: dict[str, float], steps: int,
          batch_size: int, protocol: str) -> dict[str, Any]:
    weights.chmod(0o644)  # temp-file writers create 0600 files; shipped files are read by every user
    return {"name": name, "weights": str(weights), "sha256": hub.sha256_file(weights), "size": weights.stat().st_size,
            "seed": seed, "steps": steps, "batch_size": batch_size, "images_seen": steps * batch_size,
            "wall_time": _wall(env), "metrics": {k: round(v, 4) for k, v in metrics.items()}, "protocol": protocol}


def zoo_entry(card: dict[str, Any], command: str, which: str | None = None, name: str | None = None) -> dict[str, Any]:
    """The zoo entry JSON of a trained space or pixel decoder (weights shipped under zoo/assets/spaces/)."""
    which = which or ("siglip" if card["name"] == SIGLIP_NAME else "vq")
    name = name or card["name"]
    rel = Path(card["weights"]).resolve().relative_to(Path(__file__).resolve().parent.parent / "zoo").as_posix()
    common = {"kind": "space", "state_prefix": "model.",
              "weights": {"package_file": rel, "sha256": card["sha256"], "size": card["size"]}}
    data = (f"{card['images_seen']} fresh smart-watch renders at {IMAGE_SIZE} px (train split, seed {card['seed']}), "
            f"{card['steps']} steps of {card['batch_size']}")
    cardj = {"recipe": "tools/train_spaces.py", "seed": card["seed"], "wall_time": card["wall_time"],
             "metrics": card["metrics"], "how_to_reproduce": command, "notes": card["protocol"], "data": data}
    if which == "siglip":
        return {"name": name, **common, "class_path": "zoo.spaces.hf.HFVisionSpace",
                "init_args": {"model_class": "transformers.SiglipVisionModel",
                              "pretrained": f"zoo/{Path(rel).parent.as_posix()}", "layer": -2},
                "description": "Tiny SigLIP vision tower (64 px, patch 8, 128 x 4 layers) trained with the sigmoid "
                               "loss on smart-watch renders; layer -2 patch features (64 x 128)",
                "card": {**cardj, "data": data + "; captions stating time, weather, battery and both corners"}}
    if which == "decoder":
        return {"name": name, "kind": "decoder", "state_prefix": "",
                "weights": common["weights"], "class_path": "zoo.spaces.pixel_decoder.FeatureDecoder",
                "init_args": {k: v for k, v in card.get("decoder_config", {}).items()},
                "description": "Pixel decoder of a continuous space's tokens to 64 px images (MSE + attribute-reader "
                               "loss); pass it as the space's pixel_decoder", "card": cardj}
    return {"name": name, **common, "class_path": "zoo.spaces.vq.VQTokenizer",
            "init_args": {"variant": "tiny", "image_size": IMAGE_SIZE},
            "description": "Tiny VQ tokenizer (64 px -> 8 x 8 codes of 1024) trained on smart-watch renders "
                           "(MSE + L1 + codebook/commitment losses)", "card": cardj}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m tools.train_spaces siglip|vq --out PATH [--entry JSON] [--steps N] [--seed S]`."""
    parser = argparse.ArgumentParser(prog="python -m tools.train_spaces", description=__doc__.split("\n")[0])
    parser.add_argument("which", choices=("siglip", "vq", "decoder"))
    parser.add_argument("--out", required=True, help="folder (siglip) or .safetensors file (vq) to write")
    parser.add_argument("--entry", help="also write the zoo entry JSON here (e.g. zoo/assets/weights/NAME.json)")
    parser.add_argument("--name", help="the zoo entry's name (default: the first release's name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="any keyword of train_siglip/train_vq, value as JSON (e.g. --set reader_weight=0.2 "
                             "--set 'overrides={\"channels\": 24}')")
    args = parser.parse_args(argv)
    kwargs = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size)) if v is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=JSON")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value  # a bare string (a path)
    from tools.train_pixel_decoder import train_decoder

    train = {"siglip": train_siglip, "vq": train_vq, "decoder": train_decoder}[args.which]
    card = train(args.out, seed=args.seed, threads=args.threads, **kwargs)
    print(json.dumps(card, indent=2))
    if args.entry:
        command = "python -m tools.train_spaces " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
        Path(args.entry).write_text(json.dumps(zoo_entry(card, command, args.which, args.name), indent=2) + "\n")
    return card


if __name__ == "__main__":
    main()
