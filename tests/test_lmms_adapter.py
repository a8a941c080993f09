"""The lmms-eval adapter on a smoke-scale checkpoint, with plain request objects (lmms-eval not needed)."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
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

    from zoo.config import build
    from zoo.presets import preset

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
        embeds = embeds.masked_scatter(read.unsqueeze(-1), model.encode_read_images(prompt))
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
