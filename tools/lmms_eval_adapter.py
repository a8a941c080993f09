"""An lmms-eval model adapter for UnifiedVLM checkpoints (PAPER.md §6: the LLaVA-1.5 benchmark check).

Runs under the real lmms-eval 0.7 command line (the `lmms` extra pins lmms-eval==0.7; it installs from PyPI
beside this project's torch without changing it, and CI installs it and runs
tests/test_lmms_adapter.py::test_real_lmms_eval_cli_on_a_local_smartwatch_task):

    pip install -c constraints.txt -e '.[lmms]'      # registers `--model unizoo` (entry point lmms_eval.models)
    python -m tools.lmms_eval_adapter write-task tasks/sw   # a local task: smart-watch VQA as a JSON dataset
    lmms-eval --model unizoo --model_args pretrained=smartwatch-siglip-siglip-tiny,device=cpu \
        --tasks unizoo_smartwatch_vqa,unizoo_smartwatch_weather_mc --include_path tasks/sw --output_path out
    lmms-eval --model unizoo --model_args checkpoint=runs/x/version_0/checkpoints/last.ckpt --tasks mme \
        --include_path LMMS_EVAL_CHECKOUT/lmms_eval/tasks

(`checkpoint=` a Lightning .ckpt of a UnifiedVLM, or `pretrained=` a zoo name; also `device`, `batch_size`,
`max_new_tokens`, `dtype`.) The PyPI wheel of lmms-eval 0.7 ships no task YAMLs: benchmark tasks (MME,
GQA, ...) come from a checkout of its repository through `--include_path`; `write_smartwatch_task` writes
the two local tasks used in the test.

It targets the "simple" model interface: requests are `Instance`s whose `.args` are

- generate_until: (context, gen_kwargs, doc_to_visual, doc_id, task, split)
- loglikelihood:  (context, doc_to_target, doc_to_visual, doc_id, task, split)

and the document is `self.task_dict[task][split][doc_id]` (lmms-eval fills `task_dict`). lmms-eval
stays optional: `UnizooLMM` works on any objects with such `.args` (the fake-harness tests), and
`register()` (or the class path `tools.lmms_eval_adapter.UnizooLMMSEval` the entry point names) imports
lmms-eval only when used, then registers a subclass of its `lmms` base.

Protocol: each read image becomes one `<image>` marker before the context in a single user turn (markers
already in the context are kept when their count matches); answers are decoded greedily unless
`do_sample` with a temperature > 0, never open an image, and are cut at the first `until` string.
`loglikelihood` tokenises context and continuation together (the templated conversation with the
continuation as the reply, exactly as in training; its tokens are those covering the continuation's
characters) and scores them in one teacher-forced pass: (sum of log-probabilities, whether every token is
the argmax). Under lmms-eval the registered class hands lmms-eval 0.7 the negative log-likelihood instead
(its multiple-choice scoring takes the argmin) wrapped so its evaluator keeps the pair (see
`_harness_loglikelihood`).
"""
from __future__ import annotations

