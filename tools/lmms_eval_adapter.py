"""An lmms-eval model adapter for UnifiedVLM checkpoints (PAPER.md §6: the LLaVA-1.5 benchmark check).

Targets the "simple" model interface of lmms-eval (PyPI `lmms-eval` >= 0.3; checked against 0.7):
requests are `Instance`s whose `.args` are

- generate_until: (context, gen_kwargs, doc_to_visual, doc_id, task, split)
- loglikelihood:  (context, doc_to_target, doc_to_visual, doc_id, task, split)

and the document is `self.task_dict[task][split][doc_id]` (lmms-eval fills `task_dict`). lmms-eval
stays optional: `UnizooLMM` works on any objects with such `.args` (that is how it is tested), and
`register()` imports lmms-eval only when called, then registers a subclass of its `lmms` base:

    from tools.lmms_eval_adapter import register
    UnizooEval = register("unizoo")          # `--model unizoo --model_args checkpoint=...,batch_size=4`
    from lmms_eval.evaluator import simple_evaluate
    simple_evaluate(model=UnizooEval(checkpoint="runs/x/version_0/checkpoints/last.ckpt"), tasks=["mme"])

Protocol: each read image becomes one `<image>` marker before the context in a single user turn (markers
already in the context are kept when their count matches); answers are decoded greedily unless
`do_sample` with a temperature > 0, never open an image, and are cut at the first `until` string.
`loglikelihood` scores the continuation's tokens after the chat template's assistant prompt with one
teacher-forced pass: (sum of log-probabilities, whether every token is the argmax).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

from zoo.sample import IMAGE_MARKER, Sample

_HARNESS_EXTRAS = ("max_batch_size",)  # passed by the harness to every model; meaningless here


class UnizooLMM:
    """A UnifiedVLM behind lmms-eval's `generate_until` / `loglikelihood` interface."""

    is_simple = True

    def __init__(
        self,
        checkpoint: str | None = None,
        pretrained: str | None = None,
        model: Any = None,
        device: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int | str = 128,
        dtype: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__()  # lmms.__init__ when registered: rank, cache hook, task_dict
        unknown = sorted(k for k in extra if k not in _HARNESS_EXTRAS)
        if unknown:
            raise ValueError(f"UnizooLMM: unknown argument(s) {unknown}; expected checkpoint, pretrained, device, "
                             "batch_size, max_new_tokens, dtype")
        if sum(x is not None for x in (checkpoint, pretrained, model)) != 1:
            raise ValueError("UnizooLMM: give exactly one of checkpoint (a .ckpt path), pretrained (a zoo name) or model")
        self._model = _load(checkpoint, pretrained) if model is None else model
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._model.to(self._device)
        if dtype:
            self._model.to(getattr(torch, dtype))
        self._model.eval()
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        if self.batch_size_per_gpu < 1 or self.max_new_tokens < 1:
            raise ValueError(f"UnizooLMM: batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
        self.task_dict: dict = getattr(self, "task_dict", None) or {}
        self._rank, self._world_size = 0, 1

    # ------------------------------------------------------------------------------ harness properties
    @property
    def model(self) -> Any:
        """The wrapped UnifiedVLM."""
        return self._model

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self._device

    @property
    def batch_size(self) -> int:
        """Requests per forward pass."""
        return self.batch_size_per_gpu

    @property
    def rank(self) -> int:
        """Process rank (single process)."""
        return self._rank

    @property
    def world_size(self) -> int:
        """Number of processes (single process)."""
        return self._world_size

    # ------------------------------------------------------------------------------ requests
    def _doc(self, task: str, split: str, doc_id: Any) -> Any:
        try:
            return self.task_dict[task][split][doc_id]
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"UnizooLMM: no document task_dict[{task!r}][{split!r}][{doc_id!r}] ({err!r}); "
                             "lmms-eval sets task_dict before calling the model") from None

    def _sample(self, context: Any, doc_to_visual: Any, doc: Any) -> Sample:
        """One user turn (image markers + context) and an empty assistant turn to be written."""
        text = context[0] if isinstance(context, (list, tuple)) else context
        if not isinstance(text, str):
            raise ValueError(f"UnizooLMM: context must be a string, got {type(text).__name__}")
        visuals = doc_to_visual(doc) if callable(doc_to_visual) else []
        images = [v.convert("RGB") for v in _flatten(visuals) if v is not None]
        if text.count(IMAGE_MARKER) != len(images):
            text = (IMAGE_MARKER + "\n") * len(images) + text.replace(IMAGE_MARKER, "").strip()
        return Sample(task="vqa" if images else "text",
                      turns=[{"role": "user", "content": text}, {"role": "assistant", "content": ""}], images=images)

    def _config(self, gen_kwargs: dict[str, Any]):
        from zoo.generate import GenerationConfig

        kwargs = dict(gen_kwargs or {})
        if int(kwargs.get("num_beams", 1) or 1) > 1:
            warnings.warn("UnizooLMM: beam search is not supported; decoding greedily", stacklevel=3)
        temperature = float(kwargs.get("temperature", 0.0) or 0.0) if kwargs.get("do_sample") else 0.0
        return GenerationConfig(max_new_tokens=int(kwargs.get("max_new_tokens", self.max_new_tokens)), max_images=0,
                                temperature=temperature, top_p=float(kwargs.get("top_p", 1.0) or 1.0), seed=0)

    @torch.no_grad()
    def generate_until(self, requests: list[Any]) -> list[str]:
        """Answer each (context, gen_kwargs, doc_to_visual, doc_id, task, split) request; text cut at `until`."""
        from zoo.generate import generate

        results: list[str] = [""] * len(requests)
        pending: list[tuple[int, Sample, list[str]]] = []
        current = None
        for index, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = _args(request, 6, "generate_until")
            config = self._config(gen_kwargs)
            until = (gen_kwargs or {}).get("until") or []
            stops = [until] if isinstance(until, str) else list(until)
            sample = self._sample(context, doc_to_visual, self._doc(task, split, doc_id))
            if pending and (config != current or len(pending) == self.batch_size):
                self._run(pending, current, results, generate)
                pending = []
            current = config
            pending.append((index, sample, stops))
        if pending:
            self._run(pending, current, results, generate)
        return results

    def _run(self, pending: list, config: Any, results: list[str], generate: Any) -> None:
        batch = _to_device(self._model.processor.prompt([s for _, s, _ in pending]), self._device)
        out = generate(self._model, batch, config)
        for (index, _, stops), text in zip(pending, out.texts):
            for stop in stops:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            results[index] = text

    @torch.no_grad()
    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """(sum of log-probs of the continuation, is it the greedy continuation) per request, teacher-forced."""
        results: list[tuple[float, bool]] = []
        for start in range(0, len(requests), self.batch_size):
            chunk, samples, targets = requests[start:start + self.batch_size], [], []
            for request in chunk:
                context, doc_to_target, doc_to_visual, doc_id, task, split = _args(request, 6, "loglikelihood")
                doc = self._doc(task, split, doc_id) if callable(doc_to_target) or callable(doc_to_visual) else None
                continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
                samples.append(self._sample(context, doc_to_visual, doc))
                targets.append(self._model.backbone.tokenizer.encode(str(continuation), add_special_tokens=False))
            results += self._score(samples, targets)
        return results

    def _score(self, samples: list[Sample], targets: list[list[int]]) -> list[tuple[float, bool]]:
        model = self._model
        prompt = model.processor.prompt(samples)
        rows = [prompt["input_ids"][i][prompt["attention_mask"][i].bool()].tolist() for i in range(len(samples))]
        width = max(len(r) + len(t) for r, t in zip(rows, targets))
        ids = torch.full((len(rows), width), model.backbone.token_ids["pad"], dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (row, target) in enumerate(zip(rows, targets)):  # right-padded: positions start at 0
            ids[i, : len(row) + len(target)] = torch.tensor(row + target, dtype=torch.long)
            mask[i, : len(row) + len(target)] = 1
        batch = _to_device({**prompt, "input_ids": ids, "attention_mask": mask}, self._device)
        embeds = model.backbone.embed_tokens(batch["input_ids"])
        read = batch["input_ids"] == model.backbone.token_ids["image"]
        if read.any():
            embeds = embeds.masked_scatter(read.unsqueeze(-1), model.encode_read_images(batch).to(embeds.dtype))
        hidden, _ = model.backbone.hidden_states(embeds, batch["attention_mask"])
        out = []
        for i, (row, target) in enumerate(zip(rows, targets)):
            if not target:
                out.append((0.0, True))
                continue
            # position t predicts token t + 1: the continuation is predicted from len(row) - 1 onwards
            logits = model.backbone.lm_logits(hidden[i, len(row) - 1: len(row) - 1 + len(target)]).float()
            wanted = torch.tensor(target, device=logits.device)
            logprob = torch.log_softmax(logits, -1).gather(-1, wanted[:, None]).sum()
            out.append((float(logprob), bool((logits.argmax(-1) == wanted).all())))
        return out

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        """Not supported: multi-round tasks need the conversation history, which the simple interface lacks."""
        raise NotImplementedError("UnizooLMM: generate_until_multi_round is not supported")


def register(name: str = "unizoo") -> type:
    """Import lmms-eval and register a subclass of its `lmms` base under `name`; returns that class."""
    try:
        from lmms_eval.api.model import lmms
        from lmms_eval.api.registry import register_model
    except ImportError as err:
        raise ImportError("the lmms-eval adapter needs the optional dependency: pip install 'unizoo[lmms]' "
                          "(lmms-eval >= 0.3)") from err
    cls = type("UnizooLMMSEval", (UnizooLMM, lmms), {"__module__": __name__, "__doc__": UnizooLMM.__doc__})
    return register_model(name)(cls)


def _load(checkpoint: str | None, pretrained: str | None) -> Any:
    if checkpoint is not None:
        import zoo.variants  # noqa: F401  (the subclasses a checkpoint may name)
        from zoo.unified import UnifiedVLM

        return UnifiedVLM.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    from zoo.registry import create_model

    return create_model(pretrained, pretrained=True)


def _args(request: Any, count: int, kind: str) -> tuple:
    args = getattr(request, "args", None)
    if not isinstance(args, (tuple, list)) or len(args) != count:
        raise ValueError(f"UnizooLMM.{kind}: a request's .args must be a {count}-tuple, got {args!r:.200}")
    return tuple(args)


def _flatten(visuals: Any) -> list[Any]:
    if visuals is None:
        return []
    if isinstance(visuals, (list, tuple)):
        return [v for item in visuals for v in _flatten(item)]
    return [visuals]


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
