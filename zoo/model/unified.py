"""UnifiedVLM: one causal LM that reads images through a read space and writes them in a write space.

The two directions are called *read* and *write* everywhere: constructor arguments and recipe keys
(`read_space`, `write_space`, `read_projector`, `write_projector`), attributes and state-dict keys
(`read_projector.*`, `write_projector.*`, `read_positions`, `write_positions`, `write_feature_norm`),
batch keys (`read_pixels`/`read_codes`/`read_features`, `write_*`) and hooks (`encode_read`,
`encode_write`); prose says "read" and "written" images. Older names (und/gen, input/output:
`input_space`, `und_projector`, `encode_read_images`, ...) still work with a FutureWarning, and older
checkpoints load: zoo/_legacy.py has the table, zoo/catalog/checkpoint.py applies it.

Not directions, so not renamed: the *tasks* "understanding" (vqa, caption) and "generation" are the
study's task names (zoo.sample.TASKS, `mix: understanding|generation|mixed`); a generation sample is one
whose assistant turn writes an image. And the tokenizer's image tokens keep their names, as do the
`token_ids` keys that name them: `<image>` ("image", a read-image position; also the marker of every image
in a conversation), `<boi>`/`<eoi>` around a written image, and `<image_out>` ("image_out", a write
position), because the shipped tokenizer (zoo/assets/tokenizers/smartwatch) and every checkpoint's
embedding rows are laid out by them.
"""
from __future__ import annotations

import importlib
import io
import os
import warnings
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch import nn

from zoo.catalog import checkpoint as zoo_checkpoint  # `checkpoint` is Lightning's hook argument name
from zoo.catalog.checkpoint import CheckpointMismatchError  # noqa: F401  (re-exported: older code imports it from this module)
from zoo.config import Configurable, build
from zoo.eval.metrics import flatten_metrics  # noqa: F401  (re-exported: older code imports it from this module)
from zoo.model.adapters import GridPositionEmbedding, ImagePositions, ProjectorKind, make_head, make_projector
from zoo.model.backbone import LanguageBackbone
from zoo.model.code_cache import cache_for
from zoo.model.feedback import at_norm, corrupt_codes, corrupt_features, noisy, pick_codes
from zoo.model.objectives import IGNORE_INDEX, ImageLossKind, image_token_loss, per_group_mean, text_cross_entropy
from zoo.model.processor import UnifiedProcessor
from zoo.model.settings import EvalSettings, OptimSettings, configure_adamw_cosine
from zoo.sample import TASKS
from zoo.spaces.base import ImageSpace


