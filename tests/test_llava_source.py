"""LlavaJsonSource: both layouts, JSONL, task inference, whole-file validation; caption -> generation."""
from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from datamodules.llava import DataValidationError, LlavaJsonSource, caption_records_to_generation
from zoo.sample import IMAGE_MARKER


def _png(root, name, color=(200, 10, 10), size=(8, 8), mode="RGB"):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else 128).save(path)
    return name


def _write(path, records, jsonl=False):
    with open(path, "w") as f:
        if jsonl:
            f.writelines(json.dumps(r) + "\n" for r in records)
        else:
            json.dump(records, f)
    return str(path)


def _turns(*pairs):
    return [{"from": who, "value": text} for who, text in pairs]


@pytest.fixture
def imgs(tmp_path):
    root = tmp_path / "imgs"
    for i in range(4):
        _png(root, f"{i}.png", color=(i * 60, 0, 0))
    _png(root, "gray.png", mode="L")
    return root


PAPER = [
    {"task": "generation", "image": "0.png", "conversations": _turns(
        ("human", "Generate a smart watch showing the time 03:45:12."), ("gpt", "Here it is. <image>"))},
    {"task": "vqa", "image": "0.png", "conversations": _turns(
        ("human", "<image>\nWhat is the weather?"), ("gpt", "sunny"), ("human", "Battery?"), ("gpt", "57%"))},
    {"task": "caption", "image": "1.png", "conversations": _turns(
        ("human", "<image>\nDescribe this image."), ("gpt", "A watch showing 03:45:12."))},
]


def test_paper_layout(tmp_path, imgs):
    src = LlavaJsonSource(_write(tmp_path / "train.json", PAPER), str(imgs))
    assert src.splits() == ("train",)
    assert src.tasks("train") == ["generation", "vqa", "caption"]
    assert src.image_ids("train") == ["0.png", "0.png", "1.png"]
    gen = src.sample("train", 0)
    assert gen.task == "generation" and gen.turns[1] == {"role": "assistant", "content": "Here it is. <image>"}
    assert gen.image_keys == ["0.png"] and gen.image.mode == "RGB" and gen.image.size == (8, 8)
    assert "answers" not in gen.attrs
    vqa = src.sample("train", 1)
    assert [t["role"] for t in vqa.turns] == ["user", "assistant", "user", "assistant"]
    assert vqa.turns[0]["content"] == "<image>\nWhat is the weather?"
    assert vqa.attrs == {"id": "1", "source": str(tmp_path / "train.json"), "record": 1, "answers": ["sunny", "57%"]}
    for i in range(3):
        src.sample("train", i).validate(f"record {i}")


def test_llava15_layout_inference_and_jsonl(tmp_path, imgs):
    records = [
        {"id": "a", "image": "2.png", "conversations": _turns(
            ("human", "What is shown here?\n<image>"), ("gpt", "A red square."),
            ("human", "Is it large?"), ("gpt", "No."))},
        {"id": "b", "conversations": _turns(("human", "Tell me a joke."), ("gpt", "No."))},
        {"id": "c", "image": "gray.png", "conversations": _turns(
            ("user", "Draw a gray square."), ("assistant", f"{IMAGE_MARKER}"))},
        {"id": "d", "image": ["1.png", "3.png"], "conversations": _turns(
            ("human", "<image> and <image>: same colour?"), ("gpt", "No."))},
    ]
    for jsonl in (False, True):
        path = _write(tmp_path / ("d.jsonl" if jsonl else "d.json"), records, jsonl=jsonl)
        src = LlavaJsonSource(path, str(imgs))
        assert src.tasks("train") == ["vqa", "text", "generation", "vqa"]
        assert src.image_ids("train") == ["2.png", "", "gray.png", "1.png|3.png"]
        text = src.sample("train", 1)
        assert text.images == [] and text.attrs["id"] == "b" and text.attrs["answers"] == ["No."]
        gray = src.sample("train", 2)
        assert gray.image.mode == "RGB"  # grayscale files come back RGB
        two = src.sample("train", 3)
        assert two.image_keys == ["1.png", "3.png"] and two.images[1].getpixel((0, 0)) == (180, 0, 0)
        for i in range(4):
            src.sample("train", i).validate()


