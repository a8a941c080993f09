"""LLaVA-format JSON (or JSONL) + an image folder as a SampleSource, with whole-file validation.

Covers the paper's released smart-watch layout (a "task" per record), LLaVA-1.5 instruction data
(multi-turn, text-only records, "<image>" before or after the text) and generation records (the
"<image>" ends a gpt turn). `caption_records_to_generation` turns ShareGPT4V-style captions into
"generate an image of ..." records, as the paper did for its LLaVA-1.5 check.
"""
from __future__ import annotations

import json
import logging
import os
import random
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image

from datamodules.base import SampleSource
from zoo.sample import IMAGE_MARKER, TASKS, Sample

log = logging.getLogger(__name__)

# "system" is refused rather than dropped: the model's chat template owns the system prompt, and
# silently discarding instructions would change what the data teaches.
ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
UNDERSTANDING = ("vqa", "caption")
MAX_LISTED = 50  # problems listed per file; all are counted
_MALFORMED = object()  # stands for a JSONL line that did not parse (already reported)


class DataValidationError(ValueError):
    """Every problem found in one or more data files, each naming the file, the record and the issue."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        by_file: dict[str, list[str]] = {}
        for path, message in problems:
            by_file.setdefault(path, []).append(message)
        parts = []
        for path, messages in by_file.items():
            shown = "; ".join(messages[:MAX_LISTED])
            more = f"; ... and {len(messages) - MAX_LISTED} more" if len(messages) > MAX_LISTED else ""
            noun = "problem" if len(messages) == 1 else "problems"
            parts.append(f"{path}: {len(messages)} {noun}: {shown}{more}")
        super().__init__("\n".join(parts))


@dataclass(frozen=True)
class _Record:
    task: str
    turns: tuple[tuple[str, str], ...]  # (role, content), roles already mapped to user/assistant
    images: tuple[str, ...]  # paths relative to the image root, in marker order
    id: str


def read_json_records(path: str) -> tuple[list[tuple[str, Any]], list[str]]:
    """Records of a JSON list or a JSONL file as (label, record) pairs, plus problems found while parsing.

    Labels are "record N" (N counts records from 0), with "(line L)" added for JSONL.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as e:
        return [], [f"cannot read the file: {e.strerror or e}"]
    except UnicodeDecodeError as e:
        return [], [f"not UTF-8 text (byte {e.start})"]
    stripped = text.lstrip()
    if not stripped:
        return [], ["the file is empty; expected a JSON list of records (or JSONL: one record per line)"]
    if stripped[0] == "{" and not path.endswith(".json"):
        return _read_jsonl(text)
    if stripped[0] == "{":
        # A ".json" file opening with "{" is either JSONL under the wrong extension or a single object.
        try:
            json.loads(text)
        except json.JSONDecodeError:
            return _read_jsonl(text)
        return [], ["top level is a JSON object; expected a list of records (or JSONL: one record per line)"]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return [], [f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}"]
    if not isinstance(data, list):
        return [], [f"top level is a JSON {_json_type(data)}; expected a list of records"]
    return [(f"record {i}", r) for i, r in enumerate(data)], []