import warnings
from pathlib import Path
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
        from zoo.model.generate import GenerationConfig

        kwargs = dict(gen_kwargs or {})
        if int(kwargs.get("num_beams", 1) or 1) > 1:
            warnings.warn("UnizooLMM: beam search is not supported; decoding greedily", stacklevel=3)
        temperature = float(kwargs.get("temperature", 0.0) or 0.0) if kwargs.get("do_sample") else 0.0
        return GenerationConfig(max_new_tokens=int(kwargs.get("max_new_tokens", self.max_new_tokens)), max_images=0,
                                temperature=temperature, top_p=float(kwargs.get("top_p", 1.0) or 1.0), seed=0)

    @torch.no_grad()
    def generate_until(self, requests: list[Any]) -> list[str]:
        """Answer each (context, gen_kwargs, doc_to_visual, doc_id, task, split) request; text cut at `until`."""
        from zoo.model.generate import generate

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
        """(sum of log-probs of the continuation, is it the greedy continuation) per request, teacher-forced.

        Context and continuation are tokenised together: the conversation (context as the user turn, the
        continuation as the assistant's reply) is templated and tokenised once, exactly as in training, and
        the continuation's tokens are those covering its characters, so a token that merges across the
        boundary (" sunny" after "ASSISTANT:") is scored as the model would have produced it. The
        continuation's leading whitespace (lmms-eval's `target_delimiter`) is dropped: the chat template's
        own separator after the assistant prompt takes its place.
        """
        results: list[tuple[float, bool]] = []
        for start in range(0, len(requests), self.batch_size):
            chunk, samples, texts = requests[start:start + self.batch_size], [], []
            for request in chunk:
                context, doc_to_target, doc_to_visual, doc_id, task, split = _args(request, 6, "loglikelihood")
                doc = self._doc(task, split, doc_id) if callable(doc_to_target) or callable(doc_to_visual) else None
                continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
                sample = self._sample(context, doc_to_visual, doc)
                text = str(continuation).lstrip()
                sample.turns[1]["content"] = text
                samples.append(sample)
                texts.append(text)
            results += self._score(samples, texts)
        return results

    def _continuation_positions(self, sample: Sample, text: str, ids: torch.Tensor) -> list[int]:
        """Positions in `ids` (the processor's tokens of `sample`, images expanded) of the reply `text`'s tokens."""
        from zoo.model.tokenizer import chat_template_for

        tokenizer = self._model.backbone.tokenizer
        template = chat_template_for(tokenizer)
        rendered = tokenizer.apply_chat_template(sample.turns, chat_template=template, tokenize=False)
        prompt = tokenizer.apply_chat_template(sample.turns[:1], chat_template=template, add_generation_prompt=True,
                                               tokenize=False)
        begin = rendered.find(text, len(prompt)) if rendered.startswith(prompt) else -1
        if begin < 0:
            raise ValueError(f"UnizooLMM.loglikelihood: the chat template does not write the continuation {text!r} "
                             "after the generation prompt; cannot locate its tokens")
        end = begin + len(text)
        enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
        raw = enc["input_ids"]
        image = self._model.backbone.token_ids["image"]
        n_in = self._model.processor.read_space.num_tokens if self._model.processor.read_space is not None else 1
        expanded, shift = [], 0
        for token in raw:  # where each raw token lands once every read <image> becomes n_in positions
            expanded.append(len(expanded) + shift)
            shift += n_in - 1 if token == image else 0
        if len(raw) + shift != len(ids) or any(int(ids[p]) != t for p, t in zip(expanded, raw) if t != image):
            raise ValueError("UnizooLMM.loglikelihood: the processor's tokens differ from the templated text's "
                             "(is the chat template prefix-stable?)")
        return [expanded[j] for j, (s, e) in enumerate(enc["offset_mapping"]) if s < end and e > begin]

    def _score(self, samples: list[Sample], texts: list[str]) -> list[tuple[float, bool]]:
        model = self._model
        batch = _to_device(model.processor(samples), self._device)  # the training tokenisation, right-padded
        embeds = model.backbone.embed_tokens(batch["input_ids"])
        read = batch["input_ids"] == model.backbone.token_ids["image"]
        if read.any():
            embeds = embeds.masked_scatter(read.unsqueeze(-1), model.encode_read(batch).to(embeds.dtype))
        hidden, _ = model.backbone.hidden_states(embeds, batch["attention_mask"])
        out = []
        for i, (sample, text) in enumerate(zip(samples, texts)):
            ids = batch["input_ids"][i][batch["attention_mask"][i].bool()]
            positions = self._continuation_positions(sample, text, ids) if text else []
            if not positions:
                out.append((0.0, True))
                continue
            # position t predicts token t + 1
            where = torch.tensor(positions, device=hidden.device)
            logits = model.backbone.lm_logits(hidden[i, where - 1]).float()
            wanted = ids[where]
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
                          "(lmms-eval 0.7)") from err
    cls = type("UnizooLMMSEval", (UnizooLMM, lmms), {"__module__": __name__, "__qualname__": "UnizooLMMSEval",
                                                     "__doc__": UnizooLMM.__doc__,
                                                     "loglikelihood": _harness_loglikelihood})
    return register_model(name)(cls)


def _harness_loglikelihood(self: UnizooLMM, requests: list[Any]) -> list[Any]:
    """`UnizooLMM.loglikelihood` in the form lmms-eval 0.7's evaluator reads correctly.

    Two quirks of lmms-eval 0.7 (checked against its source): its `multiple_choice` scoring picks the
    choice with the *smallest* first value (`np.argmin(lls)`: its own models return a cross-entropy loss),
    so the first value here is the negative log-likelihood (>= 0; lower = more likely); and its evaluator
    passes every model output through `unwrap_generation_output`, which turns a `(float, bool)` pair into
    the string "(-1.5, True)", so each pair is handed over inside a `GenerationResult`, whose `.text` it
    keeps as is. Called directly (not by lmms-eval), `UnizooLMM.loglikelihood` returns plain
    (log-probability, is_greedy) pairs.
    """
    pairs = [(-logprob, greedy) for logprob, greedy in UnizooLMM.loglikelihood(self, requests)]
    try:
        from lmms_eval.api.instance import GenerationResult, unwrap_generation_output
    except ImportError:  # an lmms-eval without the wrapper passes pairs through
        return pairs
    if unwrap_generation_output((0.5, True))[0] == (0.5, True):
        return pairs
    return [GenerationResult(text=pair) for pair in pairs]  # type: ignore[arg-type]


