"""The three conversations per watch image: generation, vqa and caption (all phrasings are the project's own).

Every conversation is a list of ``{"role": "user"|"assistant", "content": str}`` turns. A user turn's
``<image>`` means the model reads the image; the assistant's trailing ``<image>`` means it writes it.
Randomness comes from a Generator seeded with ``(seed, split, index, task)``, so a conversation is the same
in every process. Texts are lowercase; numbers are written with digits ("57%", "03:45:12").

Sampling rules (the study's): a description always states the time and each of weather, battery, weather
corner and battery corner independently with p = 0.5. A vqa sample has one question plus up to three more,
each independently with p = 0.4 (so Binomial(3, 0.4) extra turns); each question is "what" with p = 3/5
(attribute uniform over weather, time, battery) or "where" with p = 2/5 (battery or weather corner).
See `spec.Bias` for how a bias reshapes understanding data and forces the clause in generation prompts.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from zoo.sample import IMAGE_MARKER

from .spec import CORNERS, SPLIT_CODES, WEATHERS, Bias, WatchSpec, rng_for

TASK_CODES = {"generation": 0, "vqa": 1, "caption": 2}
CLAUSE_ORDER = ("time", "weather", "battery", "weather_pos", "battery_pos")
WHAT = ("weather", "time", "battery")
WHERE = ("weather_pos", "battery_pos")
P_CLAUSE = 0.5
P_EXTRA_TURN = 0.4
MAX_EXTRA_TURNS = 3
P_WHAT = 3 / 5

CLAUSES: dict[str, tuple[str, ...]] = {
    "time": ("showing the time {v}", "with its hands at {v}", "reading {v} on the dial", "telling the time {v}"),
    "weather": ("where it is {v}", "with the weather icon showing {v}", "with the weather set to {v}",
                "displaying {v} weather"),
    "battery": ("with {v} battery", "with the battery at {v}", "with {v} charge left",
                "showing a battery level of {v}"),
    "weather_pos": ("with the weather shown in the {v} corner", "with the weather icon in the {v} corner",
                    "with the weather placed at the {v} corner", "with the weather icon sitting in the {v} corner"),
    "battery_pos": ("with the battery shown in the {v} corner", "with the battery indicator in the {v} corner",
                    "with the battery placed at the {v} corner", "with the battery gauge sitting in the {v} corner"),
}
GENERATION_REQUESTS = (
    "generate a smart watch {d}.",
    "please draw a smart watch {d}.",
    "create an image of a smart watch {d}.",
)
GENERATION_REPLIES = ("here is the smart watch you asked for.", "sure, this is the watch.",
                      "okay, here is the picture.")
CAPTION_PROMPTS = (
    "describe this image.",
    "what does this picture show?",
    "give a short description of the image.",
    "describe the smart watch in the image.",
    "what can you see in this image?",
    "write a caption for this picture.",
    "tell me what is in the image.",
    "summarize the image in one sentence.",
    "explain what the image shows.",
    "provide a brief caption for this image.",
)
CAPTION_OPENINGS = ("this is a smart watch", "the image shows a smart watch", "a picture of a smart watch")
QUESTIONS: dict[str, tuple[str, ...]] = {
    "weather": (
        "what is the weather?", "what weather does the watch show?", "which weather icon is displayed?",
        "what is the forecast on the watch?", "how is the weather according to the watch?",
        "what weather is shown?", "tell me the weather on the watch.", "what does the weather icon indicate?",
        "is it sunny, cloudy or raining on the watch?", "what weather condition is displayed?",
    ),
    "time": (
        "what time is it?", "what time does the watch show?", "what time do the hands point to?",
        "tell me the time on the watch.", "what is the time shown?", "which time is displayed?",
        "read the time from the watch.", "what time is displayed on the dial?",
        "what is the current time on the watch?", "at what time are the hands set?",
    ),
    "battery": (
        "what is the battery level?", "how much battery is left?", "what percentage does the battery show?",
        "how charged is the watch?", "tell me the battery percentage.", "what is the remaining charge?",
        "how full is the battery?", "what battery level is shown?", "read the battery percentage.",
        "how much charge does the watch have?",
    ),
    "weather_pos": (
        "where is the weather icon?", "in which corner is the weather shown?", "where is the weather displayed?",
        "which corner holds the weather icon?", "where can the weather be seen?",
        "in which corner is the weather icon placed?", "where does the watch show the weather?",
        "which corner shows the weather?", "where is the forecast shown?", "tell me where the weather icon is.",
    ),
    "battery_pos": (
        "where is the battery indicator?", "in which corner is the battery shown?",
        "where is the battery level displayed?", "which corner holds the battery gauge?",
        "where can the battery be seen?", "in which corner is the battery placed?",
        "where does the watch show the charge?", "which corner shows the battery?",
        "where is the battery percentage shown?", "tell me where the battery indicator is.",
    ),
}


def attribute_value(spec: WatchSpec, attribute: str) -> str:
    """The answer string of `attribute` ("sunny", "03:45:12", "57%", "top-left")."""
    values = {"time": spec.time, "weather": spec.weather, "battery": spec.battery_text,
              "weather_pos": spec.weather_pos, "battery_pos": spec.battery_pos}
    if attribute not in values:
        raise ValueError(f"unknown watch attribute {attribute!r}; expected one of {tuple(values)}")
    return values[attribute]


def question_type(attribute: str) -> str:
    """The scoring type of an attribute: positions share the type "position"."""
    return "position" if attribute in WHERE else attribute


def task_rng(seed: int, split: str, index: int, task: str) -> np.random.Generator:
    """The Generator behind one conversation."""
    if task not in TASK_CODES:
        raise ValueError(f"unknown smart-watch task {task!r}; expected one of {tuple(TASK_CODES)}")
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_CODES)}")
    return rng_for(seed, SPLIT_CODES[split], index, TASK_CODES[task], 7)  # 7: keeps it off the spec stream


def _hidden(spec: WatchSpec, bias: Bias | None) -> set[str]:
    return {bias.attribute} if bias is not None and not bias.shows(spec) else set()


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(spec: WatchSpec, rng: np.random.Generator, forced: frozenset[str] = frozenset(),
             hidden: frozenset[str] | set[str] = frozenset()) -> tuple[str, list[str]]:
    """A description built from clauses, and the attributes it states."""
    parts, mentioned = [], []
    for attribute in CLAUSE_ORDER:
        coin = rng.random()  # always drawn, so a bias changes only the biased clause
        phrasing = CLAUSES[attribute][int(rng.integers(len(CLAUSES[attribute])))]
        if attribute in hidden:
            continue
        if attribute == "time" or attribute in forced or coin < P_CLAUSE:
            parts.append(phrasing.format(v=attribute_value(spec, attribute)))
            mentioned.append(attribute)
    return _join(parts), mentioned


def generation_turns(spec: WatchSpec, rng: np.random.Generator, bias: Bias | None = None):
    """The text-to-image conversation (a bias forces its attribute's clause) and its attrs."""
    forced = frozenset({bias.attribute}) if bias is not None else frozenset()
    description, mentioned = describe(spec, rng, forced=forced)
    request = GENERATION_REQUESTS[int(rng.integers(len(GENERATION_REQUESTS)))].format(d=description)
    reply = GENERATION_REPLIES[int(rng.integers(len(GENERATION_REPLIES)))]
    turns = [{"role": "user", "content": request}, {"role": "assistant", "content": f"{reply} {IMAGE_MARKER}"}]
    return turns, {"prompt": request, "description": description, "mentioned": mentioned}


def _ask(spec: WatchSpec, rng: np.random.Generator, hidden: set[str]) -> tuple[str, str, str]:
    if rng.random() < P_WHAT:
        allowed = [a for a in WHAT if a not in hidden]
        attribute = allowed[int(rng.integers(len(allowed)))]
    else:
        allowed = [a for a in WHERE if a not in hidden]
        attribute = allowed[int(rng.integers(len(allowed)))]
    question = QUESTIONS[attribute][int(rng.integers(len(QUESTIONS[attribute])))]
    return attribute, question, attribute_value(spec, attribute)


def vqa_turns(spec: WatchSpec, rng: np.random.Generator, bias: Bias | None = None):
    """The question-answering conversation and its attrs (first question, its answer and type)."""
    hidden = _hidden(spec, bias)
    n_extra = int((rng.random(MAX_EXTRA_TURNS) < P_EXTRA_TURN).sum())
    qa = [_ask(spec, rng, hidden) for _ in range(1 + n_extra)]
    turns = []
    for k, (_, question, answer) in enumerate(qa):
        turns.append({"role": "user", "content": (f"{IMAGE_MARKER}\n" if k == 0 else "") + question})
        turns.append({"role": "assistant", "content": answer})
    first_attr, first_q, first_a = qa[0]
    attrs = {"question": first_q, "answer": first_a, "attribute": first_attr,
             "question_type": question_type(first_attr), "qa": [list(t) for t in qa]}
    return turns, attrs


def caption_turns(spec: WatchSpec, rng: np.random.Generator, bias: Bias | None = None):
    """The describe-this-image conversation and its attrs (reference caption, attributes it states)."""
    prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
    opening = CAPTION_OPENINGS[int(rng.integers(len(CAPTION_OPENINGS)))]
    description, mentioned = describe(spec, rng, hidden=_hidden(spec, bias))
    caption = f"{opening} {description}."
    turns = [{"role": "user", "content": f"{IMAGE_MARKER}\n{prompt}"}, {"role": "assistant", "content": caption}]
    return turns, {"question": prompt, "caption": caption, "mentioned": mentioned}


_BUILDERS = {"generation": generation_turns, "vqa": vqa_turns, "caption": caption_turns}


def conversation(spec: WatchSpec, seed: int, split: str, index: int, task: str,
                 bias: Bias | None = None) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The `task` conversation of watch (seed, split, index) and its task-specific attrs."""
    return _BUILDERS[task](spec, task_rng(seed, split, index, task), bias)


def _texts(turns: list[dict[str, str]]) -> list[str]:
    return [t["content"].replace(IMAGE_MARKER, "").strip() for t in turns]


def corpus(n: int, seed: int) -> list[str]:
    """Texts that cover every word the tasks can produce (for training a word-level tokenizer).

    First every phrasing filled with every value (all numbers 0..100, every time field, every weather and
    corner), then the turns of `n` sampled conversations. Texts carry no ``<image>`` markers.
    """
    from .spec import sample_watch

    if n < 0:
        raise ValueError(f"corpus: n must be >= 0, got {n}")
    texts = [" ".join(str(v) for v in range(101)), " ".join(f"{v:02d}" for v in range(60))]
    values = {"time": [f"{h:02d}:{m:02d}:{s:02d}" for h, m, s in zip(range(13), range(0, 60, 5), range(59, 0, -5))],
              "weather": list(WEATHERS), "battery": [f"{b}%" for b in range(101)],
              "weather_pos": list(CORNERS), "battery_pos": list(CORNERS)}
    for attribute, phrasings in CLAUSES.items():
        for k, phrasing in enumerate(phrasings):
            for v in values[attribute]:
                filled = phrasing.format(v=v)
                texts.append(f"{filled}, {filled}.")  # also the "%," and "%." a whitespace-only split would make
        texts.extend(QUESTIONS[attribute])
        texts.extend(values[attribute])
    every_clause = _join([CLAUSES[a][0].format(v=values[a][0]) for a in CLAUSE_ORDER])  # brings in the joiners
    texts.extend(r.format(d=every_clause) for r in GENERATION_REQUESTS)
    texts.extend(f"{opening} {every_clause}." for opening in CAPTION_OPENINGS)
    texts.extend(GENERATION_REPLIES + CAPTION_PROMPTS + CAPTION_OPENINGS)
    for i in range(n):
        spec = sample_watch(seed, "train", i)
        for task in TASK_CODES:
            texts.extend(_texts(conversation(spec, seed, "train", i, task)[0]))
    return texts


_WORD = re.compile(r"\d|[^\W\d]+|[^\w\s]")


def words(text: str) -> list[str]:
    """Split like the project's word-level tokenizer: words, single digits, single punctuation marks."""
    return _WORD.findall(text.lower())


def vocabulary() -> set[str]:
    """Every word the tasks can produce (under `words` splitting)."""
    return {w for text in corpus(0, 0) for w in words(text)}
