"""The data <-> model contract: one conversation with at most a few images."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

TASKS = ("vqa", "caption", "generation", "text")
ROLES = ("user", "assistant")
IMAGE_MARKER = "<image>"  # in a user turn: read this image; in an assistant turn: write it


@dataclass
class Sample:
    """One training or evaluation conversation.

    `turns` alternate user/assistant as ``{"role": ..., "content": ...}`` dicts. Each ``<image>`` in a
    user turn is an image the model reads; each ``<image>`` in an assistant turn is one it writes.
    `images` holds the PIL images in the order their markers appear across all turns.
    `image_keys` are stable identifiers of those images (for caches of pre-encoded codes).
    `attrs` carries ground truth for evaluation (e.g. the watch attributes); models never read it.
    `emphasis`, aligned with `images` (or empty: none): for an image the model writes, an [H, W] array of
    pixel weights (>= 0; None = uniform). The model weighs each written token's loss by the mean weight of
    its patch, so a source can point the generation loss at small parts that carry a stated attribute.
    """

    task: str
    turns: list[dict[str, str]]
    images: list[Image.Image] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    image_keys: list[str] = field(default_factory=list)
    emphasis: list[Any] = field(default_factory=list)

    @property
    def image(self) -> Image.Image | None:
        """The first image, or None (most samples have exactly one)."""
        return self.images[0] if self.images else None

    def validate(self, where: str = "sample") -> None:
        """Raise ValueError naming `where` if the sample breaks the contract."""
        if self.task not in TASKS:
            raise ValueError(f"{where}: unknown task {self.task!r}; expected one of {TASKS}")
        if not self.turns:
            raise ValueError(f"{where}: no turns")
        markers = 0
        for i, turn in enumerate(self.turns):
            role = turn.get("role")
            if role not in ROLES:
                raise ValueError(f"{where}: turn {i} has unknown role {role!r}; expected one of {ROLES}")
            expected = ROLES[i % 2]
            if role != expected:
                raise ValueError(f"{where}: turn {i} is {role!r} but turns must alternate user/assistant")
            markers += turn["content"].count(IMAGE_MARKER)
        if markers != len(self.images):
            raise ValueError(f"{where}: {markers} {IMAGE_MARKER} markers but {len(self.images)} images")
        if self.emphasis and len(self.emphasis) != len(self.images):
            raise ValueError(f"{where}: {len(self.emphasis)} emphasis maps for {len(self.images)} images")
        written = sum(t["content"].count(IMAGE_MARKER) for t in self.turns if t["role"] == "assistant")
        if self.task == "generation" and written == 0:
            raise ValueError(f"{where}: generation sample without {IMAGE_MARKER} in an assistant turn")
        if self.task in ("vqa", "caption") and written:
            raise ValueError(f"{where}: {self.task} sample has {IMAGE_MARKER} in an assistant turn")
