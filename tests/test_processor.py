"""UnifiedProcessor and CodeCache on hand-checked conversations, with tiny fake image spaces."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from zoo.model.code_cache import CodeCache
from zoo.model.processor import UnifiedProcessor
from zoo.model.tokenizer import special_token_ids, train_word_level_tokenizer
from zoo.sample import Sample
from zoo.spaces.base import ImageSpace

TEXTS = ["what time is it?", "draw a watch showing 07:05", "describe the watch", "a red watch", "battery 57%"]
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


class TinyContinuousSpace(ImageSpace):
    """16 px images -> 4 tokens of dim 8 through one strided conv."""

    num_tokens, dim, image_size = 4, 8, 16

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, self.dim, 8, stride=8)
        self.requires_grad_(False)  # frozen, as real spaces are by default (caches need frozen encoders)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.conv(pixels).flatten(2).transpose(1, 2), None


class TinyDiscreteSpace(TinyContinuousSpace):
    """The same conv, quantized to the nearest of 16 codes; counts encoder calls."""

    discrete, codebook_size = True, 16

    def __init__(self, seed: int = 0, num_tokens: int = 4) -> None:
        super().__init__(seed)
        self.num_tokens = num_tokens
        self.codebook = nn.Embedding(16, self.dim)
        self.requires_grad_(False)
        self.calls = 0

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.calls += 1
        features = super().encode(pixels)[0][:, : self.num_tokens]
        codes = torch.cdist(features, self.codebook.weight[None].expand(len(features), -1, -1)).argmin(-1)
        return self.codebook(codes), codes


def image(color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (16, 16), color)


def vqa(color=RED, answer="07:05", **attrs) -> Sample:
    return Sample("vqa", [_u("<image>\nwhat time is it?"), _a(answer)], [image(color)], attrs)


def gen(color=GREEN) -> Sample:
    return Sample("generation", [_u("draw a watch showing 07:05"), _a("<image>")], [image(color)])


def _u(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _a(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def tok():
    return train_word_level_tokenizer(TEXTS, system_prompt="")


@pytest.fixture()
def proc(tok) -> UnifiedProcessor:
    return UnifiedProcessor(tok, special_token_ids(tok), TinyContinuousSpace(), TinyContinuousSpace(1), max_length=64)


def words(tok, ids) -> list[str]:
    return tok.convert_ids_to_tokens([int(i) for i in ids])


def test_vqa_expansion_and_labels(tok, proc):
    batch = proc([vqa(answer="07:05", id="w1")])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    expected = ["<s>", "user", ":"] + ["<image>"] * 4 + ["what", "time", "is", "it", "?", "assistant", ":"]
    expected += ["0", "7", ":", "0", "5", "</s>"]
    assert words(tok, ids) == expected
    assert batch["attention_mask"].tolist() == [[1] * len(expected)]
    labelled = labels != -100
    assert labelled.tolist() == [False] * 14 + [True] * 6  # only the answer and its EOS
    assert torch.equal(labels[labelled], ids[labelled])
    assert (labels[ids == proc.token_ids["image"]] == -100).all()
    assert batch["read_pixels"].shape == (1, 3, 16, 16) and batch["write_pixels"] is None
    assert batch["read_codes"] is None and batch["write_codes"] is None
    assert batch["tasks"] == ["vqa"] and batch["attrs"] == [{"id": "w1"}]


def test_generation_block_and_labels(tok, proc):
    batch = proc([gen()])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    prompt = ["<s>", "user", ":", "draw", "a", "watch", "showing", "0", "7", ":", "0", "5", "assistant", ":"]
    assert words(tok, ids) == prompt + ["<boi>"] + ["<image_out>"] * 4 + ["<eoi>", "</s>"]
    t = proc.token_ids
    assert labels.tolist() == [-100] * len(prompt) + [t["boi"]] + [-100] * 4 + [t["eoi"], t["eos"]]
    assert batch["write_pixels"].shape == (1, 3, 16, 16) and batch["read_pixels"] is None


def test_multi_turn(tok, proc):
    s = Sample(
        "generation",
        [_u("<image> what time is it?"), _a("07:05"), _u("draw a red watch"), _a("a watch <image>")],
        [image(RED), image(BLUE)],
    )
    batch = proc([s])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    toks = words(tok, ids)
    assert toks.count("<image>") == 4 and toks.count("<image_out>") == 4
    labelled = words(tok, labels[labels != -100])
    assert labelled == ["0", "7", ":", "0", "5", "</s>", "a", "watch", "<boi>", "<eoi>", "</s>"]
    assert batch["read_pixels"][0, 0].mean() == 1.0  # red is read
    assert batch["write_pixels"][0, 2].mean() == 1.0 and batch["write_pixels"][0, 0].mean() == 0.0  # blue is written


def test_batch_padding_and_image_order(tok, proc):
    samples = [vqa(RED), gen(GREEN), vqa(BLUE, answer="battery 57%"), Sample("text", [_u("describe"), _a("a")])]
    batch = proc(samples)
    lengths = [20, 21, 19, 8]
    assert batch["input_ids"].shape == (4, 21)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, n in enumerate(lengths):
        assert (batch["input_ids"][row, n:] == proc.token_ids["pad"]).all()
        assert (batch["labels"][row, n:] == -100).all()
        assert batch["attention_mask"][row, :n].all()
    read_px, write_px = batch["read_pixels"], batch["write_pixels"]
    assert read_px.shape == (2, 3, 16, 16) and write_px.shape == (1, 3, 16, 16)
    assert read_px[0, 0].mean() == 1.0 and read_px[1, 2].mean() == 1.0 and write_px[0, 1].mean() == 1.0
    assert batch["tasks"] == ["vqa", "generation", "vqa", "text"]


def test_errors_name_the_sample(tok, proc):
    short = UnifiedProcessor(tok, special_token_ids(tok), TinyContinuousSpace(), None, max_length=10)
    with pytest.raises(ValueError, match=r"sample 1 \(task 'vqa', id 'w7'\): 20 tokens .* max_length 10"):
        short([Sample("text", [_u("a"), _a("a")]), vqa(id="w7")])
    with pytest.raises(ValueError, match="sample 0 .*writes 1 image.*no write space"):
        short([gen()])
    no_input = UnifiedProcessor(tok, special_token_ids(tok), None, TinyContinuousSpace())
    with pytest.raises(ValueError, match="reads 1 image.*no read space"):
        no_input([vqa()])
    with pytest.raises(ValueError, match="1 <image> markers but 0 images"):
        proc([Sample("vqa", [_u("<image>"), _a("a")])])


def test_prompt_left_padding_and_references(tok, proc):
    multi = Sample("vqa", [_u("<image> what time is it?"), _a("07:05"), _u("battery?"), _a("57%")], [image(BLUE)])
    batch = proc.prompt([vqa(RED), gen(GREEN), multi])
    assert "labels" not in batch
    assert batch["references"] == ["07:05", "<image>", "07:05"]
    n = batch["attention_mask"].sum(1).tolist()
    assert n == [14, 14, 14] and batch["input_ids"].shape == (3, 14)
    batch = proc.prompt([vqa(RED), gen(GREEN)])
    for row in batch["input_ids"]:
        assert words(tok, row[-2:]) == ["assistant", ":"]
    later = proc.prompt([Sample("text", [_u("describe"), _a("a")]), multi], upto_turn=0)
    assert later["attention_mask"][0].tolist() == [0] * 8 + [1] * 6  # left padding
    assert (later["input_ids"][0, :8] == proc.token_ids["pad"]).all()
    second = proc.prompt([multi], upto_turn=1)
    assert second["references"] == ["57%"]
    assert words(tok, second["input_ids"][0, -6:]) == ["user", ":", "battery", "?", "assistant", ":"]
    assert second["read_pixels"].shape == (1, 3, 16, 16) and second["write_pixels"] is None
    with pytest.raises(ValueError, match="no assistant turn 1"):
        proc.prompt([vqa()], upto_turn=1)


def test_decode_text(tok, proc):
    batch = proc([vqa(answer="07:05")])
    assert proc.decode_text(batch["labels"][0]) == "07:05"
    assert proc.decode_text(batch["input_ids"][0].tolist()) == "user: what time is it? assistant: 07:05"


def test_processor_uses_code_cache(tok):
    space = TinyDiscreteSpace()
    cache = CodeCache(space)
    proc = UnifiedProcessor(tok, special_token_ids(tok), space, space, 64, code_cache=cache)
    samples = [vqa(RED), gen(GREEN), vqa(BLUE)]
    samples[0].image_keys, samples[1].image_keys = ["red"], ["green"]  # the third is keyed by content
    batch = proc(samples)
    assert batch["read_pixels"] is None and batch["write_pixels"] is None
    assert batch["read_codes"].shape == (2, 4) and batch["write_codes"].shape == (1, 4)
    assert batch["read_codes"].dtype == torch.long
    _, expected = space.encode(torch.stack([space.preprocess(image(c)) for c in (RED, BLUE)]))
    assert torch.equal(batch["read_codes"], expected)
    calls = space.calls
    proc(samples)
    assert space.calls == calls  # all hits the second time
    with pytest.raises(ValueError, match="neither the read nor the write space"):
        UnifiedProcessor(tok, special_token_ids(tok), TinyContinuousSpace(), None, code_cache=cache)


def test_code_cache_hits_misses_and_files(tmp_path):
    space = TinyDiscreteSpace()
    path = tmp_path / "codes.safetensors"
    cache = CodeCache(space, path)
    codes = cache.codes_for([image(RED), image(GREEN), image(RED)], ["r", "g", "r"])
    assert space.calls == 1 and len(cache) == 2 and codes.shape == (3, 4)
    assert torch.equal(codes[0], codes[2])
    again = cache.codes_for([image(GREEN), image(BLUE)], ["g", "b"])
    assert space.calls == 2 and torch.equal(again[0], codes[1])
    cache.codes_for([image(BLUE)], ["b"])
    assert space.calls == 2  # a hit encodes nothing
    assert cache.precompute(((str(i), image((i, i, i))) for i in range(5)), batch_size=2) == 5
    assert space.calls == 5  # batches of 2, 2, 1
    cache.save()
    assert os.listdir(tmp_path) == ["codes.safetensors"]  # no temporary file left behind

    reloaded = CodeCache(space, path)  # loads at construction
    assert len(reloaded) == 8
    assert torch.equal(reloaded.codes_for([image(RED)], ["r"]), codes[:1])
    assert space.calls == 5

    with pytest.raises(ValueError, match="num_tokens '4' in the file"):
        CodeCache(TinyDiscreteSpace(num_tokens=2), path)
    with pytest.raises(ValueError, match="weights_sha256"):
        CodeCache(TinyDiscreteSpace(seed=1), path)
    with pytest.raises(ValueError, match="continuous"):
        CodeCache(TinyContinuousSpace(), path)
    with pytest.raises(ValueError, match="2 images but 1 keys"):
        cache.codes_for([image(RED), image(RED)], ["r"])


@pytest.mark.parametrize("space_class", [TinyDiscreteSpace, TinyContinuousSpace])
def test_code_cache_keeps_every_row_as_its_table_grows(space_class, tmp_path):
    """Past the table's first capacity (1024 rows, grown by doubling) every key still maps to its own
    encoding, a re-stored key keeps its first row, and save/load keep the order."""
    space = space_class()
    cache = CodeCache(space)
    colours = [(i % 251, (7 * i) % 253, (13 * i) % 255) for i in range(2500)]
    keys = [f"img{i}" for i in range(2500)]
    for start in range(0, 2500, 300):
        cache.codes_for([image(c) for c in colours[start:start + 300]], keys[start:start + 300])
    assert len(cache) == 2500
    probe = [0, 1023, 1024, 2047, 2048, 2499]
    direct = space.encode(torch.stack([space.preprocess(image(colours[i])) for i in probe]))
    expected = direct[1] if space.discrete else direct[0]
    got = cache.codes_for([image(colours[i]) for i in probe], [keys[i] for i in probe])
    assert torch.allclose(got.float(), expected.float())
    first = cache.codes_for([image(colours[5])], [keys[5]])
    cache._store([keys[5]], cache.codes_for([image(colours[6])], [keys[6]]))  # an already cached key
    assert torch.equal(cache.codes_for([image(colours[5])], [keys[5]]), first) and len(cache) == 2500
    path = cache.save(tmp_path / "codes.safetensors")
    reloaded = CodeCache(space, path)
    assert torch.equal(reloaded.codes_for([image(colours[i]) for i in probe], [keys[i] for i in probe]), got)
