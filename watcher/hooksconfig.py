"""The config's hooks section (where thumbnail events go: hooks.py) and output.placeholder,
kept apart from config.py, which holds them as Config.hooks and OutputConfig.placeholder.
Defaults are written once, on the dataclass fields."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .configfile import Section

PLACEHOLDERS = ("none", "thumbhash", "blurhash")


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    token_file: Path | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class HooksConfig:
    """Where thumbnail events go (hooks.py); no receiver means no events are made."""

    webhook: WebhookConfig | None = None
    exec: tuple[str, ...] = ()
    exec_timeout: float = 30.0
    batch: int = 100  # events per delivery, at most
    max_wait: float = 1.0  # seconds an event may wait for a batch to fill
    spool_max: int = 100_000  # events kept for a receiver that is down; past it the oldest go


def parse_placeholder(s: Section) -> str:
    """output.placeholder: blurhash only with its library installed (the blurhash extra)."""
    kind = s.choice("placeholder", PLACEHOLDERS)
    if kind == "blurhash" and importlib.util.find_spec("blurhash") is None:
        raise s.error(s.key("placeholder"), "blurhash needs the blurhash library (pip install 'thumbwatch[blurhash]')")
    return kind


def parse_hooks(s: Section, base_dir: Path) -> HooksConfig:
    webhook = None
    if s.data.get("webhook") is not None:
        w = s.section("webhook", WebhookConfig)
        url = w.string("url", None)
        if url is None or not re.match(r"^https?://[^/?#\s]+", url):
            raise w.error(w.key("url"), "expected an http:// or https:// URL", url)
        token = w.string("token_file")
        token_file = Path(os.path.abspath(base_dir / os.path.expanduser(token))) if token else None
        if token_file is not None and not os.access(token_file, os.R_OK):
            raise w.error(w.key("token_file"), f"cannot read {token_file}")
        webhook = WebhookConfig(url, token_file, w.number("timeout", low=0.1))
        w.close()
    else:
        s.take("webhook")
    argv = s.strings("exec")
    if argv and not shutil.which(argv[0]):
        raise s.error(s.key("exec"), f"expected a program that can be run, but {argv[0]} is not one (or not on $PATH)")
    hooks = HooksConfig(
        webhook=webhook,
        exec=argv,
        exec_timeout=s.number("exec_timeout", low=0.1),
        batch=s.integer("batch", low=1, high=10_000),
        max_wait=s.number("max_wait", low=0.0, allow_zero=True),
        spool_max=s.integer("spool_max", low=10, high=100_000_000),
    )
    s.close()
    return hooks
