"""tests/systemd runs only in `make test-systemd` (THUMBWATCH_SYSTEMD=1): it boots a container."""

import os

collect_ignore_glob = [] if os.environ.get("THUMBWATCH_SYSTEMD") == "1" else ["test_*.py"]
