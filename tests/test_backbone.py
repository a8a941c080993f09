"""Tokenizer training, chat-template masks, and the LanguageBackbone (tiny Llama from config, offline)."""
from __future__ import annotations

import os

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from zoo.model.backbone import LanguageBackbone
from zoo.model.tokenizer import (
    SPECIAL_TOKENS,
    VICUNA_SYSTEM,
    add_image_tokens,
    special_token_ids,
    tokenize_conversation,
    train_word_level_tokenizer,
    vicuna_template,
)

TEXTS = [
    "What time is it? It is 07:05:09.",
    "The battery is at 57%.",
    "Describe the watch. A black watch shows 12:30, sunny, 21 degrees.",
    "Draw a watch showing 07:05.",
]
TINY = dict(
    model_type="llama",
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)
CONVERSATION = [
    {"role": "user", "content": "what time is it?"},
    {"role": "assistant", "content": "07:05"},
    {"role": "user", "content": "battery?"},
    {"role": "assistant", "content": "57%"},
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tok")
    train_word_level_tokenizer(TEXTS, d, system_prompt="")
    return str(d)


def test_tokenizer_round_trip_offline(tok_dir):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert os.path.exists(os.path.join(tok_dir, "tokenizer.json"))
    ids = tok("What time is it? 07:05:09 <image> battery 57%").input_ids
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[0] == SPECIAL_TOKENS.bos
    assert tokens[6:14] == ["0", "7", ":", "0", "5", ":", "0", "9"]  # digits split one by one
    assert tokens.count(SPECIAL_TOKENS.image) == 1  # the marker stays one token
    assert SPECIAL_TOKENS.unk not in tokens
    assert tok.decode(ids, skip_special_tokens=True) == "what time is it? 07:05:09 battery 57%"
    assert tok.decode(tok("The battery is at 57%.").input_ids, skip_special_tokens=True) == "the battery is at 57%."
    assert tok.chat_template == vicuna_template("")
    assert special_token_ids(tok) == {"image": 4, "boi": 5, "image_out": 6, "eoi": 7, "pad": 0, "eos": 3}


def test_vicuna_template_text():
    tok = train_word_level_tokenizer(TEXTS)
    text = tok.apply_chat_template(CONVERSATION[:3], tokenize=False, add_generation_prompt=True)
    assert text == f"<s>{VICUNA_SYSTEM} USER: what time is it? ASSISTANT: 07:05</s>USER: battery? ASSISTANT:"
    # every word of the template is in the vocabulary
    assert SPECIAL_TOKENS.unk not in tok.convert_ids_to_tokens(tokenize_conversation(tok, CONVERSATION)[0])


def test_assistant_mask_hand_checked(tok_dir):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    ids, mask = tokenize_conversation(tok, CONVERSATION)
    tokens = tok.convert_ids_to_tokens(ids)
    expected = [
        ("<s>", 0), ("user", 0), (":", 0), ("what", 0), ("time", 0), ("is", 0), ("it", 0), ("?", 0),
        ("assistant", 0), (":", 0), ("0", 1), ("7", 1), (":", 1), ("0", 1), ("5", 1), ("</s>", 1),
        ("user", 0), (":", 0), ("battery", 0), ("?", 0), ("assistant", 0), (":", 0),
        ("5", 1), ("7", 1), ("%", 1), ("</s>", 1),
    ]  # fmt: skip
    assert list(zip(tokens, mask)) == expected
    prompt_ids, prompt_mask = tokenize_conversation(tok, CONVERSATION[:3], add_generation_prompt=True)
    assert prompt_ids == ids[: len(prompt_ids)] and tokens[len(prompt_ids) - 2 : len(prompt_ids)] == ["assistant", ":"]
    assert sum(prompt_mask) == 6


def test_mask_by_prefixes_matches_generation_blocks(tok_dir):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    expected = tokenize_conversation(tok, CONVERSATION)
    tok.chat_template = vicuna_template("").replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert tokenize_conversation(tok, CONVERSATION) == expected
    tok.chat_template = "{% for m in messages %}{% if loop.last %}last {% endif %}{{ m['content'] }} {% endfor %}"
    with pytest.raises(ValueError, match="prefix-stable"):
        tokenize_conversation(tok, CONVERSATION)


def test_add_image_tokens_to_foreign_tokenizer():
    raw = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    ids = add_image_tokens(tok)
    assert ids["pad"] == 0  # no pad token: falls back to unk
    assert ids["eos"] == 2
    assert sorted(ids[k] for k in ("image", "boi", "image_out", "eoi")) == [4, 5, 6, 7]
    assert tok("hello <boi> hello").input_ids == [3, ids["boi"], 3]
    assert tok.decode(tok("hello <boi> <image_out> hello").input_ids, skip_special_tokens=True) == "hello hello"
    # no template of its own: the Vicuna template (and its generation blocks) is used
    got, mask = tokenize_conversation(tok, [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello"}])
    assert got[-2:] == [3, 2] and mask[-2:] == [1, 1] and sum(mask) == 2


def _count(backbone: LanguageBackbone, needle: str) -> int:
    return sum(p.numel() for n, p in backbone.named_parameters() if p.requires_grad and needle in n)


def test_backbone_builds_and_caches(tok_dir):
    b = LanguageBackbone(config=TINY, tokenizer=tok_dir)
    assert b.hidden_size == 64 and b.max_positions == 256
    assert b.vocab_size == len(b.tokenizer) and b.token_ids["boi"] == b.tokenizer.convert_tokens_to_ids("<boi>")
    b.eval()
    ids = torch.tensor([[2, 10, 11, 12, 4, 4, 5, 6, 6, 7, 3]])
    x = b.embed_tokens(ids)
    full, none = b.hidden_states(x)
    assert full.shape == (1, 11, 64) and none is None
    assert b.lm_logits(full).shape == (1, 11, b.vocab_size)
    cache = b.new_cache()
    h, cache = b.hidden_states(x[:, :6], cache=cache, use_cache=True)
    steps = [h]
    for t in range(6, 11):
        h, cache = b.hidden_states(x[:, t : t + 1], attention_mask=torch.ones(1, t + 1), cache=cache, use_cache=True)
        steps.append(h)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    assert b.tokenize_turns(CONVERSATION) == tokenize_conversation(b.tokenizer, CONVERSATION)


def test_seeded_init_is_reproducible(tok_dir):
    a = LanguageBackbone(config=TINY, tokenizer=tok_dir, seed=3)
    b = LanguageBackbone(config=TINY, tokenizer=tok_dir, seed=3)
    c = LanguageBackbone(config=TINY, tokenizer=tok_dir, seed=4)
    wa, wb, wc = (m.embed_tokens(torch.arange(5)) for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


@pytest.mark.parametrize("tied", [True, False])
def test_trainable_counts(tok_dir, tied):
    cfg = {**TINY, "tie_word_embeddings": tied}
    full = LanguageBackbone(config=cfg, tokenizer=tok_dir, train_mode="full")
    total = sum(p.numel() for p in full.parameters())
    assert full.trainable_parameter_count() == total

    lora = LanguageBackbone(config=cfg, tokenizer=tok_dir, train_mode="lora", lora_r=4, lora_alpha=8)
    h, i, r, layers = 64, 128, 4, 2
    per_layer = 4 * (h * r + r * h) + 2 * (h * r + r * i) + (i * r + r * h)  # q k v o, gate up, down
    token_rows = 4 * h * (1 if tied else 2)  # the image tokens' rows; untied heads get their own
    assert _count(lora, "lora_") == layers * per_layer
    assert _count(lora, "trainable_tokens") == token_rows
    assert lora.trainable_parameter_count() == layers * per_layer + token_rows
    assert not any("lm_head" in n and "lora_" in n for n, _ in lora.named_parameters())  # all-linear skips the head

    frozen = LanguageBackbone(config=cfg, tokenizer=tok_dir, train_mode="frozen")
    assert frozen.trainable_parameter_count() == token_rows
    fixed = LanguageBackbone(config=cfg, tokenizer=tok_dir, train_mode="frozen", train_image_tokens=False)
    assert fixed.trainable_parameter_count() == 0


@pytest.mark.parametrize("tied", [True, False])
def test_lora_grads_adapter_and_merge(tok_dir, tmp_path, tied):
    b = LanguageBackbone(config={**TINY, "tie_word_embeddings": tied}, tokenizer=tok_dir, train_mode="lora", lora_r=4)
    ids = torch.tensor([[2, 10, 5, 6, 7, 3]])
    hidden, _ = b.hidden_states(b.embed_tokens(ids))
    b.lm_logits(hidden).logsumexp(-1).sum().backward()
    grads = {n: p.grad for n, p in b.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    with torch.no_grad():  # make the adapters non-trivial so merging is tested
        for p in b.parameters():
            if p.requires_grad:
                p.add_(0.05)
    b.eval()
    before = b.lm_logits(b.hidden_states(b.embed_tokens(ids))[0])
    b.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    b.merge_lora()
    after = b.lm_logits(b.hidden_states(b.embed_tokens(ids))[0])
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="no peft adapter"):
        b.save_adapter(tmp_path / "again")


def test_from_local_path_and_errors(tok_dir, tmp_path):
    b = LanguageBackbone(config=TINY, tokenizer=tok_dir)
    b.base_model.save_pretrained(tmp_path / "lm")
    b.tokenizer.save_pretrained(tmp_path / "lm")
    again = LanguageBackbone(model=str(tmp_path / "lm"), dtype="float32")
    ids = torch.tensor([[2, 10, 11]])
    torch.testing.assert_close(again.embed_tokens(ids), b.embed_tokens(ids))
    with pytest.raises(ValueError, match="exactly one"):
        LanguageBackbone()
    with pytest.raises(ValueError, match="needs `tokenizer`"):
        LanguageBackbone(config=TINY)
    with pytest.raises(ValueError, match="model_type"):
        LanguageBackbone(config={"hidden_size": 64}, tokenizer=tok_dir)
    with pytest.raises(ValueError, match="dtype"):
        LanguageBackbone(config=TINY, tokenizer=tok_dir, dtype="float33")


def test_gradient_checkpointing_matches(tok_dir):
    kw = dict(config=TINY, tokenizer=tok_dir, train_mode="lora", lora_r=4, lora_dropout=0.0)
    plain = LanguageBackbone(**kw)
    ckpt = LanguageBackbone(**kw, gradient_checkpointing=True)
    assert ckpt.base_model.get_decoder().gradient_checkpointing
    ids = torch.tensor([[2, 10, 5, 6, 7, 3]])
    grads = []
    for b in (plain, ckpt):
        b.train()
        b.lm_logits(b.hidden_states(b.embed_tokens(ids))[0]).logsumexp(-1).sum().backward()
        grads.append([p.grad for p in b.parameters() if p.requires_grad])
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c)


def test_processor_from_backbone(tok_dir):
    from zoo.model.processor import UnifiedProcessor
    from zoo.sample import Sample

    b = LanguageBackbone(config=TINY, tokenizer=tok_dir)
    proc = UnifiedProcessor.from_backbone(b)
    assert proc.max_length == 256 and proc.token_ids == b.token_ids
    batch = proc([Sample("text", CONVERSATION)])
    ids, mask = b.tokenize_turns(CONVERSATION)
    assert batch["input_ids"][0].tolist() == ids
    assert (batch["labels"][0] != -100).long().tolist() == mask
    hidden, _ = b.hidden_states(b.embed_tokens(batch["input_ids"]), batch["attention_mask"])
    assert hidden.shape == (1, len(ids), b.hidden_size)
