"""thumbwatch: a daemon that turns photos dropped into watched folders into thumbnails."""

__version__ = "0.1.0"
