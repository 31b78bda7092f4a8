"""thumbwatch's benchmark suite: `make bench` or `python -m bench` (see bench/__main__.py)."""

import re


def cpu_name() -> str:
    """The CPU's model name, as every bench names the machine it ran on."""
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
    except OSError:
        return "unknown CPU"
    return found.group(1).strip() if found else "unknown CPU"
