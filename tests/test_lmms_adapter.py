"""The lmms-eval adapter: plain request objects on a smoke-scale checkpoint (lmms-eval not needed), and the
real lmms-eval 0.7 command line on a local smart-watch task (needs the `lmms` extra; CI installs it and sets
UNIZOO_REQUIRE_LMMS=1 so the test cannot be skipped there)."""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from datamodules.smartwatch.source import watch_sample
from tools.lmms_eval_adapter import UnizooLMM, register
from zoo.sample import Sample


@dataclass
class Request:
    args: tuple


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    import lightning as L

    from zoo.catalog.presets import preset
    from zoo.config import build

    torch.manual_seed(0)
    model = build(preset("siglip-siglip", "smoke"))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(model)
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


@pytest.fixture(scope="module")
def adapter(checkpoint) -> UnizooLMM:
    lmm = UnizooLMM(checkpoint=checkpoint, device="cpu", batch_size="2", max_new_tokens="6")
    docs = {i: {"image": watch_sample(0, "test", i, "vqa", 32).images[0], "answer": "sunny"} for i in range(3)}
    lmm.task_dict = {"watch": {"test": docs}}
    return lmm


def _visual(doc: dict[str, Any]) -> list:
    return [doc["image"]]


def test_generate_until_answers_strings_independent_of_batching(adapter):
    requests = [Request(("What is the weather?", {"max_new_tokens": 6, "until": []}, _visual, i, "watch", "test"))
                for i in range(3)]
    requests.append(Request(("Say something.", {"max_new_tokens": 4}, None, 0, "watch", "test")))  # text only
    answers = adapter.generate_until(requests)
    assert len(answers) == 4 and all(isinstance(a, str) for a in answers)
    adapter.batch_size_per_gpu = 1
    try:
        assert adapter.generate_until(requests) == answers
    finally:
        adapter.batch_size_per_gpu = 2
    long = next((a for a in answers if len(a) >= 2), None)
    if long is not None:  # `until` cuts at the first stop string
        index = answers.index(long)
        stop = long[1:]
        context, kwargs, *rest = requests[index].args
        cut = adapter.generate_until([Request((context, {**kwargs, "until": [stop]}, *rest))])
        assert cut == [long[: long.index(stop)]]


def test_loglikelihood_matches_teacher_forced_forward(adapter):
    continuation = "sunny"
    requests = [Request(("What is the weather?", continuation, _visual, i, "watch", "test")) for i in range(3)]
    requests.append(Request(("What is the weather?", lambda doc: doc["answer"], _visual, 1, "watch", "test")))
    scores = adapter.loglikelihood(requests)
    assert all(isinstance(lp, float) and isinstance(greedy, bool) and lp < 0 for lp, greedy in scores)
    assert scores[3][0] == pytest.approx(scores[1][0], abs=1e-4)  # callable target, same doc
    # The model's own training forward on the same conversation: the answer's tokens, minus the final EOS.
    model = adapter.model
    doc = adapter.task_dict["watch"]["test"][0]
    sample = Sample(task="vqa", images=[doc["image"]], turns=[
        {"role": "user", "content": "<image>\nWhat is the weather?"}, {"role": "assistant", "content": continuation}])
    with torch.no_grad():
        out = model(model.processor([sample]))
    n = len(model.backbone.tokenizer.encode(continuation, add_special_tokens=False))
    assert out["text_loss"].numel() == n + 1  # the answer and EOS
    assert scores[0][0] == pytest.approx(-out["text_loss"][:n].sum().item(), abs=1e-3)


def test_greedy_flag_on_the_models_own_argmax(adapter):
    model = adapter.model
    doc = adapter.task_dict["watch"]["test"][2]
    sample = adapter._sample("What is the weather?", _visual, doc)
    with torch.no_grad():
        prompt = model.processor.prompt([sample])
        embeds = model.backbone.embed_tokens(prompt["input_ids"])
        read = prompt["input_ids"] == model.backbone.token_ids["image"]
        embeds = embeds.masked_scatter(read.unsqueeze(-1), model.encode_read(prompt))
        hidden, _ = model.backbone.hidden_states(embeds, prompt["attention_mask"])
        logits = model.backbone.lm_logits(hidden[0, -1])
    vocab = model.backbone.tokenizer
    ranked = [t for t in logits.argsort(descending=True).tolist() if vocab.encode(vocab.decode([t]), add_special_tokens=False) == [t]]
    best, other = ranked[0], ranked[1]
    if best != int(logits.argmax()):
        pytest.skip("the argmax token does not survive a decode/encode round trip")
    (lp_best, greedy_best), (lp_other, greedy_other) = adapter.loglikelihood(
        [Request(("What is the weather?", vocab.decode([t]), _visual, 2, "watch", "test")) for t in (best, other)])
    assert greedy_best and not greedy_other and lp_best > lp_other
    assert lp_best == pytest.approx(torch.log_softmax(logits, -1)[best].item(), abs=1e-4)


