"""`unizoo generate`: ask a trained model one question, or for one image, from the command line."""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoo.model.unified import UnifiedVLM


def find_checkpoint(ckpt: str | os.PathLike) -> Path:
    """The checkpoint file of `ckpt`: the file itself, or a run directory's newest `last.ckpt` (else newest .ckpt)."""
    path = Path(ckpt)
    if path.is_file():
        return path
    if not path.exists():
        raise ValueError(f"checkpoint {path}: no such file or run directory")
    direct = path / "checkpoints" / "last.ckpt"
    if direct.is_file():
        return direct
    found = sorted(path.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ValueError(f"run directory {path} holds no .ckpt file (expected {direct})")
    last = [p for p in found if p.name == "last.ckpt"]
    return (last or found)[-1]


ZOO_PREFIX = "zoo:"


def load_model(ckpt: str | os.PathLike, device: str | None = None) -> UnifiedVLM:
    """A trained UnifiedVLM (its exact subclass) from a run directory, a .ckpt, or "zoo:NAME", in eval mode."""
    import torch

    import zoo.model.variants  # noqa: F401  (Lightning only rebuilds classes that are already imported)
    from zoo.model.unified import UnifiedVLM

    if str(ckpt).startswith(ZOO_PREFIX):
        from zoo.catalog.registry import create_model

        # The zoo's own loader: sha256-checked safetensors (bundled or from the hub), nothing unpickled.
        model = create_model(str(ckpt)[len(ZOO_PREFIX):], pretrained=True)
    else:
        path = find_checkpoint(ckpt)
        try:
            # Tensors and plain containers only, as `unizoo test --ckpt_path` loads them.
            model = UnifiedVLM.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(f"{path}: refused: holds pickled objects beyond tensors and plain containers "
                             f"(only weights_only=True loading is allowed) ({str(err).splitlines()[0]})") from err
        except (KeyError, EOFError, RuntimeError) as err:
            raise ValueError(f"{path}: not a unizoo model checkpoint ({err})") from err
    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(target).eval()


def _read_image(image: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"image {image}: no such file") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"image {image}: cannot be read as an image ({err})") from err


def build_request(prompt: str, image: str | None, model: UnifiedVLM):
    """The one-turn Sample asking `prompt`, reading `image` (a path) when given."""
    from zoo.sample import IMAGE_MARKER, Sample

    if not prompt.strip():
        raise ValueError("prompt is empty")
    markers = prompt.count(IMAGE_MARKER)
    if image is None:
        if markers:
            raise ValueError(f"the prompt holds {IMAGE_MARKER} but no --image was given")
        return Sample(task="text", turns=[{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}])
    if model.read_space is None:
        raise ValueError("this model reads no images (it has no read space); drop --image")
    if markers > 1:
        raise ValueError(f"the prompt holds {markers} {IMAGE_MARKER} markers for one image")
    content = prompt if markers else f"{IMAGE_MARKER}\n{prompt}"
    return Sample(task="vqa", turns=[{"role": "user", "content": content}, {"role": "assistant", "content": ""}],
                  images=[_read_image(image)])


def _open_image(batch: dict[str, Any], boi: int) -> dict[str, Any]:
    """The prompt with `<boi>` appended, so decoding starts inside an image."""
    import torch

    ids, mask = batch["input_ids"], batch["attention_mask"]
    column = torch.full((ids.shape[0], 1), boi, dtype=ids.dtype)
    return {**batch, "input_ids": torch.cat([ids, column], 1), "attention_mask": torch.cat([mask, torch.ones_like(column)], 1)}


def save_image_tokens(model: UnifiedVLM, tokens: list, out: str | os.PathLike) -> list[Path]:
    """Write generated images to `out`: decoded PNGs where the space decodes, else `.safetensors` features."""
    from safetensors.torch import save_file

    from zoo.model.generate import decode_images

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    space = model.write_space
    written: list[Path] = []
    pixels = decode_images(model, tokens)
    if pixels is not None:
        for i, picture in enumerate(space.postprocess(pixels.float().cpu())):
            written.append(folder / f"image-{i}.png")
            picture.save(written[-1])
        return written
    for i, value in enumerate(tokens):
        written.append(folder / f"image-{i}.safetensors")
        key = "codes" if space.discrete else "features"
        save_file({key: value.detach().float().cpu().contiguous() if key == "features" else value.cpu().contiguous()},
                  str(written[-1]), metadata={"space": type(space).__name__, "num_tokens": str(space.num_tokens)})
    return written


def generate(
    ckpt: str | None = None,
    prompt: str | None = None,
    image: str | None = None,
    out: str = "generated",
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    draw: bool = False,
) -> None:
    """Answer a prompt with a trained model; save any image it writes.

    The model comes from a run directory (its checkpoints/last.ckpt) or a .ckpt file. The answer is
    printed. An image the model writes goes to OUT: VQ codes are decoded to image-N.png; continuous
    features (e.g. SigLIP) are decoded to image-N.png by the space's pixel decoder where it has one
    (`zoo.spaces.pixel_decoder`), else saved as image-N.safetensors.

    Args:
        ckpt: run directory or Lightning .ckpt file of `unizoo fit`, or a zoo model as "zoo:NAME".
        prompt: the user's message, e.g. "what time is it?" or "draw a watch reading 10:15:00".
        image: an image file the model reads (placed before the prompt unless it holds "<image>").
        out: folder for generated images.
        max_new_tokens: text tokens to generate at most.
        temperature: 0 decodes greedily; above 0 samples text and image tokens.
        seed: random seed of sampling.
        draw: start the answer with an image (as `unizoo test` evaluates generation), for models whose
            text does not open one on its own yet.
    """
    import torch

    from zoo.model.generate import GenerationConfig
    from zoo.model.generate import generate as decode

    # Both have defaults only so that the command line takes them as `--ckpt RUN --prompt TEXT`.
    for name, value in (("ckpt", ckpt), ("prompt", prompt)):
        if not value:
            raise ValueError(f"unizoo generate: --{name} is required (see unizoo generate --help)")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    model = load_model(ckpt)
    if draw and model.write_space is None:
        raise ValueError("--draw: this model writes no images (it has no write space)")
    request = build_request(prompt, image, model)
    torch.manual_seed(seed)
    batch = model.processor.prompt([request])
    if draw:
        batch = _open_image(batch, model.backbone.token_ids["boi"])
    batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    config = GenerationConfig(max_new_tokens=max_new_tokens, max_images=1 if model.write_space is not None else 0,
                              temperature=temperature, image_temperature=temperature, seed=seed)
    result = decode(model, batch, config, start_in_image=draw)
    print(result.texts[0])
    tokens = result.images[0] if result.images else []
    if not tokens:
        return
    written = save_image_tokens(model, tokens, out)
    for path in written:
        if path.suffix == ".png":
            print(f"image written to {path}")
        else:
            print(f"image tokens written to {path} ({type(model.write_space).__name__} features cannot be shown "
                  f"as pixels without a pixel decoder: give the space a `pixel_decoder`, e.g. "
                  f"zoo:siglip-smartwatch-tiny-v2-decoder, to get PNGs)")