class UnifiedVLM(Configurable, L.LightningModule):
    """A unified vision-language model (DESIGN.md §3-4).

    Components are injected (LightningCLI `class_path`/`init_args`, or specs when rebuilt from a
    checkpoint). Subclass hooks, in the order a training step calls them:
    `encode_read` (understanding input), `encode_write` (teacher forcing + targets),
    `image_loss` (generation objective), and at inference `next_image_token` -> `choose_image_token` ->
    `feedback`. `loss` combines `forward`'s per-token losses into the training objective. What
    `unizoo test|predict` write is zoo.eval.writer.EvalWriter's job (attached by `configure_callbacks`).
    """

    # Constructor arguments that change how the model trains or decodes, not which weights it has: a
    # checkpoint may be resumed or tested with other values (`unizoo fit|test --ckpt_path` checks the rest).
    # The list and why it is explicit: zoo/catalog/checkpoint.py. A subclass with settings of its own extends it.
    RUN_SETTINGS = zoo_checkpoint.RUN_SETTINGS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)  # Configurable: records the constructor's arguments
        if "__init__" in cls.__dict__:  # older names of renamed arguments, mapped before they are recorded
            cls.__init__ = zoo_checkpoint.accept_renamed_arguments(cls.__init__)  # type: ignore[method-assign]
        for old, new in _RENAMED_HOOKS.items():  # a subclass written against the hooks' older names
            if old in cls.__dict__ and new not in cls.__dict__:
                warnings.warn(f"{cls.__qualname__}.{old} overrides the hook now called {new}; rename it",
                              FutureWarning, stacklevel=2)
                setattr(cls, new, cls.__dict__[old])

    def __init__(
        self,
        backbone: LanguageBackbone,
        read_space: ImageSpace | None = None,
        write_space: ImageSpace | None = None,
        read_projector: ProjectorKind = "mlp",
        write_projector: ProjectorKind = "mlp",
        share_projector: bool = False,
        image_loss: ImageLossKind | None = None,
        alpha: float = 1.0,
        lr: float = 2e-4,
        projector_lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.03,
        max_length: int | None = None,
        cache_codes: bool = False,
        cache_features: bool = False,
        eval_max_new_tokens: int = 128,
        eval_temperature: float = 0.0,
        init_from: str | None = None,
        image_positions: ImagePositions = "none",
        feedback_noise: float = 0.0,
        feedback_corruption: float = 0.0,
        condition_dropout: float = 0.0,
        train_on_inputs: bool = False,
        eval_guidance_scale: float = 1.0,
        eval_image_temperature: float = 0.0,
        eval_image_top_k: int = 0,
    ) -> None:
        super().__init__()
        spec = self.spec()
        # Lightning's own convention (as LightningCLI writes it): `load_from_checkpoint` and
        # `unizoo test --ckpt_path` rebuild the exact subclass from these, with no recipe at hand.
        self.save_hyperparameters(
            {"_class_path": spec["class_path"], "_instantiator": "lightning.pytorch.cli.instantiate_module", **spec["init_args"]}
        )
        self.backbone = build(backbone)
        self.read_space = build(read_space)
        self.write_space = build(write_space)
        hidden = self.backbone.hidden_size
        if self.read_space is not None:
            self.read_projector = make_projector(read_projector, self.read_space.dim, hidden)
        if self.write_space is not None:
            out = self.write_space
            if share_projector:
                if self.read_space is None or self.read_space.dim != out.dim:
                    raise ValueError("share_projector needs a read space of the write space's width")
                self.write_projector = self.read_projector  # the paper's SigLIP-SigLIP: one projector both ways
            else:
                self.write_projector = make_projector(write_projector, out.dim, hidden)
            self.head = make_head(hidden, out.codebook_size if out.discrete else out.dim)
            self.image_loss_kind: ImageLossKind = image_loss or ("ce" if out.discrete else "cosine")
            if out.discrete != (self.image_loss_kind == "ce"):
                raise ValueError(f"image_loss {self.image_loss_kind!r} does not fit a {'discrete' if out.discrete else 'continuous'} write space")
            if self.image_loss_kind == "cosine":
                # 1 - cosine leaves the predictions' norm free: generation feeds back their direction at
                # the running mean norm of the written features, kept here (zoo.model.feedback.at_norm says why).
                self.register_buffer("write_feature_norm", torch.zeros(()))
        self.alpha = alpha
        if image_positions not in ("none", "grid"):
            raise ValueError(f"image_positions must be 'none' or 'grid', got {image_positions!r}")
        if image_positions == "grid":  # the 2-D place of read and written image tokens (zoo.model.adapters)
            if self.read_space is not None:
                self.read_positions = GridPositionEmbedding(self.read_space.num_tokens, hidden)
            if self.write_space is not None:
                self.write_positions = GridPositionEmbedding(self.write_space.num_tokens, hidden)
        if feedback_noise < 0 or not 0 <= condition_dropout < 1 or not 0 <= feedback_corruption < 1:
            raise ValueError(f"feedback_noise must be >= 0, feedback_corruption and condition_dropout in [0, 1), got "
                             f"{feedback_noise}, {feedback_corruption}, {condition_dropout}")
        # Training only, on the fed-back written tokens (the targets stay true); why: zoo/model/feedback.py.
        self.feedback_noise = feedback_noise  # Gaussian noise of this size relative to each feature's RMS
        self.feedback_corruption = feedback_corruption  # this share of tokens replaced by random ones
        context = self.backbone.max_positions
        if max_length is not None and context and max_length > context:
            raise ValueError(f"max_length {max_length} exceeds the language model's context of {context} positions")
        # Kept as attributes: hparams hold only what the outermost class recorded (variants pass **kwargs).
        self.optim_settings = OptimSettings(lr=lr, projector_lr=projector_lr, weight_decay=weight_decay,
                                            warmup_ratio=warmup_ratio)
        self.eval_settings = EvalSettings(max_new_tokens=eval_max_new_tokens, temperature=eval_temperature,
                                          guidance_scale=eval_guidance_scale, image_temperature=eval_image_temperature,
                                          image_top_k=eval_image_top_k)
        self.max_length = max_length or self.backbone.max_positions
        if init_from:
            self.load_matching_weights(init_from)
        self.processor = UnifiedProcessor(
            tokenizer=self.backbone.tokenizer,
            token_ids=self.backbone.token_ids,
            read_space=self.read_space,
            write_space=self.write_space,
            max_length=self.max_length,
            code_cache=cache_for((self.write_space, self.read_space), cache_codes, cache_features),
            condition_dropout=condition_dropout,
            train_on_inputs=train_on_inputs,
        )

    # ----------------------------------------------------------------------------- forward pass
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Teacher-forced pass over a collated batch: per-token text and image losses with their sample ids."""
        ids = batch["input_ids"]
        embeds = self.embed_inputs(batch)
        write_pos = ids == self.backbone.token_ids["image_out"]
        targets = None
        if write_pos.any():
            teacher, targets = self.encode_write(batch)
            embeds = embeds.masked_scatter(write_pos.unsqueeze(-1), teacher.to(embeds.dtype))
        hidden, _ = self.backbone.hidden_states(embeds, batch["attention_mask"])
        # Position t predicts token t+1: text logits only where a label is set (never on image positions).
        hidden, labels = hidden[:, :-1], batch["labels"][:, 1:]
        sample_of = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(labels)
        text_sel = labels != IGNORE_INDEX
        out = {
            "text_loss": text_cross_entropy(self.backbone.lm_logits(hidden[text_sel]), labels[text_sel]),
            "text_sample": sample_of[text_sel],
        }
        if targets is not None:
            self._track_write_norm(targets)
            image_sel = write_pos[:, 1:]  # the position before each written image token
            out["image_loss"] = self.image_loss(self.head(hidden[image_sel]), targets)
            out["image_sample"] = sample_of[image_sel]
            if batch.get("write_weights") is not None:  # the samples' emphasis maps, per written token
                out["image_weight"] = batch["write_weights"].to(out["image_loss"]).flatten()
        return out

    def embed_inputs(self, batch: dict[str, Any]) -> torch.Tensor:
        """Token embeddings [B, T, H] with the read images' projected features at their positions."""
        ids = batch["input_ids"]
        embeds = self.backbone.embed_tokens(ids)
        read_pos = ids == self.backbone.token_ids["image"]
        if read_pos.any():
            embeds = embeds.masked_scatter(read_pos.unsqueeze(-1), self.encode_read(batch).to(embeds.dtype))
        return embeds

    @torch.no_grad()
    def _track_write_norm(self, targets: torch.Tensor) -> None:
        """Running mean (EMA 0.99) of the written features' norm, during training only."""
        norm = getattr(self, "write_feature_norm", None)
        if norm is None or not self.training:
            return
        batch_norm = targets.float().norm(dim=-1).mean()
        norm.copy_(torch.where(norm > 0, 0.99 * norm + 0.01 * batch_norm, batch_norm))

    # ----------------------------------------------------------------------------- hooks
    def encode_read(self, batch: dict[str, Any]) -> torch.Tensor:
        """Embeddings [n_images * N_in, H] for every read-image position, in batch order."""
        space = self.read_space
        if batch.get("read_features") is not None:  # cached by the processor (frozen continuous space)
            features = batch["read_features"]
        elif batch.get("read_codes") is not None:
            features = space.embed_codes(batch["read_codes"])
        else:
            features, _ = space.encode(batch["read_pixels"])
        embeds = self.read_projector(features)
        if hasattr(self, "read_positions"):
            embeds = self.read_positions(embeds)
        return embeds.flatten(0, 1)

    def encode_write(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher-forcing embeddings [M, H], targets [M, D] features or [M] codes) for written images."""
        space = self.write_space
        if batch.get("write_codes") is not None:  # cached codes: the discrete branch below embeds them once
            features, codes = None, batch["write_codes"]
        elif batch.get("write_features") is not None:  # cached by the processor (frozen continuous space)
            features, codes = batch["write_features"], None
        else:
            features, codes = space.encode(batch["write_pixels"])
        corrupt = self.training and self.feedback_corruption > 0
        if space.discrete:
            fed_codes = corrupt_codes(codes, self.feedback_corruption, space.codebook_size) if corrupt else codes
            return self._place(self.write_projector(space.embed_codes(fed_codes))).flatten(0, 1), codes.flatten()
        fed = noisy(features, self.feedback_noise) if self.training and self.feedback_noise > 0 else features
        if corrupt:
            fed = corrupt_features(fed, features, self.feedback_corruption)
        return self._place(self.write_projector(fed)).flatten(0, 1), features.flatten(0, 1).detach()

    def _place(self, embeds: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Add the written tokens' 2-D place where the model has one (`image_positions: grid`)."""
        return self.write_positions(embeds, index) if hasattr(self, "write_positions") else embeds

    def image_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-token generation loss [M] of head outputs against targets."""
        return image_token_loss(self.image_loss_kind, prediction, target)

    def next_image_token(self, hidden: torch.Tensor, sample: bool = False, temperature: float = 1.0,
                         index: torch.Tensor | None = None, top_k: int = 0,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """From the last hidden states [B, H]: (the image token [B, D] or code [B], its embedding [B, H] to feed back).

        `index` [B]: which image token of its image each sample writes now (0..N-1), for `image_positions`.
        """
        return self.choose_image_token(self.head(hidden), sample, temperature, index, top_k, generator)

    def choose_image_token(self, prediction: torch.Tensor, sample: bool = False, temperature: float = 1.0,
                           index: torch.Tensor | None = None, top_k: int = 0,
                           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Head outputs [B, K] logits or [B, D] features -> (token, fed-back embedding [B, H]); see `feedback`."""
        if self.write_space.discrete:
            token = pick_codes(prediction, temperature if sample else 0.0, top_k, generator)
        else:  # at the written features' norm where the model tracks one (cosine loss; 0: the raw prediction)
            norm = getattr(self, "write_feature_norm", None)
            token = prediction if norm is None else at_norm(prediction, norm)
        return token, self.feedback(token, index)

    def feedback(self, token: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """The LM input [B, H] for a written image token (code [B] or features [B, D]) at token `index` [B]."""
        space = self.write_space
        features = space.embed_codes(token.unsqueeze(1)) if space.discrete else token.unsqueeze(1)
        embeds = self.write_projector(features).squeeze(1)
        if hasattr(self, "write_positions"):
            if index is None:
                raise ValueError("feedback: this model places written tokens (image_positions: grid); pass index")
            embeds = self._place(embeds, index)
        return embeds

    def encode_read_images(self, batch: dict[str, Any]) -> torch.Tensor:
        """Deprecated name of `encode_read`."""
        warnings.warn("encode_read_images is now called encode_read", FutureWarning, stacklevel=2)
        return self.encode_read(batch)

    def encode_written_images(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Deprecated name of `encode_write`."""
        warnings.warn("encode_written_images is now called encode_write", FutureWarning, stacklevel=2)
        return self.encode_write(batch)

    # ----------------------------------------------------------------------------- training loop
    def loss(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(text CE + alpha x image loss, {"text_loss": mean, "image_loss": mean}) of `forward`'s output.

        The objective training and validation log; tests and the bench call it instead of restating it.
        With per-token weights (`image_weight`, from samples' emphasis maps) the objective's image term is the
        mean of weight x loss: emphasised tokens add gradient without taking any from the rest. The logged
        `image_loss` stays the unweighted mean, comparable across runs with and without emphasis.
        """
        text = out["text_loss"]
        parts = {"text_loss": text.mean() if text.numel() else text.sum()}  # no text target: 0, not NaN
        total = parts["text_loss"]
        if "image_loss" in out:
            parts["image_loss"] = out["image_loss"].mean()
            weight = out.get("image_weight")
            image_term = parts["image_loss"] if weight is None else (weight * out["image_loss"]).mean()
            total = total + self.alpha * image_term
        return total, parts

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        out = self(batch)
        loss, parts = self.loss(out)
        bs = batch["input_ids"].shape[0]
        for name, value in parts.items():
            self.log(f"{stage}/{name}", value, batch_size=bs, prog_bar=stage == "train")
        self.log(f"{stage}/loss", loss, batch_size=bs, prog_bar=True)
        self._log_per_task(out, batch["tasks"], stage)
        return loss

    def _log_per_task(self, out: dict[str, torch.Tensor], tasks: list[str], stage: str) -> None:
        task_ids = torch.tensor([TASKS.index(t) for t in tasks], device=out["text_loss"].device)
        for part in ("text", "image"):
            if f"{part}_loss" not in out:
                continue
            means, counts = per_group_mean(out[f"{part}_loss"].detach(), task_ids[out[f"{part}_sample"]], len(TASKS))
            for i, task in enumerate(TASKS):
                if counts[i] > 0:
                    self.log(f"{stage}/{part}_loss/{task}", means[i], batch_size=int((task_ids == i).sum()))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """One optimisation step's loss (text CE + alpha x image loss)."""
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss {loss.item()} at step {self.global_step} (batch {batch_idx}); "
                "stopping: the last good checkpoint is kept. Lower the learning rate or check the data."
            )
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Teacher-forced validation losses, per part and task."""
        return self._step(batch, "val")

    # ----------------------------------------------------------------------------- evaluation, optimisation
    def generation_config(self) -> "GenerationConfig":
        """Decoding settings of evaluation (`eval_settings`: greedy, at most `eval_max_new_tokens` new text tokens)."""
        from zoo.model.generate import GenerationConfig

        return GenerationConfig(**asdict(self.eval_settings), seed=0)

    def test_step(self, batch: list, batch_idx: int) -> list[dict[str, Any]]:
        """Answer, caption and draw for a list of Samples: the batch's records (zoo.eval.evaluation), which
        EvalWriter scores and writes at the epoch's end (`eval_metrics`, `eval_outputs`)."""
        from zoo.eval.evaluation import evaluate_samples

        return evaluate_samples(self, batch, self.generation_config())

    def predict_step(self, batch: list, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """The records `test_step` makes; EvalWriter writes them unscored (`predict_outputs`)."""
        return self.test_step(batch, batch_idx)

    def configure_callbacks(self) -> list[L.Callback]:
        """EvalWriter (zoo.eval.writer): every trainer that tests or predicts with this model writes its outputs."""
        from zoo.eval.writer import EvalWriter

        return [EvalWriter()]

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with two groups (LM/LoRA at `lr`, projectors/heads at `projector_lr`), cosine with warm-up."""
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else None
        return configure_adamw_cosine(self, self.backbone, self.optim_settings, total)

    # ----------------------------------------------------------------------------- checkpoints
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> UnifiedVLM:  # type: ignore[override]
        """Lightning's `load_from_checkpoint`, reading a checkpoint written under older names in today's:
        moved module paths (`zoo.variants.SharedSpaceVLM`), renamed arguments (`input_space`) and state keys
        (`und_projector.*`), see zoo/_legacy.py. The zoo class the checkpoint names is imported first."""
        local = isinstance(checkpoint_path, (str, os.PathLike)) and os.path.isfile(checkpoint_path)
        current = zoo_checkpoint.current_checkpoint(checkpoint_path) if local else None
        ckpt = current or (zoo_checkpoint.read_checkpoint(checkpoint_path) if local else {})  # memory-mapped
        class_path = (ckpt.get("hyper_parameters") or {}).get("_class_path")
        if isinstance(class_path, str) and class_path.startswith("zoo."):
            # Lightning rebuilds only classes already imported (a guard against code named by a file); a class
            # of this package is no such risk, so its module is imported here rather than by every caller.
            importlib.import_module(class_path.rpartition(".")[0])
        if current is not None:
            buffer = io.BytesIO()
            torch.save(current, buffer)
            buffer.seek(0)
            checkpoint_path = buffer
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    # Checkpoint policy lives in zoo/catalog/checkpoint.py; these methods stay because subclasses override them and
    # other code (registry, CLI) calls them on any model.
    def reloadable_prefixes(self) -> list[str]:
        """State-dict prefixes of frozen components that rebuild from their own source (hub id, path)."""
        return zoo_checkpoint.reloadable_prefixes(self)

    def frozen_state_keys(self) -> set[str]:
        """Keys left out of checkpoints: frozen parameters of components that reload from their source."""
        return zoo_checkpoint.frozen_state_keys(self, self.reloadable_prefixes())

    def load_matching_weights(self, path: str) -> dict[str, int]:
        """Start from another run's weights where names and shapes match (LLaVA stage 2 from stage 1).

        Unlike `--ckpt_path` (resume: optimiser, step, data position), this copies weights only. peft's
        trainable-token rows of a frozen/LoRA stage do not map onto a fully trained embedding: the four
        image-token rows restart from their initialisation; the projectors and head carry over.
        """
        return zoo_checkpoint.load_matching_weights(self, path)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep trainable weights and the config; drop frozen weights that reload from their source."""
        zoo_checkpoint.prepare_for_saving(self, checkpoint, self.frozen_state_keys())

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load, accepting only the frozen reloadable keys as missing; anything else is an error.

        Keys of older checkpoints (`und_projector.*`, `gen_projector.*`, ...) load under today's names."""
        state_dict = zoo_checkpoint.current_state_dict(state_dict)
        # Shapes are always checked (torch would fail later, less clearly); strict=False waives the key sets.
        zoo_checkpoint.check_state_dict(
            state_dict, self.state_dict(), where=f"checkpoint does not fit {type(self).__name__}",
            allowed_missing=[*self.frozen_state_keys(), *zoo_checkpoint.OPTIONAL_STATE_KEYS],
            missing_ok=not strict, unexpected_ok=not strict)
        return super().load_state_dict(state_dict, strict=False, assign=assign)


# Hooks renamed with the read/write vocabulary: older name -> today's (a subclass may override either).
_RENAMED_HOOKS = {"encode_read_images": "encode_read", "encode_written_images": "encode_write"}
# UnifiedVLM itself takes the older argument names too (its subclasses get this in __init_subclass__).
UnifiedVLM.__init__ = zoo_checkpoint.accept_renamed_arguments(UnifiedVLM.__init__)  # type: ignore[method-assign]


def trainable_parameter_count(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

