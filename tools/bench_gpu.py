"""`unizoo bench --gpu`: bf16 training steps and image generation of the paper-shaped model on one GPU.

Random weights, real shapes: a Vicuna-7B-shaped Llama with LoRA r128 on every linear layer, a
SigLIP-B/16-224-shaped read space (196 tokens) and a LlamaGen VQ-16-shaped write space (256 codes of
16384), i.e. the paper's SigLIP-VQ model. Reported: training tokens/s, model FLOPs utilisation (FLOPs
counted by torch's FlopCounterMode on one step, divided by step time and the card's dense bf16 peak),
and the latency of writing one 256-token image against the memory-bandwidth bound (every weight read
once per token). `shapes="tiny"` runs the same code at toy sizes, on CPU when there is no GPU.
"""
from __future__ import annotations

import time
from typing import Any

import torch

TOKENIZER = "zoo/assets/tokenizers/smartwatch"
SHAPES: dict[str, dict[str, Any]] = {
    "full": {
        "lm": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32000,
               "max_position_embeddings": 4096, "tie_word_embeddings": False},
        "lora_r": 128, "lora_alpha": 256,
        "vit": {"image_size": 224, "patch_size": 16, "hidden_size": 768, "num_hidden_layers": 12,
                "num_attention_heads": 12, "intermediate_size": 3072},
        "vq": {"variant": "VQ-16", "codebook_size": 16384, "codebook_dim": 8, "image_size": 256},
        "image_px": 256, "batch_size": 8, "steps": 10, "warmup": 3,
    },
    "tiny": {
        "lm": {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 512,
               "tie_word_embeddings": False},
        "lora_r": 4, "lora_alpha": 8,
        "vit": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 1, "intermediate_size": 64},
        "vq": {"variant": "tiny", "image_size": 32, "channels": 8, "channel_mult": [1, 2, 2, 2], "codebook_size": 64},
        "image_px": 32, "batch_size": 4, "steps": 2, "warmup": 1,
    },
}
# Dense bf16 tensor-core peak (no sparsity) and HBM bandwidth of the cards this check is meant for.
CARDS = {"H200": (989e12, 4.8e12), "H100 PCIe": (756e12, 2.0e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12)}
TARGET_MFU = 0.40


def card_peaks(name: str) -> tuple[float | None, float | None]:
    """(bf16 FLOP/s, memory bytes/s) of a device name such as 'NVIDIA H100 80GB HBM3'; (None, None) if unknown."""
    for key, peaks in CARDS.items():  # "H100 PCIe" is listed before the SXM default
        if all(part in name for part in key.split()):
            return peaks
    return None, None


def build_paper_shaped(shapes: str = "full", device: str | torch.device = "cpu"):
    """The SigLIP-VQ UnifiedVLM at `shapes`, random weights; the LM is created directly on `device` in bf16."""
    from zoo.model.backbone import LanguageBackbone
    from zoo.model.variants import SeparateSpacesVLM
    from zoo.spaces.hf import HFVisionSpace
    from zoo.spaces.vq import VQTokenizer

    if shapes not in SHAPES:
        raise ValueError(f"gpu_shapes must be one of {sorted(SHAPES)}, got {shapes!r}")
    s = SHAPES[shapes]
    with torch.device(device):  # 13 GB of 7B weights never pass through host memory
        backbone = LanguageBackbone(config=dict(s["lm"]), tokenizer=TOKENIZER, train_mode="lora", lora_r=s["lora_r"],
                                    lora_alpha=s["lora_alpha"], lora_dropout=0.05, dtype="bfloat16")
    vit = HFVisionSpace(model_class="transformers.SiglipVisionModel", config=dict(s["vit"]), layer=-2)
    vq = VQTokenizer(**s["vq"])
    model = SeparateSpacesVLM(backbone=backbone, read_space=vit, write_space=vq, read_projector="mlp",
                              write_projector="linear", alpha=0.2, lr=2e-4, projector_lr=1e-4, weight_decay=0.0,
                              warmup_ratio=0.03)
    return model.to(device)


def _batches(model, shapes: str, count: int, device: torch.device) -> list[dict[str, Any]]:
    """`count` collated mixed-task smart-watch batches, on `device` (data cost is left out of the GPU timing)."""
    from datamodules.smartwatch.source import SmartWatchSource

    s = SHAPES[shapes]
    source = SmartWatchSource(train=s["batch_size"] * count, val=0, test=0, size=s["image_px"], seed=0)
    out = []
    for b in range(count):
        samples = [source.sample("train", b * s["batch_size"] + i) for i in range(s["batch_size"])]
        batch = model.processor(samples)
        out.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    return out


def _loss(model, batch: dict[str, Any]) -> torch.Tensor:
    return model.loss(model(batch))[0]  # text CE + alpha x image loss (UnifiedVLM.loss)