def _json_type(value: Any) -> str:
    """JSON's name for the type of a decoded value."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _read_jsonl(text: str) -> tuple[list[tuple[str, Any]], list[str]]:
    records: list[tuple[str, Any]] = []
    problems: list[str] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        label = f"record {len(records)} (line {line_no})"
        try:
            records.append((label, json.loads(line)))
        except json.JSONDecodeError as e:
            problems.append(f"{label}: malformed JSON at column {e.colno}: {e.msg}")
            records.append((label, _MALFORMED))  # keeps later record numbers stable
    return records, problems


def _parse_record(raw: Any, index: int) -> tuple[_Record | None, list[str]]:
    """One raw record as a _Record, or the list of everything wrong with it."""
    if not isinstance(raw, dict):
        return None, [f"is a JSON {_json_type(raw)}, not an object"]
    problems: list[str] = []
    images: list[str] = []
    image = raw.get("image")
    if isinstance(image, str):
        images = [image]
    elif isinstance(image, list) and all(isinstance(p, str) for p in image):
        images = list(image)
    elif image is not None:
        problems.append("'image' must be a string or a list of strings")
    conversations = raw.get("conversations")
    if conversations is None:
        return None, problems + ["no 'conversations'"]
    if not isinstance(conversations, list):
        return None, problems + ["'conversations' is not a list"]
    if not conversations:
        return None, problems + ["empty 'conversations'"]
    turns: list[tuple[str, str]] = []
    for t, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            problems.append(f"turn {t} is not an object")
            continue
        name, value = turn.get("from"), turn.get("value")
        role = ROLE_NAMES.get(name) if isinstance(name, str) else None
        if name == "system":
            problems.append(f"turn {t} is a 'system' turn; system prompts come from the model's chat template")
        elif role is None:
            problems.append(f"turn {t} has unknown role {name!r}; expected human/gpt (or user/assistant)")
        if not isinstance(value, str):
            problems.append(f"turn {t} has no string 'value'")
        if role is not None and isinstance(value, str):
            turns.append((role, value))
    if problems:
        return None, problems
    for t, (role, _) in enumerate(turns):
        expected = "user" if t % 2 == 0 else "assistant"
        if role != expected:
            problems.append(f"turn {t} is from {'human' if role == 'user' else 'gpt'} but turns must alternate "
                            "human/gpt starting with human")
            break
    if turns[-1][0] != "assistant":
        problems.append("ends with a human turn: nothing to answer")
    read = sum(c.count(IMAGE_MARKER) for r, c in turns if r == "user")
    written = sum(c.count(IMAGE_MARKER) for r, c in turns if r == "assistant")
    if read + written != len(images):
        problems.append(f"{read + written} {IMAGE_MARKER} markers but {len(images)} image(s)")
    task = raw.get("task")
    if task is None:
        task = "generation" if written else ("vqa" if read or images else "text")
    if task not in TASKS:
        problems.append(f"unknown task {task!r}; expected one of {TASKS}")
    elif task in UNDERSTANDING and written:
        problems.append(f"{task} record has {IMAGE_MARKER} in a gpt turn; understanding reads images in human turns")
    elif task in UNDERSTANDING and not read:
        problems.append(f"{task} record has no {IMAGE_MARKER} in a human turn")
    elif task == "generation" and not written:
        problems.append(f"generation record has no {IMAGE_MARKER} in a gpt turn")
    elif task == "text" and (read or written or images):
        problems.append("text record has images")
    if problems:
        return None, problems
    rid = raw.get("id")
    return _Record(task, tuple(turns), tuple(images), str(index) if rid is None else str(rid)), []


def _image_problem(path: str, check: str) -> str | None:
    """Why the image at `path` cannot be used, or None."""
    if not os.path.isfile(path):
        return "not found"
    if check == "open":
        try:
            with Image.open(path) as im:
                im.verify()  # header and structure; no full decode
        except Exception as e:  # PIL raises many types for broken files
            detail = str(e).replace(repr(path), "").replace(path, "").strip(" :")  # the path is named elsewhere
            return f"unreadable ({type(e).__name__}{': ' + detail if detail else ''})"
    return None


class LlavaJsonSource(SampleSource):
    """LLaVA-format records with images under `image_root`; one file per split.

    `json_path` is the train split; `val_json` / `test_json` optionally serve val / test (at least one of
    the three is needed; `splits()` lists those given). Files are JSON lists or JSONL (one record per line).
    Roles: human|user and gpt|assistant; "system" turns are an error. A record without "task" is
    "generation" when a gpt turn holds "<image>", "vqa" when only human turns do, "text" without images.
    `image_check`: "open" (exists and PIL can parse it), "exists", or "none". The whole source is
    validated once, on first use or by `validate()`, before any sample is served.
    `scoring` (of `unizoo test` records): "smartwatch" scores them as the smart-watch study does (the
    paper's VQA scoring with chance per attribute, caption attributes as the reference caption states
    them; `datamodules.smartwatch.evaluate.score_text_records`), "none" not at all, and "auto" (default)
    as smart-watch data when every VQA ground truth evaluated is a time, battery, weather or position
    answer (a file in the study's layout, as `unizoo data smartwatch` writes it), else not at all.
    """

    def __init__(
        self,
        json_path: str | None,
        image_root: str,
        val_json: str | None = None,
        test_json: str | None = None,
        image_check: Literal["open", "exists", "none"] = "open",
        scoring: Literal["auto", "smartwatch", "none"] = "auto",
    ) -> None:
        self.files = {s: p for s, p in (("train", json_path), ("val", val_json), ("test", test_json)) if p}
        if not self.files:
            raise ValueError("LlavaJsonSource: give at least one of json_path, val_json, test_json")
        if image_check not in ("open", "exists", "none"):
            raise ValueError(f"LlavaJsonSource: image_check must be open|exists|none, got {image_check!r}")
        if scoring not in ("auto", "smartwatch", "none"):
            raise ValueError(f"LlavaJsonSource: scoring must be auto|smartwatch|none, got {scoring!r}")
        self.image_root = image_root
        self.image_check = image_check
        self.scoring = scoring
        self._records: dict[str, list[_Record]] | None = None

    def splits(self) -> tuple[str, ...]:
        """The splits a file was given for."""
        return tuple(self.files)

    def validate(self) -> None:
        """Parse and check every file and image once; raise one DataValidationError listing all problems."""
        if self._records is not None:
            return
        problems: list[tuple[int, int, str, str]] = []  # (file number, record, file, message) for sorting
        records: dict[str, list[_Record]] = {}
        users: dict[str, list[tuple[int, int, str, str]]] = {}  # image -> where each record using it sits
        for number, (split, path) in enumerate(self.files.items()):
            raw, read_problems = read_json_records(path)
            problems += [(number, -1, path, p) for p in read_problems]
            records[split] = []
            for index, (label, record) in enumerate(raw):
                if record is _MALFORMED:
                    continue
                parsed, bad = _parse_record(record, index)
                problems += [(number, index, path, f"{label}: {b}") for b in bad]
                if parsed is not None:
                    records[split].append(parsed)
                    for image in parsed.images:
                        users.setdefault(image, []).append((number, index, path, label))
        if self.image_check != "none" and users:
            names = list(users)
            full = [os.path.join(self.image_root, n) for n in names]
            with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
                verdicts = list(pool.map(_image_problem, full, [self.image_check] * len(full)))
            for name, verdict in zip(names, verdicts):
                if verdict is not None:
                    where = "under" if verdict == "not found" else "in"
                    problems += [(n, i, p, f"{lab}: image {name!r} {verdict} {where} {self.image_root}")
                                 for n, i, p, lab in users[name]]
        if problems:
            problems.sort(key=lambda problem: problem[:2])  # file, then record order
            raise DataValidationError([(path, message) for _, _, path, message in problems])
        self._records = records

    def _split(self, split: str) -> list[_Record]:
        if split not in self.files:
            raise ValueError(f"LlavaJsonSource: no file for split {split!r}; it serves {self.splits()}")
        self.validate()
        assert self._records is not None
        return self._records[split]

    def tasks(self, split: str) -> list[str]:
        """Task of every record of `split`."""
        return [r.task for r in self._split(split)]

    def image_ids(self, split: str) -> list[str]:
        """Image path(s) of every record ('|'-joined when a record has several; '' for text-only)."""
        return ["|".join(r.images) for r in self._split(split)]

    def sample(self, split: str, index: int) -> Sample:
        """Record `index` of `split` as a Sample, reading its images now."""
        record = self._split(split)[index]
        path = self.files[split]
        images = []
        for name in record.images:
            try:
                with Image.open(os.path.join(self.image_root, name)) as im:
                    images.append(im.convert("RGB"))
            except Exception as e:
                raise ValueError(f"{path}: record {index}: cannot read image {name!r} under "
                                 f"{self.image_root}: {e}") from e
        attrs: dict[str, Any] = {"id": record.id, "source": path, "record": index}
        if record.task != "generation":
            attrs["answers"] = [c for r, c in record.turns if r == "assistant"]
        return Sample(
            task=record.task,
            turns=[{"role": r, "content": c} for r, c in record.turns],
            images=images,
            attrs=attrs,
            image_keys=list(record.images),
        )

    def score_records(self, records: list[dict[str, Any]], images: list[Any] | None = None) -> dict[str, Any]:
        """Scores of this source's evaluation records as `scoring` says ({} when it does not apply)."""
        from datamodules.smartwatch.evaluate import is_smartwatch_text, score_text_records

        if self.scoring == "none" or (self.scoring == "auto" and not is_smartwatch_text(records)):
            return {}
        return score_text_records(records)


# Phrasings are the project's own; the caption follows the request verbatim.
GENERATION_REQUESTS = (
    "Generate an image of the following: {caption}",
    "Please create a picture that matches this description: {caption}",
    "Draw an image based on this description. {caption}",
    "Can you produce an image showing this? {caption}",
    "Make an image that fits the following description: {caption}",
    "I would like an image of this scene: {caption}",
)
GENERATION_ANSWERS = (
    "Here is the image. " + IMAGE_MARKER,
    "Sure, here it is: " + IMAGE_MARKER,
    "This is the image you asked for. " + IMAGE_MARKER,
    IMAGE_MARKER,
)


def _caption_of(record: Any) -> tuple[str, str] | None:
    """(image, caption) of a single-image, single-exchange caption record, else None."""
    if not isinstance(record, dict) or not isinstance(record.get("image"), str):
        return None
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) != 2 or not all(isinstance(t, dict) for t in turns):
        return None
    ask, answer = turns
    if ROLE_NAMES.get(ask.get("from")) != "user" or ROLE_NAMES.get(answer.get("from")) != "assistant":
        return None
    if not isinstance(ask.get("value"), str) or IMAGE_MARKER not in ask["value"]:
        return None
    caption = answer.get("value")
    if not isinstance(caption, str) or not caption.strip() or IMAGE_MARKER in caption:
        return None
    return record["image"], caption.strip()


