"""tests/imagegen.py, importable from the bench (its JPEG-with-previews writer is shared)."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_imagegen", Path(__file__).resolve().parent.parent / "tests" / "imagegen.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
jpeg_with_previews = _mod.jpeg_with_previews
