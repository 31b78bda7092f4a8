"""What render() raises for a photo it cannot thumbnail. Expected failures only: the message is
the human reason the log line carries; anything else raised from render() is a bug."""

from __future__ import annotations


class RenderError(Exception):
    """A photo we cannot thumbnail, for a reason the user should read (str(error))."""


class PhotoVanished(RenderError):
    """The photo was deleted or renamed before we got to it: normal, not an error."""


class PhotoChanged(PhotoVanished):
    """Replaced or rewritten while it was rendered: the master renders it again once it settles."""


class OutputError(RenderError):
    """The thumbnail could not be written (disk full, folder unwritable): retry later."""

    def __init__(self, reason: str, errno_: int | None):
        super().__init__(reason)
        self.errno = errno_
