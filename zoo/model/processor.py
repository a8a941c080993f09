"""UnifiedProcessor: Samples -> model batches (chat template, image-token expansion, labels, pixels or codes)."""
from __future__ import annotations

import hashlib
import math
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import PreTrainedTokenizerBase

from zoo.catalog.checkpoint import accept_renamed_arguments
from zoo.model.code_cache import CodeCache
from zoo.model.objectives import IGNORE_INDEX
from zoo.model.tokenizer import tokenize_conversation
from zoo.sample import IMAGE_MARKER, Sample
from zoo.spaces.base import ImageSpace

if TYPE_CHECKING:
    from zoo.model.backbone import LanguageBackbone

# The null condition of classifier-free guidance: any fixed request works; it only has to be the same in
# training (condition dropout) and at inference (the unconditional stream of `generate_images`).
UNCONDITIONAL_PROMPT = "generate an image."


class UnifiedProcessor:
    """The collate function of training (`__call__`) and the prompt builder of inference (`prompt`).

    Each ``<image>`` a user turn reads becomes ``read_space.num_tokens`` image-token positions; each
    ``<image>`` an assistant turn writes becomes ``<boi>`` + ``write_space.num_tokens`` x
    ``<image_out>`` + ``<eoi>``. Labels are the assistant tokens of the chat template's mask (incl. EOS,
    ``<boi>`` and ``<eoi>``; with `train_on_inputs` every text token) and -100 elsewhere, image positions included. Images go out as pixels
    (``space.preprocess``) or, for the side whose space is ``code_cache.space``, as cached codes: the batch
    keys are ``read_pixels``/``read_codes``/``read_features`` and ``write_pixels``/``write_codes``/``write_features``,
    plus ``write_weights`` [n_written, N] (per-token loss weights from the samples' `emphasis`, or None).
    ``token_ids`` keeps the tokenizer's names ("image" reads, "image_out" writes; zoo/model/unified.py says why).
    """

    @accept_renamed_arguments  # input_space/output_space: older names of read_space/write_space
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        token_ids: dict[str, int],
        read_space: ImageSpace | None = None,
        write_space: ImageSpace | None = None,
        max_length: int = 2048,
        code_cache: CodeCache | None = None,
        condition_dropout: float = 0.0,
        train_on_inputs: bool = False,
    ) -> None:
        missing = {"image", "boi", "image_out", "eoi", "pad"} - set(token_ids)
        if missing:
            raise ValueError(f"UnifiedProcessor: token_ids lacks {sorted(missing)}")
        if code_cache is not None and code_cache.space is not read_space and code_cache.space is not write_space:
            raise ValueError("UnifiedProcessor: code_cache.space is neither the read nor the write space")
        if max_length < 1:
            raise ValueError(f"UnifiedProcessor: max_length must be >= 1, got {max_length}")
        self.tokenizer = tokenizer
        self.token_ids = dict(token_ids)
        self.read_space = read_space
        self.write_space = write_space
        self.max_length = max_length
        self.code_cache = code_cache
        self.condition_dropout = condition_dropout
        # axolotl's `train_on_inputs`: the text CE also covers the user turns (prompts and questions), not only
        # the assistant's. A language model trained from scratch otherwise learns to read a generation prompt
        # only through the image loss, a weak signal (the paper starts from a text-pretrained Vicuna).
        self.train_on_inputs = train_on_inputs

    @classmethod
    @accept_renamed_arguments
    def from_backbone(
        cls,
        backbone: LanguageBackbone,
        read_space: ImageSpace | None = None,
        write_space: ImageSpace | None = None,
        max_length: int | None = None,
        code_cache: CodeCache | None = None,
    ) -> UnifiedProcessor:
        """A processor with the backbone's tokenizer and token ids; `max_length` defaults to its context."""
        length = max_length or backbone.max_positions or 2048
        return cls(backbone.tokenizer, backbone.token_ids, read_space, write_space, length, code_cache)

    # --- public -----------------------------------------------------------------------------------------

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        """Collate training samples: right-padded input_ids / attention_mask / labels [B, T] plus images."""
        rows = [self._encode(s, self._maybe_unconditional(s), False, _describe(s, i)) for i, s in enumerate(samples)]
        batch = self._pad([r[0] for r in rows], [r[1] for r in rows], left=False)
        batch.update(self._images(rows))
        batch["tasks"] = [s.task for s in samples]
        batch["attrs"] = [s.attrs for s in samples]
        return batch

    def prompt(self, samples: list[Sample], upto_turn: int = 0) -> dict[str, Any]:
        """Inference inputs: each conversation before its assistant turn `upto_turn` (0 = first answer),
        with the generation prompt, left-padded; `references` holds that assistant turn's text."""
        rows, references = [], []
        for i, s in enumerate(samples):
            where = _describe(s, i)
            answer = 2 * upto_turn + 1
            if upto_turn < 0 or answer >= len(s.turns):
                raise ValueError(f"{where}: no assistant turn {upto_turn} ({len(s.turns)} turns)")
            rows.append(self._encode(s, s.turns[:answer], True, where))
            references.append(s.turns[answer]["content"])
        batch = self._pad([r[0] for r in rows], [r[1] for r in rows], left=True)
        del batch["labels"]
        batch.update(self._images(rows))
        batch["references"] = references
        batch["tasks"] = [s.task for s in samples]
        batch["attrs"] = [s.attrs for s in samples]
        return batch

    def _maybe_unconditional(self, sample: Sample) -> list[dict[str, str]]:
        """The turns, with a text-to-image request replaced by `UNCONDITIONAL_PROMPT` for a `condition_dropout`
        share of generation samples (chosen by a hash of the request: the same samples every epoch and run)."""
        turns = sample.turns
        if self.condition_dropout <= 0 or sample.task != "generation" or IMAGE_MARKER in turns[0]["content"]:
            return turns
        if zlib.crc32(turns[0]["content"].encode()) % 10_000 >= self.condition_dropout * 10_000:
            return turns
        return [unconditional_turn(turns[0]), *turns[1:]]

    def decode_text(self, ids: torch.Tensor | list[int]) -> str:
        """Token ids -> text without special tokens (image tokens, pad, eos)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = [i for i in ids if i >= 0]  # tolerate label tensors with -100
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # --- one sample --------------------------------------------------------------------------------------

    def _encode(
        self, sample: Sample, turns: list[dict[str, str]], add_generation_prompt: bool, where: str
    ) -> tuple[torch.Tensor, torch.Tensor, list[Image.Image], list[str], list[Image.Image], list[str]]:
        """(input_ids [T], labels [T], read images, their keys, written images, their keys, their emphasis maps)."""
        sample.validate(where)
        read_imgs, read_keys, write_imgs, write_keys, write_emphasis = self._split_images(sample, turns, where)
        if read_imgs and self.read_space is None:
            raise ValueError(f"{where}: reads {len(read_imgs)} image(s) but the processor has no read space")
        if write_imgs and self.write_space is None:
            raise ValueError(f"{where}: writes {len(write_imgs)} image(s) but the processor has no write space")

        ids_list, mask_list = tokenize_conversation(self.tokenizer, turns, add_generation_prompt)
        ids = torch.tensor(ids_list, dtype=torch.long)
        mask = torch.tensor(mask_list, dtype=torch.bool)
        t = self.token_ids
        is_image = ids == t["image"]
        read, written = is_image & ~mask, is_image & mask
        if int(read.sum()) != len(read_imgs) or int(written.sum()) != len(write_imgs):
            raise ValueError(
                f"{where}: the template gave {int(read.sum())} read / {int(written.sum())} written {IMAGE_MARKER} "
                f"tokens for {len(read_imgs)} / {len(write_imgs)} markers (is {IMAGE_MARKER} a single token?)"
            )

        n_in = self.read_space.num_tokens if self.read_space is not None else 0
        n_out = self.write_space.num_tokens if self.write_space is not None else 0
        repeats = torch.ones_like(ids)
        repeats[read] = n_in
        repeats[written] = n_out + 2
        labelled = mask | ~is_image if self.train_on_inputs else mask
        labels = torch.where(labelled, ids, IGNORE_INDEX).repeat_interleave(repeats)
        ids = ids.repeat_interleave(repeats)
        if written.any():
            starts = (torch.cumsum(repeats, 0) - repeats)[written]
            block = starts[:, None] + torch.arange(n_out + 2)
            ids[block[:, 1:-1]] = t["image_out"]
            labels[block[:, 1:-1]] = IGNORE_INDEX
            ids[block[:, 0]] = labels[block[:, 0]] = t["boi"]
            ids[block[:, -1]] = labels[block[:, -1]] = t["eoi"]
        if ids.numel() > self.max_length:
            raise ValueError(f"{where}: {ids.numel()} tokens after image expansion > max_length {self.max_length}")
        return ids, labels, read_imgs, read_keys, write_imgs, write_keys, write_emphasis

    @staticmethod
    def _split_images(
        sample: Sample, turns: list[dict[str, str]], where: str
    ) -> tuple[list[Image.Image], list[str], list[Image.Image], list[str], list[Any]]:
        """The images of `turns` split into read (user) and written (assistant, with their emphasis maps)."""
        if sample.image_keys and len(sample.image_keys) != len(sample.images):
            raise ValueError(f"{where}: {len(sample.image_keys)} image_keys for {len(sample.images)} images")
        read_imgs, read_keys, write_imgs, write_keys, write_emphasis = [], [], [], [], []
        k = 0
        for turn in turns:
            for _ in range(turn["content"].count(IMAGE_MARKER)):
                image = sample.images[k]
                key = sample.image_keys[k] if sample.image_keys else _content_key(image)
                if turn["role"] == "user":
                    read_imgs.append(image)
                    read_keys.append(key)
                else:
                    write_imgs.append(image)
                    write_keys.append(key)
                    write_emphasis.append(sample.emphasis[k] if sample.emphasis else None)
                k += 1
        return read_imgs, read_keys, write_imgs, write_keys, write_emphasis

    # --- batch --------------------------------------------------------------------------------------------

    def _pad(self, ids: list[torch.Tensor], labels: list[torch.Tensor], left: bool) -> dict[str, Any]:
        length = max(x.numel() for x in ids)
        out_ids = torch.full((len(ids), length), self.token_ids["pad"], dtype=torch.long)
        out_labels = torch.full((len(ids), length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(ids), length), dtype=torch.long)
        for row, (x, y) in enumerate(zip(ids, labels)):
            span = slice(length - x.numel(), length) if left else slice(0, x.numel())
            out_ids[row, span], out_labels[row, span], attention[row, span] = x, y, 1
        return {"input_ids": out_ids, "attention_mask": attention, "labels": out_labels}

    def _images(self, rows: list[tuple]) -> dict[str, torch.Tensor | None]:
        read_imgs = [im for r in rows for im in r[2]]
        read_keys = [k for r in rows for k in r[3]]
        write_imgs = [im for r in rows for im in r[4]]
        write_keys = [k for r in rows for k in r[5]]
        read_pixels, read_cached = self._side(self.read_space, read_imgs, read_keys)
        write_pixels, write_cached = self._side(self.write_space, write_imgs, write_keys)
        out = {"read_pixels": read_pixels, "write_pixels": write_pixels,
               "write_weights": self._token_weights([m for r in rows for m in r[6]])}
        for side, space, cached in (("read", self.read_space, read_cached), ("write", self.write_space, write_cached)):
            discrete = space is not None and space.discrete
            out[f"{side}_codes"] = cached if discrete else None
            out[f"{side}_features"] = None if discrete else cached  # a continuous space's cached features
        return out

    def _token_weights(self, maps: list[Any]) -> torch.Tensor | None:
        """[n_written, N] loss weights: each emphasis map averaged over the write space's token patches
        (ones for images without a map); None when no written image has one."""
        if all(m is None for m in maps):
            return None
        n = self.write_space.num_tokens
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"emphasis maps need a square token grid; the write space has {n} tokens per image")
        pooled = []
        for i, m in enumerate(maps):
            if m is None:
                pooled.append(torch.ones(n))
                continue
            grid = torch.as_tensor(np.asarray(m, dtype=np.float32))
            if grid.ndim != 2 or grid.shape[0] != grid.shape[1] or grid.shape[0] < side or bool((grid < 0).any()):
                raise ValueError(f"written image {i}: emphasis must be a square [H, W] map of weights >= 0 with "
                                 f"H >= {side}, got shape {tuple(grid.shape)}")
            pooled.append(F.adaptive_avg_pool2d(grid[None, None], side).flatten())
        return torch.stack(pooled)

    def _side(
        self, space: ImageSpace | None, images: list[Image.Image], keys: list[str]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(pixels, None) or (None, cached codes/features) for one side's images; (None, None) when none."""
        if not images or space is None:
            return None, None
        if self.code_cache is not None and self.code_cache.space is space:
            return None, self.code_cache.codes_for(images, keys)
        return torch.stack([space.preprocess(im) for im in images]), None


def _describe(sample: Sample, index: int) -> str:
    """A name for a sample in error messages: batch index, task, and any id-like attrs or image key."""
    parts = [f"task {sample.task!r}"]
    for key in ("id", "record", "key", "index", "source"):
        if key in sample.attrs:
            parts.append(f"{key} {sample.attrs[key]!r}")
    if sample.image_keys:
        parts.append(f"image {sample.image_keys[0]!r}")
    return f"sample {index} ({', '.join(parts)})"


def _content_key(image: Image.Image) -> str:
    """A stable key from the pixels, for samples that carry no image_keys."""
    digest = hashlib.sha1(f"{image.mode}:{image.size}:".encode())
    digest.update(image.tobytes())
    return "sha1:" + digest.hexdigest()


def unconditional_turn(turn: dict[str, str]) -> dict[str, str]:
    """A user turn whose request is replaced by the null condition of classifier-free guidance."""
    return {**turn, "content": UNCONDITIONAL_PROMPT}
