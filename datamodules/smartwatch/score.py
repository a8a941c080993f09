"""The study's VQA scoring, its chance levels, and attribute scoring of captions.

VQA, the paper's protocol (PAPER.md §6; the default everywhere, `lenient=False`): the type comes from the
ground truth's format. Time: parse HH:MM:SS (two digits each, not inside a longer number) from the
answer; circular errors eh = min(|dh|, 12 - |dh|) (dh taken mod 12, so 0 and 12 o'clock agree and a
24-hour answer reads as its 12-hour hand position), em and es likewise mod 60; score
1 - (eh/6 + em/30 + es/30)/3. Minutes or seconds above 59 do not parse. Battery: parse "N%" with N in
0..100; score 1 - |d|/100. Weather and position: 1 if the ground-truth string occurs in the answer,
case-sensitively. Anything that does not parse scores 0: "3:8:46" is no time and "Cloudy" does not
contain "cloudy".

`lenient=True` (`unizoo score --lenient`; not the paper's numbers): answers are lowercased and tokenizer
spacing is undone first (answers decoded by a word-level tokenizer can come back spaced: "0 7 : 0 5 : 0 9",
"5 7 %", "top - left"), and times with one-digit fields ("3:8:46") parse. Caption scoring (new; the paper
did not score captions) always reads captions this tolerant way.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from itertools import product
from typing import Any

from .spec import CORNERS, HOURS, WEATHERS

TYPES = ("time", "weather", "position", "battery")
_TIME = re.compile(r"(\d{1,2}):(\d{1,2}):(\d{1,2})")
_PAPER_TIME = re.compile(r"(?<!\d)(\d{2}):(\d{2}):(\d{2})(?!\d)")  # the paper's HH:MM:SS: two digits each
_BATTERY = re.compile(r"(?<!\d)(\d{1,3})%")
_EXACT_TIME = re.compile(r"\d{2}:\d{2}:\d{2}")
_EXACT_BATTERY = re.compile(r"\d{1,3}%")
# Which clause a corner belongs to in free text: the nearest of these words before it.
_WEATHER_WORDS = ("weather", "forecast", "sun", "sunny", "cloud", "cloudy", "rain", "raining")
_BATTERY_WORDS = ("battery", "charge", "power", "gauge")


def normalise(text: str) -> str:
    """Lowercase and undo tokenizer spacing around digits, ':', '%' and '-'."""
    text = " ".join(str(text).lower().split())
    text = re.sub(r"(?<=[\d:])\s+(?=[\d:%])", "", text)
    text = re.sub(r"(?<=[a-z])\s*-\s*(?=[a-z])", "-", text)
    return text


def answer_type(ground_truth: str) -> str | None:
    """The scoring type a ground-truth answer implies, or None if it is none of them."""
    gt = normalise(ground_truth)
    if _EXACT_TIME.fullmatch(gt):
        return "time"
    if _EXACT_BATTERY.fullmatch(gt) and int(gt[:-1]) <= 100:
        return "battery"
    if gt in CORNERS:
        return "position"
    if gt in WEATHERS:
        return "weather"
    return None


def parse_time(text: str, lenient: bool = True) -> tuple[int, int, int] | None:
    """The first time in `text` (minutes and seconds < 60), or None.

    lenient (the default here, as captions are read): H:M:S with one or two digits each, after `normalise`;
    otherwise the paper's rule: HH:MM:SS with two digits each, in the text as written.
    """
    pattern, text = (_TIME, normalise(text)) if lenient else (_PAPER_TIME, str(text))
    for match in pattern.finditer(text):
        h, m, s = (int(g) for g in match.groups())
        if m < 60 and s < 60:
            return h, m, s
    return None


def parse_battery(text: str, lenient: bool = True) -> int | None:
    """The first "N%" in `text` with N in 0..100, or None (`lenient`: after `normalise`, so "5 7 %" reads 57)."""
    for match in _BATTERY.finditer(normalise(text) if lenient else str(text)):
        value = int(match.group(1))
        if value <= 100:
            return value
    return None


def _circular(a: int, b: int, period: int) -> int:
    d = abs(a - b) % period
    return min(d, period - d)


def time_score(truth: tuple[int, int, int], guess: tuple[int, int, int] | None) -> float:
    """The study's circular partial credit for a time; 0 for no guess."""
    if guess is None:
        return 0.0
    eh = _circular(truth[0], guess[0], 12)
    em = _circular(truth[1], guess[1], 60)
    es = _circular(truth[2], guess[2], 60)
    return 1.0 - (eh / 6 + em / 30 + es / 30) / 3


def battery_score(truth: int, guess: int | None) -> float:
    """1 - |d|/100; 0 for no guess."""
    return 0.0 if guess is None else 1.0 - abs(truth - guess) / 100


def score_answer(ground_truth: str, answer: str, lenient: bool = False) -> tuple[str | None, float | None]:
    """(type, score) of one answer; (None, None) when the ground truth is of no known type.

    By default the paper's protocol (module docstring); `lenient` normalises case and spacing first.
    """
    kind = answer_type(ground_truth)
    if kind is None:
        return None, None
    if kind == "time":  # the ground truth's value is read tolerantly (typed above); the answer per the rule
        return kind, time_score(parse_time(ground_truth), parse_time(answer, lenient))
    if kind == "battery":
        return kind, battery_score(parse_battery(ground_truth), parse_battery(answer, lenient))
    if lenient:
        return kind, float(normalise(ground_truth) in normalise(answer))
    return kind, float(str(ground_truth).strip() in str(answer))  # the paper: case-sensitive containment