def test_val_and_test_files(tmp_path, imgs):
    train = _write(tmp_path / "t.json", PAPER)
    test = _write(tmp_path / "x.json", PAPER[:1])
    src = LlavaJsonSource(train, str(imgs), test_json=test)
    assert src.splits() == ("train", "test")
    assert src.tasks("test") == ["generation"]
    with pytest.raises(ValueError, match="no file for split 'val'"):
        src.tasks("val")
    with pytest.raises(ValueError, match="at least one"):
        LlavaJsonSource(None, str(imgs))


def test_every_problem_reported_once(tmp_path, imgs):
    (imgs / "broken.png").write_bytes(b"\x89PNG not really")
    ok = PAPER[2]
    bad = [
        ok,  # 0
        {"task": "vqa", "image": "0.png"},  # 1 no conversations
        {"image": "0.png", "conversations": []},  # 2 empty
        {"conversations": _turns(("human", "hi"), ("bot", "hello"))},  # 3 unknown role
        {"conversations": _turns(("human", "hi"), ("human", "again"), ("gpt", "x"))},  # 4 not alternating
        {"image": "missing.png", "conversations": _turns(("human", "<image>\nq"), ("gpt", "a"))},  # 5
        {"image": "broken.png", "conversations": _turns(("human", "<image>\nq"), ("gpt", "a"))},  # 6
        {"image": "1.png", "conversations": _turns(("human", "<image> <image> q"), ("gpt", "a"))},  # 7 count
        {"task": "vqa", "image": "1.png", "conversations": _turns(("human", "q"), ("gpt", "<image>"))},  # 8
        {"task": "generation", "image": "1.png", "conversations": _turns(("human", "<image>"), ("gpt", "a"))},  # 9
        {"task": "ocr", "image": "1.png", "conversations": _turns(("human", "<image>"), ("gpt", "a"))},  # 10
        {"conversations": _turns(("system", "be nice"), ("human", "hi"), ("gpt", "a"))},  # 11
        {"conversations": _turns(("human", "hi"), ("gpt", "a"), ("human", "and?"))},  # 12 ends on human
        "just a string",  # 13
    ]
    path = _write(tmp_path / "bad.json", bad)
    src = LlavaJsonSource(path, str(imgs))
    with pytest.raises(DataValidationError) as info:
        src.tasks("train")  # nothing is served before the whole file passed
    msg = str(info.value)
    expected = {
        1: "no 'conversations'", 2: "empty 'conversations'", 3: "turn 1 has unknown role 'bot'",
        4: "turn 1 is from human but turns must alternate", 5: "image 'missing.png' not found under",
        6: "image 'broken.png' unreadable", 7: "2 <image> markers but 1 image", 8: "vqa record has <image> in a gpt",
        9: "generation record has no <image> in a gpt turn", 10: "unknown task 'ocr'",
        11: "turn 0 is a 'system' turn", 12: "ends with a human turn", 13: "is a JSON string",
    }
    assert msg.startswith(f"{path}: {len(expected)} problems: ")
    for record, problem in expected.items():
        assert f"record {record}: {problem}" in msg
    assert "record 0:" not in msg
    assert len(info.value.problems) == len(expected) and all(p == path for p, _ in info.value.problems)
    assert isinstance(info.value, ValueError)


def test_image_check_levels(tmp_path, imgs):
    (imgs / "broken.png").write_bytes(b"garbage")
    records = [{"image": name, "conversations": _turns(("human", "<image>q"), ("gpt", "a"))}
               for name in ("broken.png", "missing.png")]
    path = _write(tmp_path / "d.json", records)
    with pytest.raises(DataValidationError, match="2 problems"):
        LlavaJsonSource(path, str(imgs)).validate()
    with pytest.raises(DataValidationError, match="1 problem: record 1: image 'missing.png' not found"):
        LlavaJsonSource(path, str(imgs), image_check="exists").validate()
    LlavaJsonSource(path, str(imgs), image_check="none").validate()


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        ('[{"conversations": []},\n  {"task": "vqa",, }]', "d.json", "malformed JSON at line 2, column 18"),
        ('{"conversations": [\n]}', "d.json", "top level is a JSON object; expected a list"),
        ('"hello"', "d.json", "top level is a JSON string"),
        ("", "d.json", "the file is empty"),
        ('{"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}\n{"bad": \n',
         "d.jsonl", "record 1 (line 2): malformed JSON at column 9"),
    ],
)
def test_malformed_files(tmp_path, content, name, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataValidationError) as info:
        LlavaJsonSource(str(path), str(tmp_path)).validate()
    assert str(info.value).startswith(f"{path}: 1 problem: ")
    assert expected in str(info.value)


