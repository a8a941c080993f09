"""`unizoo measure answers RUN... --attribute A`: does the model know an attribute it cannot (or will not) say?

Free-running VQA scores the words a model writes; a model that knows where the weather icon is but was never
asked may still answer "where is the weather icon?" with a weather kind (F3's understanding-only models do).
Here every candidate answer of the attribute (its closed set of values: the four corners, the three
weathers) is scored as the reply to the question, teacher-forced, and the most likely one is the model's
choice (the multiple-choice protocol of lm-evaluation-harness: `sum`, the summed log-likelihood of the
reply's tokens, and `mean`, per token, which does not favour short replies). Chance is 1 / candidates.

Questions: every question of the attribute in the test split's VQA items (each conversation's question
about the attribute asked alone, as its first turn, with the image), `images` watches of the run's data
seed. Several runs: one JSON each, and a table pooled per arm (the run name less `_seedN`) over seeds.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from datamodules.smartwatch.spec import CORNERS, WEATHERS

# The closed questions of the smart-watch VQA and their replies (the time and the battery level are open).
CHOICES = {"weather": WEATHERS, "weather_pos": CORNERS, "battery_pos": CORNERS}


def questions(source: Any, attribute: str, count: int, split: str = "test") -> list[tuple[Any, str, str]]:
    """(vqa sample, question, true answer) for each question about `attribute` in the first `count` items."""
    found = []
    for index in range(count):
        sample = source.sample(split, index)
        if sample.task != "vqa":
            continue
        for asked, question, answer in sample.attrs.get("qa") or []:
            if asked == attribute:
                found.append((sample, question, str(answer)))
    return found


def _reply_loglik(model: Any, samples: list[Any], batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-likelihood of each sample's reply tokens [n], their count [n]), teacher-forced."""
    sums, counts = [], []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        out = model(model.processor(chunk))
        loss, owner = out["text_loss"].float(), out["text_sample"].long()
        sums.append(-torch.zeros(len(chunk)).index_add_(0, owner.cpu(), loss.cpu()))
        counts.append(torch.zeros(len(chunk)).index_add_(0, owner.cpu(), torch.ones_like(loss).cpu()))
    return torch.cat(sums), torch.cat(counts)


@torch.no_grad()
def answer_choice(run: str, attribute: str, images: int = 900, split: str = "test") -> dict[str, Any]:
    """Multiple-choice accuracy of one run on the questions about `attribute` (see the module docstring)."""
    from datamodules.smartwatch.source import SmartWatchSource
    from tools.generate import load_model
    from tools.measure import _checkpoint
    from tools.probe import _watch_source

    path = _checkpoint(run)
    model = load_model(path).eval()
    if model.read_space is None:
        raise ValueError(f"measure answers: {run} reads no images")
    data_seed, size = _watch_source(Path(str(run)), model)
    source = SmartWatchSource(**{"train": 1, "val": 1, "test": 1, split: images}, seed=data_seed, size=size)
    asked = questions(source, attribute, images, split)
    if not asked:
        raise ValueError(f"measure answers: no {split} question about {attribute!r} in the first {images} items "
                         "(attributes the watch questions ask: weather, weather_pos, battery_pos, battery, time)")
    if attribute not in CHOICES:
        raise ValueError(f"measure answers: {attribute!r} is an open question (a choice needs a closed set of "
                         f"answers: {sorted(CHOICES)}); score it with `unizoo test`")
    candidates = sorted(CHOICES[attribute])
    if stray := sorted({answer for _, _, answer in asked} - set(candidates)):
        raise ValueError(f"measure answers: {split} answers about {attribute!r} outside its values {candidates}: {stray}")
    samples = [replace(sample, turns=[{"role": "user", "content": f"<image>\n{question}"},
                                      {"role": "assistant", "content": candidate}])
               for sample, question, _ in asked for candidate in candidates]
    loglik, tokens = _reply_loglik(model, samples)
    loglik, tokens = loglik.view(len(asked), len(candidates)), tokens.view(len(asked), len(candidates))
    truth = torch.tensor([candidates.index(answer) for _, _, answer in asked])
    result: dict[str, Any] = {"run": str(run), "checkpoint": str(path), "attribute": attribute, "split": split,
                              "questions": len(asked), "candidates": candidates, "chance": 1.0 / len(candidates)}
    for name, score in (("sum", loglik), ("mean", loglik / tokens.clamp(min=1))):
        choice = score.argmax(1)
        confusion = torch.zeros(len(candidates), len(candidates), dtype=torch.long)
        confusion.index_put_((truth, choice), torch.ones_like(truth), accumulate=True)
        result[name] = {"accuracy": float((choice == truth).float().mean()), "confusion": confusion.tolist(),
                        "chosen": {c: int((choice == k).sum()) for k, c in enumerate(candidates)},
                        # another attribute of the same watch with values in the same set (the battery's corner
                        # for the weather's): how often the choice is that one's value instead
                        "chose_other_attribute": _other_attribute_share(asked, attribute, candidates, choice)}
    return result


