"""Train the smart-watch attribute reader that scores generated images (generation fidelity + reader FID).

Pixel reader (the shipped one):
    python -m tools.train_reader --size 64 --out zoo/assets/readers/reader-64.safetensors
Feature reader for a continuous write space (reads generated features; build the space from a recipe's
model spec, e.g. a checkpoint's `write_space`):
    python -m tools.train_reader --space-config space.yaml --out runs/readers/siglip-64.safetensors
where space.yaml is `{class_path: zoo.spaces..., init_args: {...}}` as in `ImageSpace.spec()`.
Writes the weights (safetensors, config in metadata) and a JSON card with accuracy on fresh test renders.
"""
from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments, train, save, print and return the card."""
    import torch

    from datamodules.smartwatch.reader import train_feature_reader, train_reader

    p = argparse.ArgumentParser(prog="python -m tools.train_reader", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="weights path (.safetensors); the card goes beside it (.json)")
    p.add_argument("--size", type=int, default=None,
                   help="render size in px (pixel reader: its input size, default 64; feature reader: the space's)")
    p.add_argument("--images", type=int, default=76_800, help="distinct training watches (drawn i mod images)")
    p.add_argument("--steps", type=int, default=1_200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=24, help="pixel reader: channels of the first stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-images", type=int, default=1_000, help="fresh test-split renders scored after training")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--space-config", default=None, help="YAML/JSON spec of an ImageSpace: train a FeatureReader on it")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    common = dict(images=args.images, steps=args.steps, seed=args.seed, out=args.out, batch_size=args.batch_size,
                  lr=args.lr, eval_images=args.eval_images)
    if args.space_config:
        import yaml

        from zoo.config import build

        with open(args.space_config) as f:
            space = build(yaml.safe_load(f)).eval()
        _, card = train_feature_reader(space, size=args.size, **common)
    else:
        _, card = train_reader(size=args.size or 64, width=args.width, **common)
    card["protocol"]["command"] = "python -m tools.train_reader " + " ".join(argv if argv is not None else _argv())
    from datamodules.smartwatch.reader import load_reader, save_reader

    reader, _ = load_reader(args.out)
    save_reader(reader, args.out, card)  # re-written so the card records the command
    print(json.dumps(card, indent=2, sort_keys=True))
    return card


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()
