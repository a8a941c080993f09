"""The synthetic smart-watch data of the study: sampling, drawing, conversations, scoring, source."""
from .render import render_watch
from .score import chance_levels, score_answer, score_caption, score_vqa
from .source import SmartWatchSource, watch_sample
from .spec import CORNERS, WEATHERS, Bias, WatchSpec, colour_name, sample_watch
from .tasks import conversation, corpus, vocabulary

__all__ = [
    "CORNERS",
    "WEATHERS",
    "Bias",
    "SmartWatchSource",
    "WatchSpec",
    "chance_levels",
    "colour_name",
    "conversation",
    "corpus",
    "render_watch",
    "sample_watch",
    "score_answer",
    "score_caption",
    "score_vqa",
    "vocabulary",
    "watch_sample",
]