def test_bad_requests_and_arguments(adapter, checkpoint):
    with pytest.raises(ValueError, match="6-tuple"):
        adapter.generate_until([Request(("only", "two"))])
    with pytest.raises(ValueError, match=r"task_dict\['nope'\]"):
        adapter.generate_until([Request(("q", {}, _visual, 0, "nope", "test"))])
    with pytest.raises(ValueError, match="exactly one of"):
        UnizooLMM()
    with pytest.raises(ValueError, match="unknown argument"):
        UnizooLMM(checkpoint=checkpoint, colour="blue")
    with pytest.raises(NotImplementedError):
        adapter.generate_until_multi_round([])


@pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is not None, reason="lmms-eval is installed")
def test_register_without_lmms_eval_says_how_to_install():
    with pytest.raises(ImportError, match=r"unizoo\[lmms\]"):
        register()


def test_register_composes_with_an_lmms_base(monkeypatch, checkpoint):
    """A stand-in for lmms-eval's `lmms` base (abstract methods, its own __init__) and `register_model`."""
    import abc
    import sys
    import types

    class lmms(abc.ABC):  # noqa: N801  (lmms-eval's spelling)
        def __init__(self) -> None:
            self._rank, self._world_size, self.task_dict = 0, 1, {}

        @abc.abstractmethod
        def loglikelihood(self, requests): ...

        @abc.abstractmethod
        def generate_until(self, requests): ...

        @abc.abstractmethod
        def generate_until_multi_round(self, requests): ...

    registry: dict[str, type] = {}

    def register_model(*names):
        def decorate(cls):
            assert issubclass(cls, lmms)
            registry.update(dict.fromkeys(names, cls))
            return cls
        return decorate

    package = types.ModuleType("lmms_eval")
    api = types.ModuleType("lmms_eval.api")
    model_mod = types.ModuleType("lmms_eval.api.model")
    registry_mod = types.ModuleType("lmms_eval.api.registry")
    model_mod.lmms, registry_mod.register_model = lmms, register_model
    for name, module in (("lmms_eval", package), ("lmms_eval.api", api), ("lmms_eval.api.model", model_mod),
                         ("lmms_eval.api.registry", registry_mod)):
        monkeypatch.setitem(sys.modules, name, module)
    cls = register("unizoo")
    assert registry["unizoo"] is cls and issubclass(cls, UnizooLMM)
    lmm = cls(checkpoint=checkpoint, device="cpu", max_new_tokens=3)
    lmm.task_dict = {"t": {"s": {0: {}}}}
    assert lmm.rank == 0 and isinstance(lmm.generate_until([Request(("hi", {}, None, 0, "t", "s"))])[0], str)


# ----------------------------------------------------------------------------- joint tokenisation


def _bpe_tokenizer(folder: Path) -> str:
    """A byte-level BPE tokenizer in which " sunny" after "ASSISTANT:" is one token ("Ġsunny") while
    "sunny" alone is another: tokenising the continuation on its own gives the wrong tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["USER: what is the weather? ASSISTANT: sunny</s>", "ASSISTANT: cloudy", "ASSISTANT: raining",
              "sunny cloudy raining weather"] * 50
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def bpe_adapter(tmp_path_factory) -> UnizooLMM:
    from zoo.catalog.presets import preset
    from zoo.config import build

    folder = _bpe_tokenizer(tmp_path_factory.mktemp("bpe"))
    torch.manual_seed(0)
    model = build(preset("siglip-siglip", "smoke", backbone={"init_args": {"tokenizer": folder}}))
    lmm = UnizooLMM(model=model, device="cpu", batch_size=2)
    lmm.task_dict = {"watch": {"test": {i: {"image": watch_sample(0, "test", i, "vqa", 32).images[0]} for i in range(2)}}}
    return lmm


def test_loglikelihood_tokenises_context_and_continuation_together(bpe_adapter):
    """The continuation's tokens are those of the whole templated conversation, as the model trains on it."""
    model = bpe_adapter.model
    tokenizer = model.backbone.tokenizer
    doc = bpe_adapter.task_dict["watch"]["test"][0]
    sample = Sample(task="vqa", images=[doc["image"]], turns=[
        {"role": "user", "content": "<image>\nWhat is the weather?"}, {"role": "assistant", "content": "sunny"}])
    batch = model.processor([sample])
    labels = batch["labels"][0][batch["labels"][0] >= 0].tolist()
    joint = labels[:-1]  # the reply's tokens in the conversation, before the EOS
    assert joint != tokenizer.encode("sunny", add_special_tokens=False)  # what tokenising it alone gives
    with torch.no_grad():
        out = model(batch)
    expected = -out["text_loss"][:-1].sum().item()
    requests = [Request(("What is the weather?", continuation, _visual, 0, "watch", "test"))
                for continuation in ("sunny", " sunny")]  # lmms-eval's target_delimiter: a leading space
    (lp, _), (lp_delimited, _) = bpe_adapter.loglikelihood(requests)
    assert lp == pytest.approx(expected, abs=1e-4) and lp_delimited == pytest.approx(expected, abs=1e-4)
    # batching (right padding) leaves every score as it was alone
    other = Request(("Say the weather of this watch, please.", "raining", _visual, 1, "watch", "test"))
    alone = bpe_adapter.loglikelihood([other])[0]
    both = bpe_adapter.loglikelihood([requests[0], other])
    assert both[0][0] == pytest.approx(lp, abs=1e-4) and both[1][0] == pytest.approx(alone[0], abs=1e-4)
    assert both[1][1] == alone[1]
    assert bpe_adapter.loglikelihood([Request(("What is the weather?", "", _visual, 0, "watch", "test"))]) == [(0.0, True)]