def lmms_eval_manifest() -> Any:
    """The `lmms_eval.models` entry point (pyproject.toml): `lmms-eval --model unizoo` finds the adapter by it."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="unizoo", simple_class_path=f"{__name__}.UnizooLMMSEval")


def __getattr__(name: str) -> Any:
    # `tools.lmms_eval_adapter.UnizooLMMSEval`, the class path the entry point names: built on first use,
    # so importing this module never needs lmms-eval.
    if name == "UnizooLMMSEval":
        cls = register("unizoo")
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- a local smart-watch task

TASKS = ("unizoo_smartwatch_vqa", "unizoo_smartwatch_weather_mc")
_WEATHER_QUESTION = "what weather condition is displayed?"  # one of the data's own phrasings
_TASK_YAML = """\
# Written by tools.lmms_eval_adapter.write_smartwatch_task: smart-watch test images as a local JSON dataset.
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_visual: !function utils.doc_to_visual
"""
_VQA_YAML = _TASK_YAML + """\
output_type: generate_until
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 16
  until: []
process_results: !function utils.process_results
metric_list:
  - metric: vqa_score  # PAPER.md §6, the paper's protocol (datamodules.smartwatch.score)
    aggregation: mean
    higher_is_better: true
"""
_MC_YAML = _TASK_YAML + """\
output_type: multiple_choice
doc_to_text: !function utils.weather_question
doc_to_choice: !function utils.weather_choices
doc_to_target: !function utils.weather_target
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
_UTILS = """\
# The document functions of the unizoo smart-watch tasks (see tools/lmms_eval_adapter.py).
from tools.lmms_eval_adapter import (task_doc_to_text as doc_to_text, task_doc_to_visual as doc_to_visual,
                                     task_process_results as process_results, task_weather_choices as weather_choices,
                                     task_weather_question as weather_question, task_weather_target as weather_target)
"""


def write_smartwatch_task(directory: str | Path, count: int = 8, seed: int = 0, size: int = 64) -> Path:
    """Write lmms-eval tasks over `count` smart-watch test VQA samples into `directory`; returns it.

    The folder holds the images, `smartwatch_vqa.jsonl` (a local JSON dataset: image path, first question,
    answer, weather) and two task YAMLs for `--include_path`: `unizoo_smartwatch_vqa` (generate_until, scored
    by the paper's VQA rule) and `unizoo_smartwatch_weather_mc` (multiple choice over the three weathers:
    lmms-eval's `loglikelihood` requests, accuracy).
    """
    import json

    from datamodules.smartwatch.source import SmartWatchSource

    out = Path(directory).resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    source = SmartWatchSource(train=0, val=0, test=count, seed=seed, size=size, tasks=("vqa",), reader=None)
    rows = []
    for i in range(count):
        sample = source.sample("test", i)
        image = out / "images" / f"watch-{i:04d}.png"
        sample.images[0].save(image)
        question = sample.turns[0]["content"].replace(IMAGE_MARKER, "").strip()
        rows.append({"id": i, "image": str(image), "question": question, "answer": sample.turns[1]["content"],
                     "weather": sample.attrs["weather"]})
    data = out / "smartwatch_vqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for task, text in zip(TASKS, (_VQA_YAML, _MC_YAML)):
        (out / f"{task}.yaml").write_text(text.format(task=task, data=json.dumps(str(data))))
    (out / "utils.py").write_text(_UTILS)
    return out


def task_doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    """The document's watch image."""
    from PIL import Image

    with Image.open(doc["image"]) as image:
        return [image.convert("RGB")]


def task_doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The document's question (the sample's first question, as PAPER.md §6 scores)."""
    return doc["question"]


def task_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """The paper's VQA score of the answer (0 where the ground truth is of no scored type)."""
    from datamodules.smartwatch.score import score_answer

    _, value = score_answer(doc["answer"], results[0])
    return {"vqa_score": float(value or 0.0)}


def task_weather_question(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The multiple-choice task's question."""
    return _WEATHER_QUESTION


def task_weather_choices(doc: dict[str, Any]) -> list[str]:
    """The three weathers."""
    from datamodules.smartwatch.spec import WEATHERS

    return list(WEATHERS)


def task_weather_target(doc: dict[str, Any]) -> int:
    """Index of the watch's weather among the choices."""
    return task_weather_choices(doc).index(doc["weather"])


def _load(checkpoint: str | None, pretrained: str | None) -> Any:
    if checkpoint is not None:
        import zoo.model.variants  # noqa: F401  (the subclasses a checkpoint may name)
        from zoo.model.unified import UnifiedVLM

        return UnifiedVLM.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    from zoo.catalog.registry import create_model

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


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tools.lmms_eval_adapter",
                                     description="Write the local smart-watch lmms-eval tasks into a folder.")
    parser.add_argument("command", choices=["write-task"])
    parser.add_argument("directory")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    out = write_smartwatch_task(args.directory, args.count, args.seed, args.size)
    print(f"{out}  (lmms-eval ... --include_path {out} --tasks {','.join(TASKS)})")


if __name__ == "__main__":
    _main()
