"""Tokenizers for unified VLMs: the image special tokens, a tiny trained tokenizer, chat templates.

The assistant-token mask always comes from the chat template, never from hand-counted offsets:
templates with ``{% generation %}`` blocks use transformers' ``return_assistant_tokens_mask``; other
templates are rendered prefix by prefix to find each assistant reply's characters (see
`tokenize_conversation`).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from zoo.sample import IMAGE_MARKER


@dataclass(frozen=True)
class SpecialTokens:
    """Names of the special tokens. The four image tokens are added to every tokenizer; the rest only to
    tokenizers trained here (pretrained tokenizers keep their own pad/unk/bos/eos)."""

    image: str = IMAGE_MARKER  # a read image: the marker in text, expanded to N input-image positions
    boi: str = "<boi>"  # begin of a written image (predicted as text)
    image_out: str = "<image_out>"  # one written-image position
    eoi: str = "<eoi>"  # end of a written image (predicted as text)
    pad: str = "<pad>"
    unk: str = "<unk>"
    bos: str = "<s>"
    eos: str = "</s>"

    @property
    def image_tokens(self) -> tuple[str, str, str, str]:
        """The four image tokens in id order when added: image, boi, image_out, eoi."""
        return (self.image, self.boi, self.image_out, self.eoi)


SPECIAL_TOKENS = SpecialTokens()

_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# Characters every trained vocabulary gets, so any number and common punctuation stays representable.
_ALPHABET = "0 1 2 3 4 5 6 7 8 9 . , ? ! : ; % ' - / ( ) ° +"

# Decoding joins tokens with spaces, then undoes the spaces the pre-tokenizer introduced (applied in order).
_DECODE_RULES: tuple[tuple[str, str], ...] = (
    (r" (?=[.,!?;:%)\]}°])", ""),  # no space before closing punctuation
    (r"(?<=[(\[{$#]) ", ""),  # no space after opening brackets
    (r" ' (?=(s|t|m|d|re|ve|ll)\b)", "'"),  # contractions: user's, isn't
    (r"(?<=\w) - (?=\w)", "-"),  # well-known
    (r"(?<=\w) / (?=\w)", "/"),  # km/h
    (r"(?<=\d) (?=\d)", ""),  # digits of one number: 5 7 -> 57
    (r"(?<=\d[:./]) (?=\d)", ""),  # 07: 05 -> 07:05, 3. 5 -> 3.5
)


def vicuna_template(system: str | None = VICUNA_SYSTEM) -> str:
    """A Vicuna-v1 chat template ("SYSTEM USER: q ASSISTANT: a</s>USER: ...") with generation blocks.

    A leading ``system`` message replaces `system`. Each assistant reply and its EOS sit inside
    ``{% generation %}`` so transformers can return the assistant-token mask.
    """
    default = json.dumps(system or "", ensure_ascii=False)
    return (
        "{%- if bos_token %}{{ bos_token }}{% endif -%}\n"
        "{%- if messages and messages[0]['role'] == 'system' -%}\n"
        "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}\n"
        "{%- else -%}\n"
        f"{{%- set system = {default} -%}}{{%- set turns = messages -%}}\n"
        "{%- endif -%}\n"
        "{%- if system %}{{ system }} {% endif -%}\n"
        "{%- for message in turns -%}\n"
        "{%- if message['role'] == 'user' -%}\n"
        "USER: {{ message['content'] }}{{ ' ' }}\n"
        "{%- elif message['role'] == 'assistant' -%}\n"
        "ASSISTANT: {% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}\n"
        "{%- else -%}\n"
        "{{ raise_exception('unknown role ' ~ message['role'] ~ ': expected user or assistant') }}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt %}ASSISTANT:{% endif -%}\n"
    )


def _decoder() -> decoders.Decoder:
    steps: list[decoders.Decoder] = [decoders.WordPiece(prefix="##", cleanup=False), decoders.Fuse()]
    steps += [decoders.Replace(Regex(pattern), content) for pattern, content in _DECODE_RULES]
    return decoders.Sequence(steps)


def train_word_level_tokenizer(
    texts: Iterable[str], out_dir: str | os.PathLike | None = None, system_prompt: str | None = VICUNA_SYSTEM
) -> PreTrainedTokenizerFast:
    """Train a lowercase WordLevel tokenizer (digits split one by one) with the Vicuna chat template.

    The template's words (system line, USER/ASSISTANT) and the digits/punctuation are always in the
    vocabulary. `system_prompt=""` drops the system line (it costs ~27 tokens per sample at tiny sizes).
    Saved with ``save_pretrained(out_dir)`` when given, so ``AutoTokenizer.from_pretrained(out_dir)``
    loads it offline.
    """
    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS.unk))
    tok.normalizer = normalizers.Lowercase()
    # Punctuation isolates runs like "%." that Whitespace alone keeps as one token.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation("isolated"), pre_tokenizers.Digits(individual_digits=True)]
    )
    s = SPECIAL_TOKENS
    specials = [s.pad, s.unk, s.bos, s.eos, *s.image_tokens]
    extra = [_ALPHABET, "USER: ASSISTANT:", system_prompt or ""]
    tok.train_from_iterator(_chain(extra, texts), trainers.WordLevelTrainer(special_tokens=specials, show_progress=False))
    bos_id = tok.token_to_id(s.bos)
    # Like Llama tokenizers: plain encoding prepends BOS (chat templating encodes without it and writes its own).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{s.bos} $A", pair=f"{s.bos} $A {s.bos} $B", special_tokens=[(s.bos, bos_id)]
    )
    tok.decoder = _decoder()
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=s.bos,
        eos_token=s.eos,
        unk_token=s.unk,
        pad_token=s.pad,
        extra_special_tokens=list(s.image_tokens),
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = vicuna_template(system_prompt)
    if out_dir is not None:
        wrapped.save_pretrained(os.fspath(out_dir))
    return wrapped


def _chain(first: Sequence[str], rest: Iterable[str]) -> Iterable[str]:
    yield from first
    yield from rest


def add_image_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Add the four image tokens as special tokens (no-op where present) and give a pad token; return `token_ids`.

    A tokenizer without a pad token gets its unk token as pad (else eos): padded positions are masked
    by the attention mask and labels, so the id only has to exist.
    """
    missing = [t for t in SPECIAL_TOKENS.image_tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no eos token: the chat template needs one")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return special_token_ids(tokenizer)


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Ids of image, boi, image_out, eoi, pad, eos in `tokenizer` (ValueError if one is missing)."""
    vocab = tokenizer.get_vocab()
    s = SPECIAL_TOKENS
    ids: dict[str, int] = {}
    for name, token in (("image", s.image), ("boi", s.boi), ("image_out", s.image_out), ("eoi", s.eoi)):
        if token not in vocab:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} lacks {token!r}; call add_image_tokens first")
        ids[name] = vocab[token]
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} needs pad and eos tokens; call add_image_tokens first")
    ids["pad"] = tokenizer.pad_token_id
    ids["eos"] = tokenizer.eos_token_id
    return ids


def chat_template_for(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's own chat template, or the Vicuna-v1 template where it has none."""
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    return template or vicuna_template()


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, str]], add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Template `turns` and tokenize them; return (ids, assistant mask) with 1 on every assistant-reply token.

    The mask covers each reply and what the template appends to it up to the next turn (the EOS the
    model must learn to emit). Templates with ``{% generation %}`` blocks use transformers' mask; for
    others each reply's characters are found by rendering the conversation up to that reply with the
    generation prompt (its start) and including it (its end); templates that are not prefix-stable
    raise ValueError.
    """
    template = chat_template_for(tokenizer)
    if _GENERATION_BLOCK.search(template):
        out = tokenizer.apply_chat_template(
            turns,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        return list(out["input_ids"]), list(out["assistant_masks"])
    return _tokenize_by_prefixes(tokenizer, template, turns, add_generation_prompt)


def _render(tokenizer: PreTrainedTokenizerBase, template: str, turns: list[dict[str, str]], gen: bool) -> str:
    return tokenizer.apply_chat_template(turns, chat_template=template, add_generation_prompt=gen, tokenize=False)


def _tokenize_by_prefixes(
    tokenizer: PreTrainedTokenizerBase, template: str, turns: list[dict[str, str]], add_generation_prompt: bool
) -> tuple[list[int], list[int]]:
    text = _render(tokenizer, template, turns, add_generation_prompt)
    spans: list[tuple[int, int]] = []
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        before = _render(tokenizer, template, turns[:i], True)
        upto = _render(tokenizer, template, turns[: i + 1], False)
        if not (text.startswith(before) and text.startswith(upto) and upto.startswith(before)):
            raise ValueError(
                f"chat template of {tokenizer.name_or_path!r} is not prefix-stable at turn {i}: the assistant "
                "mask cannot be derived; give the tokenizer a template with {% generation %} blocks "
                "(e.g. zoo.model.tokenizer.vicuna_template())"
            )
        spans.append((len(before), len(upto)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [0] * len(enc["input_ids"])
    for j, (start, end) in enumerate(enc["offset_mapping"]):
        if any(start < e and end > s for s, e in spans):
            mask[j] = 1
    return list(enc["input_ids"]), mask
