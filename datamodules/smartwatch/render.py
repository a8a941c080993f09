"""Drawing a watch with PIL, natively at any size (no resize, no asset files).

The layout is the study's (disc of radius 0.4 x side, three white hands, weather icon and battery in two
corners). Corner items scale with the side but keep a minimum pixel size so that 64 px images stay
readable: the corners outside the disc are small, so the battery text runs along the image edge with the
bar just inside it.
"""
from __future__ import annotations

import math
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from .spec import WEATHERS, WatchSpec

WHITE = (255, 255, 255)
INK = (20, 20, 20)
GREEN = (40, 170, 60)
SUN = (255, 185, 0)
CLOUD = (165, 170, 180)
RAIN_CLOUD = (85, 95, 115)
DROP = (30, 110, 235)


@lru_cache(maxsize=None)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)


@lru_cache(maxsize=None)
def _layout(size: int) -> dict[str, int]:
    """Pixel sizes of the corner items at `size` (cached: pure function of the side)."""
    return {
        "margin": max(1, round(0.02 * size)),
        "font": max(8, round(0.058 * size)),
        "icon": max(12, round(0.134 * size)),
        "bar_w": max(14, round(0.15 * size)),
        "bar_h": max(5, round(0.055 * size)),
        "line": max(1, round(size / 112)),
        "gap": max(1, round(0.01 * size)),
    }


def _corner_origin(corner: str, w: int, h: int, size: int, margin: int) -> tuple[int, int]:
    """Top-left pixel of a w x h box pushed into `corner`."""
    x = margin if corner.endswith("left") else size - margin - w
    y = margin if corner.startswith("top") else size - margin - h
    return x, y


def _sun(draw: ImageDraw.ImageDraw, x: int, y: int, s: int) -> None:
    cx, cy = x + s / 2, y + s / 2
    core = s * 0.26
    ray_w = max(1, round(s / 14))
    for k in range(8):
        a = k * math.pi / 4
        draw.line(
            [(cx + core * 1.25 * math.cos(a), cy + core * 1.25 * math.sin(a)),
             (cx + s * 0.49 * math.cos(a), cy + s * 0.49 * math.sin(a))],
            fill=SUN, width=ray_w,
        )
    draw.ellipse([cx - core, cy - core, cx + core, cy + core], fill=SUN)


def _cloud(draw: ImageDraw.ImageDraw, x: float, y: float, w: float, h: float, colour) -> None:
    # Two puffs over a flat rounded base: reads as a cloud even at 12 px.
    draw.ellipse([x + 0.12 * w, y + 0.15 * h, x + 0.58 * w, y + 0.85 * h], fill=colour)
    draw.ellipse([x + 0.40 * w, y, x + 0.90 * w, y + 0.80 * h], fill=colour)
    draw.rounded_rectangle([x, y + 0.45 * h, x + w, y + h], radius=max(1, 0.25 * h), fill=colour)


@lru_cache(maxsize=None)
def _weather_tile(weather: str, s: int) -> Image.Image:
    """The weather icon on a transparent s x s tile (cached: three icons per size)."""
    tile = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    _draw_weather(ImageDraw.Draw(tile), weather, 0, 0, s)
    return tile


@lru_cache(maxsize=4096)
def _text_mask(text: str, px: int) -> Image.Image:
    """Coverage mask of `text` in the default font at `px` (cached: rasterising is most of the cost)."""
    font = _font(px)
    left, top, right, bottom = font.getbbox(text, anchor="lt")
    mask = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=font, anchor="lt")
    return mask


def _draw_weather(draw: ImageDraw.ImageDraw, weather: str, x: int, y: int, s: int) -> None:
    if weather == "sunny":
        _sun(draw, x, y, s)
    elif weather == "cloudy":
        _cloud(draw, x, y + 0.18 * s, s, 0.62 * s, CLOUD)
    elif weather == "raining":
        _cloud(draw, x, y, s, 0.55 * s, RAIN_CLOUD)
        drop_w = max(1, round(s / 10))
        for fx in (0.22, 0.5, 0.78):
            draw.line([(x + fx * s, y + 0.62 * s), (x + (fx - 0.08) * s, y + 0.98 * s)], fill=DROP, width=drop_w)
    else:
        raise ValueError(f"render: unknown weather {weather!r}")


