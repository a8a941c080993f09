"""LanguageBackbone: any transformers causal LM (hub id, local path or tiny config) + tokenizer + LoRA."""
from __future__ import annotations

import os
import warnings
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel, TrainableTokensConfig, get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache

from zoo.catalog.hub import hub_load_kwargs, upstream_errors
from zoo.config import Configurable, resolve_asset
from zoo.model.tokenizer import add_image_tokens, tokenize_conversation

TrainMode = Literal["full", "lora", "frozen"]


class LanguageBackbone(Configurable, nn.Module):
    """A causal language model split into embedding, decoder and LM head, with the image tokens added.

    Build from `model` (hub id or local path; ``trust_remote_code`` is never used) or from `config`
    (a dict with ``model_type`` and sizes for a seeded random init; ``vocab_size`` defaults to the
    tokenizer's length). `tokenizer` defaults to `model`. `revision` pins the hub commit of `model` (zoo
    entries set one); offline, a hub model missing from the cache raises `WeightsNotFoundError` (one line).

    `train_mode`: ``full`` trains every LM weight; ``lora`` adds peft LoRA adapters (``all-linear`` =
    every linear layer except the output head) and freezes the rest; ``frozen`` trains no LM weight.
    In ``lora`` and ``frozen`` modes the rows of the four image tokens (input embedding and, when
    untied, the output head) stay trainable through peft's trainable tokens (`train_image_tokens`),
    since pretrained models have never seen them.
    """

    def __init__(
        self,
        model: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        train_mode: TrainMode = "full",
        lora_r: int = 128,
        lora_alpha: int = 256,
        lora_dropout: float = 0.05,
        lora_target_modules: str | list[str] = "all-linear",
        train_image_tokens: bool = True,
        gradient_checkpointing: bool = False,
        attn_implementation: str = "sdpa",
        dtype: str | None = None,
        seed: int = 0,
        revision: str | None = None,
    ) -> None:
        super().__init__()
        if (model is None) == (config is None):
            raise ValueError("LanguageBackbone needs exactly one of `model` (hub id or path) or `config` (dict)")
        if train_mode not in ("full", "lora", "frozen"):
            raise ValueError(f"train_mode must be 'full', 'lora' or 'frozen', got {train_mode!r}")
        tokenizer_path = tokenizer or model
        if tokenizer_path is None:
            raise ValueError("LanguageBackbone built from `config` needs `tokenizer` (a hub id or local path)")
        tokenizer_path = resolve_asset(tokenizer_path)
        # `revision` pins the hub commit of `model` (and of its tokenizer when that comes from the same repo).
        tokenizer_revision = revision if tokenizer is None or tokenizer == model else None
        with upstream_errors(tokenizer_path, tokenizer_revision):
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=False,
                                                           **hub_load_kwargs(tokenizer_path, tokenizer_revision))
        self.token_ids: dict[str, int] = add_image_tokens(self.tokenizer)
        torch_dtype = _dtype(dtype)

        with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG
            torch.manual_seed(seed)
            if model is not None:
                with upstream_errors(model, revision):
                    lm = AutoModelForCausalLM.from_pretrained(
                        model, attn_implementation=attn_implementation, dtype=torch_dtype, trust_remote_code=False,
                        **hub_load_kwargs(model, revision),
                    )
            else:
                lm = self._from_config(dict(config or {}), attn_implementation, torch_dtype)
            if lm.get_input_embeddings().num_embeddings < len(self.tokenizer):
                # Only grow: some models pad their vocabulary beyond the tokenizer on purpose.
                lm.resize_token_embeddings(len(self.tokenizer), mean_resizing=True)
            if gradient_checkpointing:
                _enable_checkpointing(lm)
                lm.config.use_cache = False
            self.model: PreTrainedModel | PeftModel = self._wrap(
                lm, train_mode, lora_r, lora_alpha, lora_dropout, lora_target_modules, train_image_tokens
            )
        self.train_mode = train_mode

    def _from_config(self, config: dict[str, Any], attn: str, dtype: torch.dtype | None) -> PreTrainedModel:
        if "model_type" not in config:
            raise ValueError(f"backbone config needs a 'model_type' (e.g. 'llama', 'qwen2'); got keys {sorted(config)}")
        vocab = len(self.tokenizer)
        if config.setdefault("vocab_size", vocab) < vocab:
            raise ValueError(f"backbone config vocab_size {config['vocab_size']} < tokenizer length {vocab}")
        for key in ("pad", "eos"):
            config.setdefault(f"{key}_token_id", self.token_ids[key])
        if self.tokenizer.bos_token_id is not None:
            config.setdefault("bos_token_id", self.tokenizer.bos_token_id)
        cfg = AutoConfig.for_model(**config)
        return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=dtype)

    def _wrap(
        self,
        lm: PreTrainedModel,
        mode: TrainMode,
        r: int,
        alpha: int,
        dropout: float,
        targets: str | list[str],
        train_image_tokens: bool,
    ) -> PreTrainedModel | PeftModel:
        if mode == "full":
            lm.requires_grad_(True)
            return lm
        token_targets = self._token_targets(lm) if train_image_tokens else None
        if mode == "lora":
            lora = LoraConfig(
                r=r,
                lora_alpha=alpha,
                lora_dropout=dropout,
                target_modules=targets,
                trainable_token_indices=token_targets,
                task_type="CAUSAL_LM",
            )
            return _peft(lm, lora)
        if token_targets is None:
            lm.requires_grad_(False)
            return lm
        ids = self._image_token_list()
        return _peft(lm, TrainableTokensConfig(target_modules=list(token_targets), token_indices=ids))

    def _image_token_list(self) -> list[int]:
        return sorted({self.token_ids[k] for k in ("image", "boi", "image_out", "eoi")})

    def _token_targets(self, lm: PreTrainedModel) -> dict[str, list[int]]:
        """Embedding modules whose image-token rows train: input embeddings, plus the head when untied."""
        ids = self._image_token_list()
        names = {id(m): n.rsplit(".", 1)[-1] for n, m in lm.named_modules()}
        emb, head = lm.get_input_embeddings(), lm.get_output_embeddings()
        targets = {names[id(emb)]: ids}
        # A tied head follows the embedding through peft; an untied one needs its own trainable rows.
        if head is not None and not _is_tied(lm):
            targets[names[id(head)]] = ids
        return targets

    # --- pieces the unified model calls -------------------------------------------------------------

    @property
    def base_model(self) -> PreTrainedModel:
        """The transformers model under any peft wrapper (adapters stay injected in its layers)."""
        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    @property
    def config(self) -> Any:
        """The language model's transformers config."""
        return self.base_model.config

    @property
    def hidden_size(self) -> int:
        """Width H of the hidden states."""
        return self.config.get_text_config().hidden_size

    @property
    def vocab_size(self) -> int:
        """Rows of the output head (>= len(tokenizer))."""
        return self.config.get_text_config().vocab_size

    @property
    def max_positions(self) -> int | None:
        """Context length from the config (max_position_embeddings), None if the model has none."""
        return getattr(self.config.get_text_config(), "max_position_embeddings", None)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> input embeddings [B, T, H] (through any trainable-token rows)."""
        return self.base_model.get_input_embeddings()(input_ids)

    def hidden_states(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Cache | None]:
        """Run the decoder (no LM head) on embeddings [B, T, H]; return (last hidden states [B, T, H], cache).

        With a `cache`, `inputs_embeds` are the new positions only and `attention_mask` spans the cached
        plus new positions. Left-padded batches should pass `position_ids`.
        """
        decoder = self.base_model.get_decoder()
        out = decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
        )
        return out.last_hidden_state, (out.cache if use_cache else None)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., H] -> vocabulary logits [..., V] through the output head."""
        return self.base_model.get_output_embeddings()(hidden)

    def new_cache(self) -> DynamicCache:
        """An empty KV cache for `hidden_states(..., cache=..., use_cache=True)`."""
        return DynamicCache(config=self.config)

    def tokenize_turns(
        self, turns: list[dict[str, str]], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        """Template and tokenize a conversation; return (ids, assistant mask) (see tokenize_conversation)."""
        return tokenize_conversation(self.tokenizer, turns, add_generation_prompt)

    # --- bookkeeping ---------------------------------------------------------------------------------

    def trainable_parameter_count(self) -> int:
        """Number of LM parameters that train."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def save_adapter(self, directory: str | os.PathLike) -> None:
        """Save the peft adapter (LoRA and trainable tokens) in peft's format."""
        if not isinstance(self.model, PeftModel):
            raise ValueError(f"backbone (train_mode {self.train_mode!r}) has no peft adapter to save (merged?)")
        self.model.save_pretrained(os.fspath(directory))

    def merge_lora(self) -> None:
        """Merge the adapters into the base weights and drop peft (for fast inference or export)."""
        if not isinstance(self.model, PeftModel):
            raise ValueError(f"backbone (train_mode {self.train_mode!r}) has no peft adapter to merge (merged?)")
        # Merged weights keep requires_grad=False: a merged backbone is for inference or export.
        self.model = self.model.merge_and_unload()


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; expected e.g. 'float32', 'bfloat16', 'float16'")
    return value


def _enable_checkpointing(lm: PreTrainedModel) -> None:
    # Non-reentrant checkpointing needs no input-grad hooks under frozen embeddings (LoRA);
    # transformers 5.2x renamed gradient_checkpointing_enable to activation_checkpointing_enable.
    enable = getattr(lm, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _peft(lm: PreTrainedModel, config: LoraConfig | TrainableTokensConfig) -> PeftModel:
    with warnings.catch_warnings():
        # peft warns that tied trainable tokens are not tied; they are (the head follows the embedding's
        # adapter; tests check merged == unmerged logits).
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings=True.*", category=UserWarning)
        return get_peft_model(lm, config)


def _is_tied(lm: PreTrainedModel) -> bool:
    head = lm.get_output_embeddings()
    return head is not None and head.weight is lm.get_input_embeddings().weight
