"""Rebuild the shipped word-level tokenizer of the tiny recipes from the smart-watch task texts.

Run: `python -m tools.build_tokenizer` (writes zoo/assets/tokenizers/smartwatch). Deterministic.
"""
from __future__ import annotations

from pathlib import Path

from datamodules.smartwatch.tasks import corpus
from zoo.model.tokenizer import train_word_level_tokenizer

OUT = Path(__file__).resolve().parent.parent / "zoo" / "assets" / "tokenizers" / "smartwatch"


def build(out: str | Path = OUT, n: int = 20000, seed: int = 0) -> Path:
    """Train the WordLevel tokenizer on `n` smart-watch texts (no system line: tiny models pay per token)."""
    train_word_level_tokenizer(corpus(n, seed), out_dir=str(out), system_prompt="")
    return Path(out)


if __name__ == "__main__":
    print(build())
