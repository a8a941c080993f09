"""`unizoo data ...`: export data sets to the study's on-disk layout."""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

GPT_ROLE = {"user": "human", "assistant": "gpt"}


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; data files should be readable like any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)  # fixed settings: identical bytes
    return buffer.getvalue()


def smartwatch(out: str, images: int, split: str = "train", seed: int = 0, size: int = 224) -> None:
    """Write synthetic smart-watch data in the study's layout (3 samples per image).

    Writes OUT/SPLIT.json, one JSON list of {"task", "image", "conversations": [{"from": "human"|"gpt",
    "value"}]} records (generation, vqa, caption for each image; "<image>\\n" opens the first human turn of
    understanding samples, "<image>" ends the gpt turn of generation samples), and the PNGs under
    OUT/images/ named SPLIT-NNNNNN.png ("image" is relative to that folder). The same arguments always
    give byte-identical files.

    Args:
        out: output folder (created if missing).
        images: number of watch images to draw (the study used 60000 for train, 200 for test).
        split: train, val or test; watches of different splits never coincide.
        seed: data seed; the same (seed, split, index) always gives the same watch.
        size: image side in pixels (the study used 224).
    """
    from rich.progress import Progress

    from datamodules.smartwatch.render import render_watch
    from datamodules.smartwatch.spec import SPLIT_CODES, sample_watch
    from datamodules.smartwatch.tasks import TASK_CODES, conversation

    if split not in SPLIT_CODES:
        raise ValueError(f"smartwatch: unknown split {split!r}; expected one of {tuple(SPLIT_CODES)}")
    if images < 0:
        raise ValueError(f"smartwatch: images must be >= 0, got {images}")
    if size < 32:
        raise ValueError(f"smartwatch: size must be >= 32 px, got {size}")
    folder = Path(out)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    with Progress(transient=True) as progress:
        job = progress.add_task(f"drawing {images} {split} watches", total=images)
        for index in range(images):
            spec = sample_watch(seed, split, index)
            name = f"{split}-{index:06d}.png"
            _write_atomic(folder / "images" / name, _png_bytes(render_watch(spec, size)))
            for task in TASK_CODES:  # generation, vqa, caption
                turns, _ = conversation(spec, seed, split, index, task)
                conversations = [{"from": GPT_ROLE[t["role"]], "value": t["content"]} for t in turns]
                records.append({"task": task, "image": name, "conversations": conversations})
            progress.advance(job)
    text = json.dumps(records, sort_keys=True, ensure_ascii=False, indent=1) + "\n"
    _write_atomic(folder / f"{split}.json", text.encode("utf-8"))
    print(f"wrote {len(records)} samples on {images} images to {folder / f'{split}.json'}")


def caption_to_generation(input: str, output: str, seed: int = 0) -> None:
    """Turn a LLaVA-format caption file into text-to-image ("generate an image of ...") records.

    Args:
        input: LLaVA-format JSON list of caption conversations (e.g. ShareGPT4V).
        output: where to write the generation records (JSON list, same layout).
        seed: seed for the choice of request phrasings.
    """
    from datamodules.llava import caption_records_to_generation

    count = caption_records_to_generation(input, output, seed=seed)
    print(f"wrote {count} generation records to {output}")