def _record_pair(record: Any, i: int) -> tuple[str, str]:
    if isinstance(record, Mapping):
        if "ground_truth" not in record or "answer" not in record:
            raise ValueError(f"record {i}: needs keys 'ground_truth' and 'answer', got {sorted(record)}")
        gt, ans = record["ground_truth"], record["answer"]
    else:
        try:
            gt, ans = record
        except (TypeError, ValueError):
            raise ValueError(
                f"record {i}: expected a mapping or a (ground_truth, answer) pair, got {record!r}"
            ) from None
    if not isinstance(gt, str) or not isinstance(ans, str):
        raise ValueError(f"record {i}: ground_truth and answer must be strings, got {gt!r}, {ans!r}")
    return gt, ans


def score_vqa(records: Iterable[Any], lenient: bool = False) -> dict[str, Any]:
    """Per-type means (None where no question), micro total and counts over (ground_truth, answer) records.

    The paper's protocol unless `lenient` (see `score_answer`).
    """
    sums = dict.fromkeys(TYPES, 0.0)
    counts = dict.fromkeys(TYPES, 0)
    for i, record in enumerate(records):
        gt, ans = _record_pair(record, i)
        kind, value = score_answer(gt, ans, lenient)
        if kind is None:
            raise ValueError(f"record {i}: ground truth {gt!r} is not a time, battery, weather or position answer")
        sums[kind] += value
        counts[kind] += 1
    n = sum(counts.values())
    out: dict[str, Any] = {t: (sums[t] / counts[t] if counts[t] else None) for t in TYPES}
    out["total"] = sum(sums.values()) / n if n else None
    out["counts"] = {**counts, "total": n}
    return out


def chance_levels() -> dict[str, float]:
    """Expected score of a uniform guess per type, by exact enumeration over the study's distributions.

    `total` weights the types as first questions are drawn: time, weather, battery 1/5 each, position 2/5.
    """
    hours, sixty = range(HOURS), range(60)
    e_hour = sum(_circular(a, b, 12) for a, b in product(hours, hours)) / HOURS**2
    e_sixty = sum(_circular(a, b, 60) for a, b in product(sixty, sixty)) / 60**2
    levels = {
        "time": 1.0 - (e_hour / 6 + e_sixty / 30 + e_sixty / 30) / 3,
        "weather": 1 / len(WEATHERS),
        "position": 1 / len(CORNERS),
        "battery": sum(1 - abs(a - b) / 100 for a, b in product(range(101), range(101))) / 101**2,
    }
    levels["total"] = (levels["time"] + levels["weather"] + levels["battery"]) / 5 + 2 / 5 * levels["position"]
    return levels


def _clauses(text: str) -> list[str]:
    return [c for c in re.split(r",|;|\.(?!\d)|\band\b|\bwhile\b|\bwith\b", text) if c.strip()]


def _corner_for(text: str, keywords: tuple[str, ...]) -> str | None:
    for clause in _clauses(text):
        tokens = set(re.findall(r"[a-z]+", clause))
        if tokens & set(keywords):
            for corner in CORNERS:
                if corner in clause:
                    return corner
    return None


def parse_caption(caption: str) -> dict[str, Any]:
    """What a caption states: time, battery, weather, weather_pos, battery_pos (None where silent)."""
    text = normalise(caption)
    found = [w for w in WEATHERS if re.search(rf"\b{w}\b", text)]
    return {
        "time": parse_time(text),
        "battery": parse_battery(text),
        "weather": found[0] if len(found) == 1 else None,  # naming two weathers states none
        "weather_pos": _corner_for(text, _WEATHER_WORDS),
        "battery_pos": _corner_for(text, _BATTERY_WORDS),
    }


def score_caption(attrs: Mapping[str, Any], caption: str) -> dict[str, float]:
    """Score a caption on each attribute the reference mentions (attrs["mentioned"], else all five).

    `attrs` holds the watch (hour, minute, second, battery, weather, weather_pos, battery_pos). Time and
    battery get the VQA partial credit; weather and corners 1 or 0; an attribute the caption omits scores 0.
    """
    mentioned = attrs.get("mentioned") or ("time", "weather", "battery", "weather_pos", "battery_pos")
    try:
        truth_time = (int(attrs["hour"]), int(attrs["minute"]), int(attrs["second"]))
        stated = parse_caption(caption)
        scores = {}
        for attribute in mentioned:
            if attribute == "time":
                scores["time"] = time_score(truth_time, stated["time"])
            elif attribute == "battery":
                scores["battery"] = battery_score(int(attrs["battery"]), stated["battery"])
            elif attribute in ("weather", "weather_pos", "battery_pos"):
                scores[attribute] = float(stated[attribute] == attrs[attribute])
            else:
                raise ValueError(f"score_caption: unknown attribute {attribute!r} in attrs['mentioned']")
    except KeyError as missing:
        raise ValueError(f"score_caption: attrs lacks {missing}") from None
    return scores