def caption_records_to_generation(
    in_path: str,
    out_path: str,
    seed: int = 0,
    exclude_image_prefixes: tuple[str, ...] = ("sam/",),
) -> int:
    """Write ShareGPT4V-style caption records of `in_path` as generation records to `out_path`; return the count.

    Each kept record becomes a "generate an image of <caption>" request answered with the image (the gpt
    turn ends with "<image>"); phrasings are drawn from `seed`. Records whose image path starts with one
    of `exclude_image_prefixes` (the paper used non-SAM images) and records that are not one
    image + one human/gpt exchange are skipped (counts are logged). The output (a JSON list, or JSONL when
    `out_path` ends in .jsonl) is written to a temporary file and renamed, so it is never half-written.
    """
    raw, problems = read_json_records(in_path)
    if problems:
        raise DataValidationError([(in_path, p) for p in problems])
    out: list[dict[str, Any]] = []
    excluded = not_caption = 0
    for index, (_, record) in enumerate(raw):
        found = _caption_of(record)
        if found is None:
            not_caption += 1
            continue
        image, caption = found
        norm = os.path.normpath(image).replace(os.sep, "/")
        if any((norm + "/").startswith(prefix) for prefix in exclude_image_prefixes):
            excluded += 1
            continue
        rid = record.get("id")
        rng = random.Random(f"{seed}:{index}")  # per record, so skipping others never changes its phrasing
        out.append({
            "id": f"{index if rid is None else rid}-gen",
            "task": "generation",
            "image": image,
            "conversations": [
                {"from": "human", "value": rng.choice(GENERATION_REQUESTS).format(caption=caption)},
                {"from": "gpt", "value": rng.choice(GENERATION_ANSWERS)},
            ],
        })
    log.info("%s: %d generation records written, %d excluded by prefix, %d not caption records",
             in_path, len(out), excluded, not_caption)
    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(out_path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if out_path.endswith(".jsonl"):
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
            else:
                json.dump(out, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return len(out)
