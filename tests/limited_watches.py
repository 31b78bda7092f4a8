"""Run thumbwatch with the kernel's inotify watch limit 'reached' for folders named *nowatch*.

Lowering fs.inotify.max_user_watches would hit every process on the machine, so this one
rare OS error is forced by wrapping the libc call; everything else is real.
Usage: python tests/limited_watches.py run --config FILE
"""

import ctypes
import errno
import sys

from watchdog.observers import inotify_c

real_add_watch = inotify_c.inotify_add_watch


def add_watch(fd, path, mask):
    if b"nowatch" in path:
        ctypes.set_errno(errno.ENOSPC)
        return -1
    return real_add_watch(fd, path, mask)


inotify_c.inotify_add_watch = add_watch

if __name__ == "__main__":
    from watcher.cli import main

    sys.exit(main(sys.argv[1:]))