def test_problems_from_several_files_in_one_error(tmp_path, imgs):
    train = _write(tmp_path / "train.json", [{"conversations": []}])
    val = _write(tmp_path / "val.json", [PAPER[0], {"task": "vqa"}])
    with pytest.raises(DataValidationError) as info:
        LlavaJsonSource(train, str(imgs), val_json=val).validate()
    lines = str(info.value).splitlines()
    assert lines[0] == f"{train}: 1 problem: record 0: empty 'conversations'"
    assert lines[1] == f"{val}: 1 problem: record 1: no 'conversations'"


# ---- caption -> generation ---------------------------------------------------------------------

def _captions(n):
    out = []
    for i in range(n):
        image = f"sam/images/sa_{i}.jpg" if i % 4 == 0 else f"coco/train2017/{i:012d}.jpg"
        out.append({"id": f"c{i}", "image": image, "conversations": _turns(
            ("human", "What do you see happening in this image?\n<image>"), ("gpt", f" A photo number {i}. "))})
    out.append({"id": "multi", "image": "coco/x.jpg", "conversations": _turns(
        ("human", "<image>q"), ("gpt", "a"), ("human", "q2"), ("gpt", "a2"))})  # not a caption record
    out.append({"id": "text", "conversations": _turns(("human", "hi"), ("gpt", "hello"))})
    return out


def test_caption_to_generation(tmp_path):
    src = _write(tmp_path / "cap.json", _captions(40))
    out = tmp_path / "out" / "gen.json"
    n = caption_records_to_generation(src, str(out), seed=3)
    assert n == 30  # 10 of 40 are under sam/; the 2 non-caption records are skipped
    records = json.loads(out.read_text())
    assert len(records) == n and not any(r["image"].startswith("sam/") for r in records)
    first = records[0]
    assert first["id"] == "c1-gen" and first["task"] == "generation"
    assert first["image"] == "coco/train2017/000000000001.jpg"
    human, gpt = first["conversations"]
    assert human["from"] == "human" and human["value"].endswith("A photo number 1.")
    assert IMAGE_MARKER not in human["value"]
    assert gpt["from"] == "gpt" and gpt["value"].endswith(IMAGE_MARKER)
    assert len({r["conversations"][0]["value"].split("A photo")[0] for r in records}) > 2  # several phrasings
    assert os.listdir(out.parent) == ["gen.json"]  # no temporary file left behind

    again = tmp_path / "again.jsonl"
    assert caption_records_to_generation(src, str(again), seed=3) == n
    assert [json.loads(line) for line in again.read_text().splitlines()] == records  # deterministic; JSONL out
    other = tmp_path / "other.json"
    caption_records_to_generation(src, str(other), seed=4)
    assert json.loads(other.read_text()) != records
    everything = tmp_path / "all.json"
    assert caption_records_to_generation(src, str(everything), exclude_image_prefixes=()) == 40

    # The output is a valid generation file for the source.
    for r in records:
        _png(tmp_path / "images", r["image"])
    gen = LlavaJsonSource(str(out), str(tmp_path / "images"))
    assert set(gen.tasks("train")) == {"generation"}


def test_caption_to_generation_is_atomic(tmp_path, monkeypatch):
    src = _write(tmp_path / "cap.json", _captions(8))
    out = tmp_path / "gen.json"
    out.write_text("previous")
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(DataValidationError, match="malformed JSON"):
        caption_records_to_generation(str(bad), str(out))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(OSError, match="disk full"):
        caption_records_to_generation(src, str(out))
    assert out.read_text() == "previous"
    assert sorted(os.listdir(tmp_path)) == ["bad.json", "cap.json", "gen.json"]


def test_problems_are_listed_in_record_order(tmp_path, imgs):
    records = [{"image": "nope.png", "conversations": _turns(("human", "<image>"), ("gpt", "a"))},
               {"conversations": []}]
    path = _write(tmp_path / "d.json", records)
    with pytest.raises(DataValidationError) as info:
        LlavaJsonSource(path, str(imgs)).validate()
    assert [m.split(":")[0] for _, m in info.value.problems] == ["record 0", "record 1"]
