"""Sampling a smart watch: its attributes, their distributions, and the attribute bias of transfer studies.

Distributions follow the study: hour uniform in 0..12 (13 values: 0 and 12 draw the same hands but are
different labels, kept on purpose), minute and second uniform in 0..59, battery uniform in 0..100, weather
uniform over sunny/cloudy/raining, the weather and battery corners an ordered pair of distinct corners,
face colour uniform RGB.

Determinism: a watch depends only on ``(seed, split, index)`` through a numpy Generator seeded from that
tuple of ints, so any process draws the same watch.

Disjoint splits, by construction: every possible watch *identity* (hour mod 12, minute, second, battery,
weather, both corners -- everything that can be asked about; the face colour is left out, so a test watch is
never a recolouring of a training watch either) is assigned to exactly one split by a stable hash (80 %
train, 10 % val, 10 % test). A draw whose identity belongs to another split is redrawn from the same
stream, so two splits can never share a watch.

Knowledge transfer (the study did not release its recipe; this is the project's design). A `Bias` names
one attribute (``weather``, ``battery``, or a corner: ``weather_pos``, ``battery_pos``) and a mode:

* ``hidden``: understanding data (vqa questions and captions) never asks about or states the attribute's
  value. Hiding weather or battery keeps their *position* questions: they say where the icon is, not
  what it shows. Hiding a corner keeps the questions about what the icon shows.
* ``only_value``: the attribute is asked about / stated only on watches where it has the given value
  (weather: one name, default ``sunny``; battery: an inclusive range ``"LO-HI"``, default ``"0-49"``;
  a corner: one corner name, default ``top-left``);
  on every other watch the understanding data is silent about it.

Generation prompts are never biased: when a bias is active, every generation description states the biased
attribute (its clause is always included instead of with p = 0.5), so the knowledge is available only
through generation data. A "what" (or "where") question that would ask about a hidden attribute asks
uniformly about one of the remaining "what" (or "where") attributes instead. Sources apply the bias to training data only by default, so
validation and test questions measure the transfer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WEATHERS = ("sunny", "cloudy", "raining")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
# What a Bias may hide: the attributes with a clause of their own that are not the time (every description
# states the time, so hiding it would leave captions without a clause).
BIAS_ATTRIBUTES = ("weather", "battery", "weather_pos", "battery_pos")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
HOURS = 13  # 0..12 inclusive, as in the study
_SPLIT_RANGES = {"train": (0, 800), "val": (800, 900), "test": (900, 1000)}  # per-mille buckets
_MAX_DRAWS = 10_240
_BATCH = 32


@dataclass(frozen=True)
class WatchSpec:
    """Everything drawn on one watch."""

    hour: int
    minute: int
    second: int
    battery: int
    weather: str
    weather_pos: str
    battery_pos: str
    face_color: tuple[int, int, int]

    def __post_init__(self) -> None:
        checks = (
            (0 <= self.hour <= 12, "hour must be in 0..12"),
            (0 <= self.minute <= 59, "minute must be in 0..59"),
            (0 <= self.second <= 59, "second must be in 0..59"),
            (0 <= self.battery <= 100, "battery must be in 0..100"),
            (self.weather in WEATHERS, f"weather must be one of {WEATHERS}"),
            (self.weather_pos in CORNERS and self.battery_pos in CORNERS, f"positions must be in {CORNERS}"),
            (self.weather_pos != self.battery_pos, "weather and battery must sit in distinct corners"),
            (len(self.face_color) == 3 and all(0 <= c <= 255 for c in self.face_color), "face_color: 3 x 0..255"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"WatchSpec {self!r}: {message}")

    @property
    def time(self) -> str:
        """The time as the zero-padded "HH:MM:SS" answer."""
        return f"{self.hour:02d}:{self.minute:02d}:{self.second:02d}"

    @property
    def battery_text(self) -> str:
        """The battery as the "NN%" answer."""
        return f"{self.battery}%"

    def identity(self) -> tuple[int, ...]:
        """What makes two watches the same watch for split assignment (face colour left out)."""
        return (
            self.hour % 12,
            self.minute,
            self.second,
            self.battery,
            WEATHERS.index(self.weather),
            CORNERS.index(self.weather_pos),
            CORNERS.index(self.battery_pos),
        )

    def to_dict(self) -> dict:
        """Plain JSON-able attributes plus the answer strings."""
        return {
            "hour": self.hour, "minute": self.minute, "second": self.second, "battery": self.battery,
            "weather": self.weather, "weather_pos": self.weather_pos, "battery_pos": self.battery_pos,
            "face_color": list(self.face_color), "time": self.time, "color_name": colour_name(self.face_color),
        }


@dataclass(frozen=True)
class Bias:
    """Which attribute understanding data is biased on, and how (see the module docstring)."""

    attribute: str = "weather"
    mode: str = "hidden"
    value: str | None = None

    def __post_init__(self) -> None:
        if self.attribute not in BIAS_ATTRIBUTES:
            raise ValueError(f"Bias.attribute {self.attribute!r}: expected one of {BIAS_ATTRIBUTES}")
        if self.mode not in ("hidden", "only_value"):
            raise ValueError(f"Bias.mode {self.mode!r}: expected 'hidden' or 'only_value'")
        if self.mode == "only_value":
            self._allowed()  # validates `value` early

    def _allowed(self) -> set:
        if self.attribute in ("weather_pos", "battery_pos"):
            value = self.value or "top-left"
            if value not in CORNERS:
                raise ValueError(f"Bias.value {value!r}: expected one of {CORNERS} for {self.attribute}")
            return {value}
        if self.attribute == "weather":
            value = self.value or "sunny"
            if value not in WEATHERS:
                raise ValueError(f"Bias.value {value!r}: expected one of {WEATHERS} for weather")
            return {value}
        value = self.value or "0-49"
        try:
            lo, hi = (int(v) for v in value.split("-"))
        except ValueError:
            raise ValueError(f"Bias.value {value!r}: expected a battery range 'LO-HI', e.g. '0-49'") from None
        if not 0 <= lo <= hi <= 100:
            raise ValueError(f"Bias.value {value!r}: need 0 <= LO <= HI <= 100")
        return set(range(lo, hi + 1))

    def shows(self, spec: WatchSpec) -> bool:
        """Whether understanding data about `spec` may ask about or state the biased attribute."""
        if self.mode == "hidden":
            return False
        return getattr(spec, self.attribute) in self._allowed()


_MASK = (1 << 64) - 1
_RADIX = (12, 60, 60, 101, 3, 4, 4)  # sizes of the identity fields, for a mixed-radix code


def _bucket(identity: tuple[int, ...] | list[int]) -> int:
    """Per-mille bucket of an identity: splitmix64 of its mixed-radix code (pure ints: platform independent)."""
    z = 0
    for value, radix in zip(identity, _RADIX):
        z = z * radix + value
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) % 1000


def split_of(identity: tuple[int, ...]) -> str:
    """The one split a watch identity (`WatchSpec.identity()`) belongs to."""
    if len(identity) != len(_RADIX) or not all(0 <= v < r for v, r in zip(identity, _RADIX)):
        raise ValueError(f"split_of: {identity!r} is not a watch identity (fields below {_RADIX})")
    bucket = _bucket(identity)
    return next(split for split, (lower, upper) in _SPLIT_RANGES.items() if lower <= bucket < upper)


def _check_key(seed: int, split: str, index: int) -> None:
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_CODES)}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0 (got seed={seed}, index={index})")


def rng_for(*key: int) -> np.random.Generator:
    """A Generator seeded from a tuple of non-negative ints (never Python's salted hash())."""
    return np.random.default_rng([int(k) for k in key])


def sample_watch(seed: int, split: str, index: int) -> WatchSpec:
    """The watch number `index` of `split` under `seed`; the same in every process."""
    _check_key(seed, split, index)
    rng = rng_for(seed, SPLIT_CODES[split], index)
    lower, upper = _SPLIT_RANGES[split]
    for _ in range(_MAX_DRAWS // _BATCH):
        # A batch of candidate watches per call keeps rejection cheap (test keeps 1 draw in 10).
        batch = rng.integers(0, [HOURS, 60, 60, 101, 3, 4, 3], size=(_BATCH, 7)).tolist()
        for hour, minute, second, battery, weather, wpos, shift in batch:
            bpos = (wpos + 1 + shift) % 4  # uniform over the 3 corners other than wpos
            if lower <= _bucket((hour % 12, minute, second, battery, weather, wpos, bpos)) < upper:
                colour = tuple(rng.integers(0, 256, size=3).tolist())
                return WatchSpec(hour, minute, second, battery, WEATHERS[weather], CORNERS[wpos], CORNERS[bpos], colour)
    raise RuntimeError(f"no {split} watch after {_MAX_DRAWS} draws (seed={seed}, index={index})")


def colour_name(rgb: tuple[int, int, int] | list[int]) -> str:
    """The study's colour vocabulary: each channel Dark/Medium/Light/Bright, e.g. "Dark-Medium-Bright"."""
    if len(rgb) != 3:
        raise ValueError(f"colour_name: expected 3 channels, got {rgb!r}")
    names = []
    for c in rgb:
        if not 0 <= c <= 255:
            raise ValueError(f"colour_name: channel {c} outside 0..255")
        names.append("Dark" if c < 64 else "Medium" if c < 128 else "Light" if c < 192 else "Bright")
    return "-".join(names)
