"""The LlamaGen-family VQ image tokenizer as plain modules.

Parameter names and shapes follow the released LlamaGen checkpoints (`vq_ds16_c2i.pt`), so their
state dict loads with strict=True. The blocks are the usual VQGAN ones: GroupNorm(eps 1e-6) + SiLU
residual blocks, single-head spatial self-attention at the lowest resolution, stride-2 convs down,
nearest-neighbour x2 + conv up, and an l2-normalised codebook looked up by squared distance.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# LlamaGen keeps a rolling record of this many recent code indices (a buffer in its checkpoints).
USAGE_WINDOW = 65536


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """The tokenizer's normalisation layer (eps 1e-6 as in the released models)."""
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """Pre-activation residual block: (norm, SiLU, conv3x3) x 2, 1x1 conv on the skip when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in, H, W] -> [B, out, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with 1x1-conv projections and a residual."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(ch, groups)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> same shape."""
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        # [B, C, H, W] -> [B, 1 head, HW, C]
        q, k, v = (proj(h).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, hgt, wid)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv after padding right/bottom by one (asymmetric, as trained)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> [B, C, H/2, W/2]."""
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour repeat, then a 3x3 conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> [B, C, 2H, 2W]."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: residual blocks (+ attention after each at the lowest level), then resampling."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int, attn: bool, resample: type[nn.Module] | None,
                 groups: int, dropout: float) -> None:
        super().__init__()
        self.res = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, groups, dropout) for i in range(blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(out_ch, groups) for _ in range(blocks)) if attn else nn.ModuleList()
        if resample is Downsample:
            self.downsample = Downsample(out_ch)
        elif resample is Upsample:
            self.upsample = Upsample(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the blocks, interleaving attention, then down/upsample if this level has one."""
        for i, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


def middle(ch: int, groups: int, dropout: float) -> nn.ModuleList:
    """The bottleneck: residual block, attention, residual block."""
    return nn.ModuleList([ResBlock(ch, ch, groups, dropout), AttnBlock(ch, groups), ResBlock(ch, ch, groups, dropout)])


