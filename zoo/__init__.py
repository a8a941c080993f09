"""unizoo models: image spaces, the language backbone, unified VLMs, the zoo registry."""
from zoo.sample import IMAGE_MARKER, Sample

__all__ = ["IMAGE_MARKER", "Sample"]
