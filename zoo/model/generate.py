"""Decoding from a UnifiedVLM: text, image tokens, and both interleaved, with one KV cache.

Every sample in a batch runs its own little state machine, vectorised across the batch:
text mode (sample a token; `<boi>` switches to image mode) -> image mode (N steps: the head's
prediction, its embedding fed back through the write projector) -> `<eoi>` forced -> text mode.
The paper's reference path (recompute the whole sequence at every step, no cache) is kept behind
`use_cache=False`; both paths give the same outputs within float tolerance.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from zoo.model.unified import UnifiedVLM


@dataclass
class GenerationConfig:
    """How to decode: greedy when temperature is 0; top-k / top-p filter sampled text."""

    max_new_tokens: int = 128
    max_images: int = 1
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    image_temperature: float = 0.0
    image_top_k: int = 0
    guidance_scale: float = 1.0
    use_cache: bool = True
    seed: int | None = None


@dataclass
class GenerationOutput:
    """What came out: text per sample, and per sample a list of image tokens ([N, D] features or [N] codes)."""

    texts: list[str]
    token_ids: list[list[int]]
    images: list[list[torch.Tensor]] = field(default_factory=list)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask logits [B, V] outside the top-k and the top-p nucleus with -inf."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop_sorted = cumulative - torch.softmax(sorted_logits, -1) > top_p  # keep the first token past p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _pick_token(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(filter_logits(logits.float() / cfg.temperature, cfg.top_k, cfg.top_p), -1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: UnifiedVLM, batch: dict[str, Any], config: GenerationConfig | None = None, start_in_image: bool = False
) -> GenerationOutput:
    """Continue left-padded prompts (`UnifiedProcessor.prompt`) until EOS or the token budget.

    `start_in_image`: the prompts end with `<boi>`; write one image first (evaluation of image fidelity).
    """
    cfg = config or GenerationConfig()
    tok = model.backbone.token_ids
    backbone = model.backbone
    generator = torch.Generator(device=batch["input_ids"].device).manual_seed(cfg.seed) if cfg.seed is not None else None
    embeds = model.embed_inputs(batch)
    mask = batch["attention_mask"].clone()
    batch_size, device = embeds.shape[0], embeds.device
    n_image = model.write_space.num_tokens if model.write_space is not None else 0

    cache = backbone.new_cache() if cfg.use_cache else None
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden, cache = backbone.hidden_states(embeds, mask, positions, cache=cache, use_cache=cfg.use_cache)
    last = hidden[:, -1]
    next_pos = positions[:, -1] + 1

    image_step = torch.full((batch_size,), 0 if start_in_image else -1, dtype=torch.long, device=device)  # -1: text
    images_done = torch.full((batch_size,), int(start_in_image), dtype=torch.long, device=device)
    text_count = torch.zeros(batch_size, dtype=torch.long, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    max_steps = cfg.max_new_tokens + cfg.max_images * (n_image + 2)
    # Per-step records, turned into per-sample lists once at the end (no per-sample Python work per step).
    step_tokens: list[torch.Tensor] = []  # [B] token of each step
    step_kept: list[torch.Tensor] = []  # [B] whether the sample was still running (its token is output)
    image_masks: list[torch.Tensor] = []  # [B] which samples wrote an image token, at steps that wrote any
    image_values: list[torch.Tensor] = []  # [B, D] or [B] the image tokens of those steps
    # The mask grows by one column per step: views of one preallocated tensor instead of a copy per step.
    width = mask.shape[1]
    full_mask = torch.cat([mask, torch.ones(batch_size, max_steps, dtype=mask.dtype, device=device)], dim=1)

    for step in range(max_steps):
        in_image = (image_step >= 0) & (image_step < n_image)
        close_image = image_step == n_image
        in_text = ~in_image & ~close_image

        if cfg.temperature <= 0 and not in_text.any():
            token = torch.zeros_like(image_step)  # every sample writes an image token or <eoi>: no text head needed
        else:
            token = _pick_token(backbone.lm_logits(last), cfg, generator)
        if not (images_done < cfg.max_images).all():  # no budget left for another image: never open one
            token = torch.where((token == tok["boi"]) & (images_done >= cfg.max_images), tok["eos"], token)
        token = torch.where(close_image, torch.full_like(token, tok["eoi"]), token)
        step_embed = backbone.embed_tokens(token.unsqueeze(1)).squeeze(1)
        if n_image and in_image.any():
            value, image_embed = model.next_image_token(last, sample=cfg.image_temperature > 0, temperature=cfg.image_temperature,
                                                        index=image_step.clamp(min=0), top_k=cfg.image_top_k,
                                                        generator=generator)
            step_embed = torch.where(in_image.unsqueeze(-1), image_embed.to(step_embed.dtype), step_embed)
            image_masks.append(in_image)
            image_values.append(value)
            token = torch.where(in_image, torch.full_like(token, tok["image_out"]), token)

        step_tokens.append(token)
        step_kept.append(~finished)
        opened = in_text & (token == tok["boi"]) & (n_image > 0)
        image_step = torch.where(in_image, image_step + 1, image_step)
        image_step = torch.where(close_image, torch.full_like(image_step, -1), image_step)
        image_step = torch.where(opened & ~finished, torch.zeros_like(image_step), image_step)
        images_done = images_done + (opened & ~finished).long()
        text_count = text_count + (in_text & ~finished).long()
        finished = finished | (in_text & (token == tok["eos"])) | (text_count >= cfg.max_new_tokens) & (image_step < 0)
        if finished.all():
            break

        mask = full_mask[:, : width + step + 1]
        if cfg.use_cache:
            hidden, cache = backbone.hidden_states(step_embed.unsqueeze(1), mask, next_pos.unsqueeze(1), cache=cache, use_cache=True)
        else:  # the paper's reference path: the whole sequence again, every step
            embeds = torch.cat([embeds, step_embed.unsqueeze(1)], dim=1)
            hidden, _ = backbone.hidden_states(embeds, mask, (mask.cumsum(-1) - 1).clamp(min=0))
        last = hidden[:, -1]
        next_pos = next_pos + 1

    tokens, kept = torch.stack(step_tokens).cpu(), torch.stack(step_kept).cpu()
    out_ids = [tokens[kept[:, b], b].tolist() for b in range(batch_size)]
    texts = [model.processor.decode_text(ids) for ids in out_ids]
    images: list[list[torch.Tensor]] = [[] for _ in range(batch_size)]
    if image_values:
        wrote, values = torch.stack(image_masks), torch.stack(image_values)
        for b in range(batch_size):
            # A sample's image tokens come in runs of n_image consecutive steps, one run per image;
            # only a run cut short by the step budget (the last one) is incomplete, and it is dropped.
            mine = values[wrote[:, b], b]
            whole = len(mine) // n_image * n_image
            images[b] = list(mine[:whole].split(n_image)) if whole else []
    return GenerationOutput(texts=texts, token_ids=out_ids, images=images)


@torch.no_grad()
def decode_images(model: UnifiedVLM, tokens: list[torch.Tensor]) -> torch.Tensor | None:
    """Generated VQ codes [N] (one tensor per image) -> pixels [n, 3, H, W]; None where the space cannot decode."""
    space = model.write_space
    if space is None or not tokens or not space.can_decode:
        return None
    stacked = torch.stack(tokens)
    return space.decode(codes=stacked) if space.discrete else space.decode(features=stacked)


@torch.no_grad()
def generate_images(model: UnifiedVLM, batch: dict[str, Any], config: GenerationConfig | None = None,
                    unconditional: dict[str, Any] | None = None) -> torch.Tensor:
    """Write one image after each left-padded prompt ending in `<boi>`: image tokens [B, N, D] or codes [B, N].

    With `unconditional` (the same samples prompted without their description) and `guidance_scale` != 1,
    each step uses classifier-free guidance: prediction = uncond + scale x (cond - uncond), on code logits
    or on continuous features (LlamaGen / MAR guide logits the same way). Both prompts keep their own KV cache.
    """
    cfg = config or GenerationConfig()
    backbone, n_image = model.backbone, model.write_space.num_tokens
    guided = unconditional is not None and cfg.guidance_scale != 1.0
    generator = torch.Generator(device=batch["input_ids"].device).manual_seed(cfg.seed) if cfg.seed is not None else None
    streams = []
    for prompt in [batch, unconditional] if guided else [batch]:
        mask = prompt["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden, cache = backbone.hidden_states(model.embed_inputs(prompt), mask, positions, cache=backbone.new_cache(),
                                               use_cache=True)
        streams.append({"last": hidden[:, -1], "cache": cache, "mask": mask, "next": positions[:, -1] + 1})
    values = []
    for k in range(n_image):
        prediction = model.head(streams[0]["last"])
        if guided:
            uncond = model.head(streams[1]["last"])
            prediction = uncond + cfg.guidance_scale * (prediction - uncond)
        index = torch.full((prediction.shape[0],), k, dtype=torch.long, device=prediction.device)
        value, embed = model.choose_image_token(prediction, sample=cfg.image_temperature > 0,
                                                temperature=cfg.image_temperature, index=index,
                                                top_k=cfg.image_top_k, generator=generator)
        values.append(value)
        if k == n_image - 1:
            break
        for stream in streams:
            stream["mask"] = torch.cat([stream["mask"], stream["mask"].new_ones(len(value), 1)], 1)
            hidden, stream["cache"] = backbone.hidden_states(embed.unsqueeze(1), stream["mask"], stream["next"].unsqueeze(1),
                                                             cache=stream["cache"], use_cache=True)
            stream["last"], stream["next"] = hidden[:, -1], stream["next"] + 1
    return torch.stack(values, 1)
