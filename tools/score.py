"""`unizoo score`: the study's VQA scores of an answers file (the paper's protocol, or `--lenient`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


NOT_TYPED = "ground truth not a time, battery, weather or position"


def _read_records(path: Path) -> tuple[list[dict], dict[str, int], int]:
    """(VQA records to score, skipped lines by reason, lines read) of ANSWERS.jsonl.

    Lines of another task (the caption and generation lines `unizoo test` writes beside the VQA ones) and
    VQA-shaped lines whose ground truth is of no scored type are skipped and counted; lines that are not
    a JSON object with string "ground_truth" and "answer" are errors, all reported at once.
    """
    from datamodules.smartwatch.score import answer_type

    if not path.is_file():
        raise SystemExit(f"unizoo score: {path}: no such file")
    records, problems, skipped, lines = [], [], {}, 0
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            lines += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"line {number}: not JSON ({err.msg})")
                continue
            if not isinstance(record, dict):
                problems.append(f"line {number}: expected a JSON object, got {type(record).__name__}")
                continue
            task = record.get("task", "vqa")
            if task != "vqa":  # `unizoo test` writes one line per caption and generated image too
                reason = f"{task} line (not VQA)" if isinstance(task, str) else "task is not a string"
                skipped[reason] = skipped.get(reason, 0) + 1
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
                skipped[NOT_TYPED] = skipped.get(NOT_TYPED, 0) + 1
                continue
            records.append({"ground_truth": gt, "answer": answer})
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise SystemExit(f"unizoo score: {path}: {len(problems)} bad line(s):\n  {shown}")
    return records, skipped, lines


def score(answers: str, lenient: bool = False) -> None:
    """Score smart-watch VQA answers the paper's way (PAPER.md §6) and print one JSON object.

    ANSWERS is the answers.jsonl `unizoo test` writes (its VQA lines are scored; caption and generation
    lines are skipped and counted), or any JSON-lines file whose objects hold "ground_truth" (the reference
    answer: "sunny", "03:45:12", "57%", "top-left") and "answer" (the model's text). Prints per-type means
    (null where no question of that type), the micro-averaged total, counts, the chance level of uniform
    guessing, the protocol, and the skipped lines by reason (also summed up on stderr).

    The paper's protocol: times are two-digit HH:MM:SS, weather and position are case-sensitive
    containment, so "3:8:46" and "Cloudy" score 0.

    Args:
        answers: path of the ANSWERS.jsonl file.
        lenient: relaxed reading instead of the paper's: lowercase, tokenizer spacing undone
            ("0 7 : 0 5 : 0 9"), one-digit time fields ("3:8:46"). Not comparable with the paper's numbers.
    """
    from datamodules.smartwatch.score import chance_levels, score_vqa

    path = Path(answers)
    records, skipped, lines = _read_records(path)
    result = score_vqa(records, lenient=lenient)
    result["chance"] = chance_levels()
    result["protocol"] = "lenient" if lenient else "paper"
    result["skipped"] = {**skipped, "total": sum(skipped.values())}
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    why = "; ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "none"
    print(f"unizoo score: {path}: scored {len(records)} of {lines} line(s) ({result['protocol']} protocol); "
          f"skipped {result['skipped']['total']}: {why}", file=sys.stderr)