def gpu_bench(shapes: str = "full", device: str | None = None) -> dict[str, Any]:
    """Training tokens/s and MFU (bf16 autocast, AdamW on the LoRA/projector parameters) and generation latency."""
    from torch.utils.flop_counter import FlopCounterMode

    from zoo.model.generate import GenerationConfig, generate
    from zoo.model.unified import trainable_parameter_count

    if shapes not in SHAPES:
        raise ValueError(f"gpu_shapes must be one of {sorted(SHAPES)}, got {shapes!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    peak_flops, bandwidth = card_peaks(name) if cuda else (None, None)
    s = SHAPES[shapes]
    start = time.perf_counter()
    model = build_paper_shaped(shapes, dev)
    build_s = time.perf_counter() - start
    trainable, total = trainable_parameter_count(model)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16)
    batches = _batches(model, shapes, s["steps"] + s["warmup"], dev)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()

    def step(batch: dict[str, Any]) -> None:
        with autocast:
            loss = _loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:  # one step's executed FLOPs (forward + backward)
        with autocast:
            _loss(model, batches[0]).backward()
    optimizer.zero_grad(set_to_none=True)
    step_flops = counter.get_total_flops()
    for batch in batches[: s["warmup"]]:
        step(batch)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    times, tokens = [], []
    for batch in batches[s["warmup"]:]:
        t0 = time.perf_counter()
        step(batch)
        sync()
        times.append(time.perf_counter() - t0)
        tokens.append(int(batch["attention_mask"].sum()))
    step_s = sorted(times)[len(times) // 2]
    # The FLOP count is of batch 0; scale it to the timed batches by their token counts.
    flops_per_token = step_flops / int(batches[0]["attention_mask"].sum())
    achieved = flops_per_token * sum(tokens) / sum(times)

    model.eval()
    weight_bytes = sum(p.numel() * p.element_size() for m in (model.backbone, model.head, model.write_projector)
                       for p in m.parameters())
    prompts = _image_prompt(model, dev)
    n_image = model.write_space.num_tokens
    cfg = GenerationConfig(max_new_tokens=0, max_images=1, use_cache=True)
    with autocast:
        generate(model, prompts, cfg, start_in_image=True)  # warm-up (kernels, allocator)
        sync()
        t0 = time.perf_counter()
        result = generate(model, prompts, cfg, start_in_image=True)
        sync()
    gen_s = time.perf_counter() - t0
    bound_s = n_image * weight_bytes / bandwidth if bandwidth else None
    return {
        "device": name, "shapes": shapes, "build_s": build_s, "parameters": total, "trainable": trainable,
        "batch_size": s["batch_size"], "tokens_per_step": sum(tokens) / len(tokens), "step_ms": 1e3 * step_s,
        "tokens_per_s": sum(tokens) / sum(times), "samples_per_s": s["batch_size"] * len(times) / sum(times),
        "flops_per_token": flops_per_token, "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak_flops / 1e12 if peak_flops else None, "mfu": achieved / peak_flops if peak_flops else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None,
        "image_tokens": n_image, "generated_tokens": int(result.images[0][0].shape[0]) if result.images[0] else 0,
        "generate_s": gen_s, "ms_per_image_token": 1e3 * gen_s / n_image, "weight_gb": weight_bytes / 2**30,
        "bandwidth_bound_s": bound_s, "bound_ratio": gen_s / bound_s if bound_s else None,
    }


def _image_prompt(model, device: torch.device) -> dict[str, Any]:
    """One generation prompt ending in `<boi>` (batch 1: the latency case)."""
    from tools.bench import _image_prompts

    batch = _image_prompts(model, 1)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def gpu_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPU check's target (MFU >= 40 %) and the generation latency / bandwidth bound (reported, no goal)."""
    mfu = result.get("mfu")
    rows = [{"name": "model FLOPs utilisation", "value": mfu, "target": TARGET_MFU, "higher_is_better": True,
             "ok": None if mfu is None else mfu >= TARGET_MFU, "how": "counted FLOPs / step time / bf16 peak"}]
    ratio = result.get("bound_ratio")
    rows.append({"name": f"generation latency / bandwidth bound ({result['image_tokens']} tokens)", "value": ratio,
                 "target": None, "higher_is_better": False, "ok": None, "how": "measured s / (tokens x weight bytes / HBM B/s)"})
    return rows


def render_gpu(result: dict[str, Any], console: Any) -> None:
    """Print the GPU check as a two-column rich table."""
    from rich.table import Table

    table = Table(title=f"GPU check ({result['shapes']} shapes on {result['device']}, bf16 autocast, LoRA)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if key in ("shapes", "device"):
            continue
        text = "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
        table.add_row(key, text)
    console.print(table)
