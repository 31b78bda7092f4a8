"""Photo → thumbnails, pure: decoding (formats.py picks the decoder: pillow.py, heif.py...),
orientation, colour, embedded previews, writing and the diagnosis of files that fail. Knows
nothing of queues, signals or brokers; the local workers and the render hosts both call
render() from here."""
from .errors import OutputError, PhotoChanged, PhotoVanished, RenderError
from .pipeline import RenderResult, RenderSettings, render

__all__ = ["OutputError", "PhotoChanged", "PhotoVanished", "RenderError", "RenderResult", "RenderSettings", "render"]