class Encoder(nn.Module):
    """Pixels [B, 3, H, W] -> latent [B, z, H/f, W/f] with f = 2 ** (len(ch_mult) - 1)."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int, groups: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        widths = [ch * m for m in ch_mult]
        last = len(widths) - 1
        self.conv_blocks = nn.ModuleList(
            Level(ch * ([1, *ch_mult][i]), w, num_res_blocks, attn=i == last,
                  resample=None if i == last else Downsample, groups=groups, dropout=dropout)
            for i, w in enumerate(widths)
        )
        self.mid = middle(widths[-1], groups, dropout)
        self.norm_out = group_norm(widths[-1], groups)
        self.conv_out = nn.Conv2d(widths[-1], z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode pixels to the pre-quantisation latent."""
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent [B, z, h, w] -> pixels [B, 3, h*f, w*f]; levels run from the widest (lowest resolution) up."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int, groups: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(z_channels, widths[-1], 3, padding=1)
        self.mid = middle(widths[-1], groups, dropout)
        levels, in_ch = [], widths[-1]
        for i in reversed(range(len(widths))):
            levels.append(Level(in_ch, widths[i], num_res_blocks + 1, attn=i == len(widths) - 1,
                                resample=None if i == 0 else Upsample, groups=groups, dropout=dropout))
            in_ch = widths[i]
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out = group_norm(widths[0], groups)
        self.conv_out = nn.Conv2d(widths[0], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode a post-quant latent to pixels in [-1, 1] (not clamped)."""
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Quantizer(nn.Module):
    """l2-normalised codebook: nearest code by squared distance, straight-through gradients."""

    def __init__(self, codebook_size: int, codebook_dim: int, beta: float = 0.25, entropy_weight: float = 0.0,
                 entropy_temperature: float = 0.01) -> None:
        super().__init__()
        self.codebook_size, self.codebook_dim = codebook_size, codebook_dim
        self.beta, self.entropy_weight, self.entropy_temperature = beta, entropy_weight, entropy_temperature
        self.embedding = nn.Embedding(codebook_size, codebook_dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
            self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        # Kept for checkpoint compatibility and as a usage monitor: the most recent code indices seen in training.
        self.register_buffer("codebook_used", torch.zeros(USAGE_WINDOW))

    def codebook(self) -> torch.Tensor:
        """The unit-norm code vectors [K, D]."""
        return F.normalize(self.embedding.weight, p=2, dim=-1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [...] -> unit-norm code vectors [..., D]."""
        return F.embedding(codes, self.codebook())

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Unit-norm latents [M, D] -> squared distances to every code [M, K]."""
        e = self.codebook()
        return z.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2.0 * (z @ e.t())

    def nearest(self, z: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Unit-norm latents [M, D] -> codes [M]; rows go in chunks so [M, K] never sits in memory at once."""
        with torch.no_grad():
            return torch.cat([self.distances(part).argmin(dim=1) for part in z.split(chunk)])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Latent [B, D, h, w] -> (quantized [B, D, h, w] with straight-through grads, codes [B, h*w], losses)."""
        b, d, hgt, wid = z.shape
        flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, d), p=2, dim=-1)
        codes = self.nearest(flat)
        zq = self.lookup(codes)
        losses: dict[str, torch.Tensor] = {}
        if self.training or torch.is_grad_enabled():
            losses["codebook"] = F.mse_loss(zq, flat.detach())
            losses["commitment"] = self.beta * F.mse_loss(flat, zq.detach())
            if self.entropy_weight > 0:
                affinity = -self.distances(flat)
                losses["entropy"] = self.entropy_weight * entropy_penalty(affinity, self.entropy_temperature)
        if self.training:
            self._record_usage(codes)
        zq = flat + (zq - flat).detach()
        return zq.reshape(b, hgt, wid, d).permute(0, 3, 1, 2), codes.reshape(b, hgt * wid), losses

    @torch.no_grad()
    def _record_usage(self, codes: torch.Tensor) -> None:
        n = min(codes.numel(), USAGE_WINDOW)
        self.codebook_used.copy_(torch.cat([self.codebook_used[n:], codes[-n:].to(self.codebook_used.dtype)]))

    def usage(self) -> float:
        """Fraction of the codebook among the recently recorded training codes."""
        return torch.unique(self.codebook_used).numel() / self.codebook_size


def entropy_penalty(affinity: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample entropy minus batch-average entropy of the soft code assignment (low = confident, diverse)."""
    logits = affinity / temperature
    probs, log_probs = logits.softmax(-1), logits.log_softmax(-1)
    per_sample = -(probs * log_probs).sum(-1).mean()
    mean_probs = probs.mean(0)
    batch = -(mean_probs * torch.log(mean_probs + 1e-5)).sum()
    return per_sample - batch


class VQModel(nn.Module):
    """Encoder -> 1x1 conv to code space -> quantizer; 1x1 conv back -> decoder. Names match LlamaGen's."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int,
                 codebook_size: int, codebook_dim: int, groups: int = 32, dropout: float = 0.0,
                 beta: float = 0.25, entropy_weight: float = 0.0) -> None:
        super().__init__()
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, z_channels, groups, dropout)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, z_channels, groups, dropout)
        self.quantize = Quantizer(codebook_size, codebook_dim, beta, entropy_weight)
        self.quant_conv = nn.Conv2d(z_channels, codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(codebook_dim, z_channels, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Pixels -> (quantized latent [B, D, h, w], codes [B, h*w], quantizer losses)."""
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """Quantized latent [B, D, h, w] -> pixels [B, 3, H, W]."""
        return self.decoder(self.post_quant_conv(quant))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Pixels -> (reconstruction, quantizer losses)."""
        quant, _, losses = self.encode(x)
        return self.decode(quant), losses