def _battery(img: Image.Image, draw: ImageDraw.ImageDraw, level: int, corner: str, size: int,
             lay: dict[str, int]) -> None:
    mask = _text_mask(f"{level}%", lay["font"])
    text_w, text_h = mask.size
    bar_w, bar_h, nub = lay["bar_w"], lay["bar_h"], max(1, lay["bar_w"] // 12)
    block_w = max(text_w, bar_w + nub)
    block_h = text_h + lay["gap"] + bar_h
    x, y = _corner_origin(corner, block_w, block_h, size, lay["margin"])
    # Text on the outer edge (the only free room at 64 px), bar on the disc side.
    top_corner = corner.startswith("top")
    text_y = y if top_corner else y + bar_h + lay["gap"]
    bar_y = y + text_h + lay["gap"] if top_corner else y
    text_x = x if corner.endswith("left") else x + block_w - text_w
    bar_x = x if corner.endswith("left") else x + block_w - bar_w - nub
    img.paste(INK, (text_x, text_y, text_x + text_w, text_y + text_h), mask)
    line = lay["line"]
    draw.rectangle([bar_x, bar_y, bar_x + bar_w - 1, bar_y + bar_h - 1], outline=INK, width=line)
    nub_top = bar_y + bar_h // 4
    draw.rectangle([bar_x + bar_w, nub_top, bar_x + bar_w + nub - 1, bar_y + bar_h - 1 - bar_h // 4], fill=INK)
    inner = bar_w - 2 * line
    fill_w = round(inner * level / 100)
    if fill_w > 0:
        draw.rectangle([bar_x + line, bar_y + line, bar_x + line + fill_w - 1, bar_y + bar_h - 1 - line], fill=GREEN)


def _hands(draw: ImageDraw.ImageDraw, spec: WatchSpec, size: int) -> None:
    c = size / 2
    r = 0.4 * size
    scale = size / 224
    hour_angle = (spec.hour % 12 + spec.minute / 60) * 30
    for angle, length, width in (
        (hour_angle, 0.5 * r, 6),
        (spec.minute * 6, 0.7 * r, 4),
        (spec.second * 6, 0.9 * r, 2),
    ):
        a = math.radians(angle)  # clockwise from 12 o'clock
        end = (c + length * math.sin(a), c - length * math.cos(a))
        draw.line([(c, c), end], fill=WHITE, width=max(1, round(width * scale)))
    cap = max(1, 3 * scale)
    draw.ellipse([c - cap, c - cap, c + cap, c + cap], fill=WHITE)


def _battery_box(spec: WatchSpec, size: int, lay: dict[str, int]) -> tuple[int, int, int, int]:
    """The (x0, y0, x1, y1) pixel box of the battery block (text and bar) as `_battery` places it."""
    text_w, text_h = _text_mask(f"{spec.battery}%", lay["font"]).size
    block_w = max(text_w, lay["bar_w"] + max(1, lay["bar_w"] // 12))
    block_h = text_h + lay["gap"] + lay["bar_h"]
    x, y = _corner_origin(spec.battery_pos, block_w, block_h, size, lay["margin"])
    return x, y, x + block_w, y + block_h


def part_boxes(spec: WatchSpec, size: int = 224) -> dict[str, tuple[int, int, int, int]]:
    """Where `render_watch` draws each part: {"weather", "battery", "dial"} -> (x0, y0, x1, y1), x1/y1 exclusive."""
    lay = _layout(size)
    icon = lay["icon"]
    x, y = _corner_origin(spec.weather_pos, icon, icon, size, lay["margin"])
    c, r = size / 2, 0.4 * size
    dial = (math.floor(c - r), math.floor(c - r), math.ceil(c + r) + 1, math.ceil(c + r) + 1)
    return {"weather": (x, y, x + icon, y + icon), "battery": _battery_box(spec, size, lay), "dial": dial}


def render_watch(spec: WatchSpec, size: int = 224) -> Image.Image:
    """Draw `spec` as a `size` x `size` RGB image (byte-identical for the same spec and size)."""
    if size < 32:
        raise ValueError(f"render_watch: size {size} too small (need >= 32 px to stay legible)")
    img = Image.new("RGB", (size, size), WHITE)
    draw = ImageDraw.Draw(img)
    c, r = size / 2, 0.4 * size
    draw.ellipse([c - r, c - r, c + r, c + r], fill=tuple(spec.face_color))
    _hands(draw, spec, size)
    lay = _layout(size)
    icon = lay["icon"]
    x, y = _corner_origin(spec.weather_pos, icon, icon, size, lay["margin"])
    if spec.weather not in WEATHERS:
        raise ValueError(f"render_watch: unknown weather {spec.weather!r}")
    tile = _weather_tile(spec.weather, icon)
    img.paste(tile, (x, y), tile)
    _battery(img, draw, spec.battery, spec.battery_pos, size, lay)
    return img