# ----------------------------------------------------------------------------- the real lmms-eval command line

_HAVE_LMMS = importlib.util.find_spec("lmms_eval") is not None
_MUST_RUN = os.environ.get("UNIZOO_REQUIRE_LMMS", "").strip() not in ("", "0")


@pytest.mark.skipif(not _HAVE_LMMS and not _MUST_RUN,
                    reason="lmms-eval is not installed (pip install -c constraints.txt -e '.[lmms]'; CI installs it)")
def test_real_lmms_eval_cli_on_a_local_smartwatch_task(tmp_path):
    """`lmms-eval --model unizoo ...` (found through the lmms_eval.models entry point) on the shipped tiny model:
    its answers, scores and choice losses equal the adapter's own, in-process, and weather is read."""
    from datamodules.smartwatch.score import score_answer
    from tools.lmms_eval_adapter import TASKS, task_doc_to_visual, task_weather_choices, write_smartwatch_task

    assert _HAVE_LMMS, "UNIZOO_REQUIRE_LMMS is set but lmms-eval is not installed"
    task_dir = write_smartwatch_task(tmp_path / "task", count=12, seed=0, size=64)
    exe = shutil.which("lmms-eval", path=str(Path(sys.executable).parent)) or shutil.which("lmms-eval")
    model_args = "pretrained=smartwatch-siglip-siglip-tiny,device=cpu,max_new_tokens=16"
    command = ([exe] if exe else [sys.executable, "-m", "lmms_eval"]) + [
        "--model", "unizoo", "--model_args", model_args, "--tasks", ",".join(TASKS), "--include_path",
        str(task_dir), "--batch_size", "4", "--output_path", str(tmp_path / "out"), "--log_samples"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")}
    # cwd outside the source tree: a stale unizoo.egg-info there would hide the installed entry point
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (results_file,) = glob.glob(str(tmp_path / "out" / "*" / "*_results.json"))
    results = json.loads(Path(results_file).read_text())["results"]

    def logged(task: str) -> list[dict]:
        (path,) = glob.glob(str(tmp_path / "out" / "*" / f"*_samples_{task}.jsonl"))
        return sorted((json.loads(line) for line in Path(path).read_text().splitlines()), key=lambda r: r["doc_id"])

    docs = [json.loads(line) for line in (task_dir / "smartwatch_vqa.jsonl").read_text().splitlines()]
    lmm = UnizooLMM(pretrained="smartwatch-siglip-siglip-tiny", device="cpu", batch_size=4, max_new_tokens=16)
    lmm.task_dict = {task: {"test": docs} for task in TASKS}

    vqa, mc = TASKS
    answers = lmm.generate_until([Request((d["question"], {"max_new_tokens": 16, "until": []}, task_doc_to_visual, i,
                                           vqa, "test")) for i, d in enumerate(docs)])
    assert [r["filtered_resps"] for r in logged(vqa)] == [a.strip() for a in answers]
    paper = [score_answer(d["answer"], a.strip())[1] for d, a in zip(docs, answers)]
    assert results[vqa]["vqa_score,none"] == pytest.approx(sum(paper) / len(paper))

    choices = task_weather_choices(docs[0])
    question = "what weather condition is displayed?"
    scores = lmm.loglikelihood([Request((question, " " + c, task_doc_to_visual, i, mc, "test"))
                                for i in range(len(docs)) for c in choices])
    per_doc = [scores[i * len(choices):(i + 1) * len(choices)] for i in range(len(docs))]
    picked = [max(range(len(choices)), key=lambda j: doc_scores[j][0]) for doc_scores in per_doc]
    accuracy = sum(choices[p] == d["weather"] for p, d in zip(picked, docs)) / len(docs)
    assert results[mc]["acc,none"] == pytest.approx(accuracy)
    assert accuracy >= 0.9  # the shipped model reads weather (VQA weather 1.0): the likeliest choice wins
    for record, doc_scores in zip(logged(mc), per_doc):  # lmms-eval saw the negative log-likelihoods
        assert [float(v) for v, _ in record["filtered_resps"]] == pytest.approx([-lp for lp, _ in doc_scores],
                                                                                rel=1e-3, abs=1e-4)
