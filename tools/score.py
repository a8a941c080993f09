"""`unizoo score`: the study's VQA scores of an answers file."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _read_records(path: Path) -> list[dict]:
    """Parse ANSWERS.jsonl, collecting every bad line before failing."""
    from datamodules.smartwatch.score import answer_type

    if not path.is_file():
        raise SystemExit(f"unizoo score: {path}: no such file")
    records, problems = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"line {number}: not JSON ({err.msg})")
                continue
            if not isinstance(record, dict):
                problems.append(f"line {number}: expected a JSON object, got {type(record).__name__}")
                continue
            missing = [k for k in ("ground_truth", "answer") if k not in record]
            if missing:
                problems.append(f"line {number}: missing key(s) {', '.join(missing)}")
                continue
            gt, answer = record["ground_truth"], record["answer"]
            if not isinstance(gt, str) or not isinstance(answer, str):
                problems.append(f"line {number}: ground_truth and answer must be strings")
                continue
            if answer_type(gt) is None:
                problems.append(f"line {number}: ground_truth {gt!r} is not a time, battery, weather or position")
                continue
            records.append({"ground_truth": gt, "answer": answer})
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise SystemExit(f"unizoo score: {path}: {len(problems)} bad line(s):\n  {shown}")
    return records


def score(answers: str) -> None:
    """Score smart-watch VQA answers the study's way and print one JSON object.

    Each line of ANSWERS is a JSON object with at least "ground_truth" (the reference answer: "sunny",
    "03:45:12", "57%", "top-left") and "answer" (the model's text). Prints per-type means (null where no
    question of that type), the micro-averaged total, counts, and the chance level of uniform guessing.

    Args:
        answers: path of the ANSWERS.jsonl file.
    """
    from datamodules.smartwatch.score import chance_levels, score_vqa

    result = score_vqa(_read_records(Path(answers)))
    result["chance"] = chance_levels()
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