def _other_attribute_share(asked: list[tuple[Any, str, str]], attribute: str, candidates: list[str],
                           choice: torch.Tensor) -> dict[str, float]:
    """For each other watch attribute whose values are always among `candidates`: the share of choices equal to it."""
    shares = {}
    keys = set.intersection(*(set(sample.attrs) for sample, _, _ in asked)) - {attribute, "answer"}
    for key in sorted(keys):
        values = [sample.attrs[key] for sample, _, _ in asked]
        if all(isinstance(v, str) and v in candidates for v in values):
            shares[key] = float(sum(candidates[int(c)] == v for c, v in zip(choice, values)) / len(values))
    return shares


def answers(runs: list[str] | str, attribute: str = "weather_pos", images: int = 900, split: str = "test",
            out: str = "runs/measure", threads: int = 0) -> dict[str, Any]:
    """Multiple-choice accuracy on questions about ATTRIBUTE per run, and pooled per arm over seeds.

    Args:
        runs: run dirs, checkpoints or "zoo:NAME" (a quoted glob or a list).
        attribute: the asked attribute (weather, weather_pos, battery_pos); default F3's weather corner.
        images: items of the split to collect questions from (a third are VQA conversations).
        split: the split whose questions are asked.
        out: output folder: answers-ATTRIBUTE-RUN.json per run, answers-ATTRIBUTE.md and .json over them.
        threads: torch threads (0: leave as is).
    """
    from tools.measure import _run_name, _write
    from tools.probe_runs import pool_per_arm, run_name
    from tools.report import expand_runs

    if threads:
        torch.set_num_threads(threads)
    found = expand_runs(runs)  # globs expand; a plain path or "zoo:NAME" passes through
    if not found:
        raise ValueError("measure answers: no runs given")
    results: dict[str, dict[str, Any]] = {}
    for index, run in enumerate(found, 1):
        name = run.split(":", 1)[1] if str(run).startswith("zoo:") else run_name(run)
        result = answer_choice(run, attribute, images=images, split=split)
        results[name] = result
        _write(out, f"answers-{attribute}-{_run_name(run)}.json", result)
        print(f"[{index}/{len(found)}] {name}: {attribute} by choice among {len(result['candidates'])}: "
              f"sum {result['sum']['accuracy']:.3f}, mean {result['mean']['accuracy']:.3f} "
              f"(chance {result['chance']:.3f}, {result['questions']} questions; chosen {result['sum']['chosen']}; "
              f"the watch's other attribute chosen: {result['sum']['chose_other_attribute']})",
              flush=True)
    stats = pool_per_arm({name: {kind: r[kind]["accuracy"] for kind in ("sum", "mean")} for name, r in results.items()})
    chance = next(iter(results.values()))["chance"]
    md = [f"# {attribute} by multiple choice ({split} split)", "",
          f"Each question about {attribute} answered by the most likely of its candidate replies, teacher-forced "
          f"(tools/measure_answers.py). Chance {chance:.3f}. `sum`: summed log-likelihood of the reply; `mean`: per token.",
          "", "| arm | sum | mean |", "|---|---|---|",
          *[f"| {arm} | {s['sum'].cell()} | {s['mean'].cell()} |" for arm, s in stats.items()], "",
          "| run | questions | sum | mean | chosen (sum) |", "|---|---|---|---|---|",
          *[f"| {n} | {r['questions']} | {r['sum']['accuracy']:.3f} | {r['mean']['accuracy']:.3f} | {r['sum']['chosen']} |"
            for n, r in results.items()], ""]
    summary = {"attribute": attribute, "split": split, "chance": chance, "runs": results,
               "arms": {arm: {kind: s.as_dict() for kind, s in per.items()} for arm, per in stats.items()}}
    _write(out, f"answers-{attribute}.json", summary)
    (Path(out) / f"answers-{attribute}.md").write_text("\n".join(md))
    print(f"measure answers: {Path(out) / f'answers-{attribute}.md'} ({len(results)} runs, {len(stats)} arms)")
    return summary
