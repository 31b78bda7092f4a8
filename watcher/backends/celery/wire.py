"""What the master and render hosts agree on: Redis names, the task and outcome formats, the
Celery app's settings, and the broker URL as logs show it. Both sides import this; it imports
nothing of either.

    master (thumbwatch run)                      render hosts (thumbwatch worker)
      submit() -> batch -> SET NX job keys  ->     Celery queue <queue>  ->  render_batch()
      listener thread <- XREAD outcomes     <-     XADD tw:<queue>:outcomes, DEL the job key

A task's args: (photos, settings, sizes), each photo (key, path, size, mtime_ns, ino, targets,
root, marker) with targets as (path, index into sizes); root is the watched root the photo is
under and marker that root's id (roots.read_marker) as the master saw it, None without one.
An outcome: {"m": json} on the stream, the json a results.to_wire dict ("v", "k", ...) plus
key, h (host), pid; or a host's own note: k "lost" (a pool process died with it in hand),
"bounced" (photos given back: the host cannot see their root), "blind"/"sees" (a root).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ...config import Config, ConfigError, OutputConfig, SizeSpec
from ...paths import Target
from ...render import RenderSettings
from .. import results

try:
    import celery
    import redis
    from kombu.exceptions import OperationalError
except ImportError as err:  # pragma: no cover - the extra is part of the test install
    raise ConfigError(f"workers.backend: celery needs the celery extra (pip install 'thumbwatch[celery]'): {err}") from None

BROKER_ERRORS = (redis.RedisError, OperationalError, OSError)  # what a broker that went away raises

TASK = "thumbwatch.render"
STREAM_MAXLEN = 100_000  # outcomes kept in the stream; the master reads them within seconds
BACKOFF_MAX = 10.0
SWEEP_LOCK_EXPIRE = 10  # s; a sweep that took longer would only restore a task twice (deduped)


def photo_key(path: str, size: int, mtime_ns: int, ino: int) -> str:
    """One photo version's identity; the path's hash first, so `retry PATH` can find its keys."""
    return f"{path_hash(path)}:{size}:{mtime_ns}:{ino}"


def path_hash(path: str) -> str:
    return hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:20]


class Keys:
    """Every Redis name thumbwatch uses, prefixed by the queue so libraries can share a Redis."""

    def __init__(self, queue: str):
        self.prefix = f"tw:{queue}:"
        self.outcomes = self.prefix + "outcomes"
        self.blind = self.prefix + "blind"  # hash "host\0root" -> why that host cannot see that root

    def job(self, key: str) -> str:
        return f"{self.prefix}job:{key}"

    def tries(self, key: str) -> str:
        return f"{self.prefix}try:{key}"

    def in_hand(self, task_id: str) -> str:
        return f"{self.prefix}inhand:{task_id}"

    def host_stats(self, host: str) -> str:
        return f"{self.prefix}host:{host}"


def dedupe_ttl(config: Config) -> int:
    """How long a job key lives: far longer than a task can wait with at most queue_size queued."""
    return int(max(3600.0, 4 * config.celery.visibility_timeout))


def redacted(url: str) -> str:
    """The broker URL without its password, for logs and the status file."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def connect(config: Config, **kwargs: Any) -> "redis.Redis":
    return redis.Redis.from_url(config.celery.broker, socket_connect_timeout=2, health_check_interval=10, **kwargs)


def make_app(config: Config) -> "celery.Celery":
    c = config.celery
    app = celery.Celery("thumbwatch", broker=c.broker, set_as_current=False)
    app.conf.update(
        task_default_queue=c.queue,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=False,  # a hard time limit gives the task back too
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        # the broker lost: photos in hand finish, and their outcomes wait for it (RenderHost.retrying)
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options={
            "visibility_timeout": c.visibility_timeout,
            # sweep for a dead host's photos every ~2 s instead of kombu's ~100 s
            "unacked_restore_interval": 2,
            "unacked_restore_throttle": 1,
            # each sweep holds a lock in Redis; a host killed while holding it (a sweep every
            # 2 s makes that a real chance) would stop every sweep for kombu's default 300 s
            "unacked_mutex_expire": SWEEP_LOCK_EXPIRE,
        },
    )
    return app


# ---- render settings and sizes ------------------------------------------------------------------


def settings_wire(settings: RenderSettings) -> dict:
    output = asdict(settings.output)
    output["dir"] = str(settings.output.dir)
    output.pop("sizes")
    return {"output": output, "max_pixels": settings.max_pixels}


def settings_from_wire(wire: dict) -> RenderSettings:
    known = set(OutputConfig.__dataclass_fields__)
    output = {k: v for k, v in wire["output"].items() if k in known}
    output["dir"] = Path(output["dir"])
    return RenderSettings(OutputConfig(**output), wire["max_pixels"])


def sizes_from_wire(sizes: list) -> list[SizeSpec]:
    return [SizeSpec(**s) for s in sizes]


def targets_from_wire(targets: list, sizes: list[SizeSpec]) -> list[Target]:
    return [Target(sizes[i], p) for p, i in targets]


# ---- outcomes -----------------------------------------------------------------------------------


def outcome_message(result: results.Result, key: str, host: str, pid: int) -> str:
    return json.dumps({**results.to_wire(result), "key": key, "h": host, "pid": pid})


def lost_message(key: str, host: str, pid: int | None, how: str, starts: int) -> str:
    return json.dumps({"v": results.WIRE_VERSION, "k": "lost", "key": key, "h": host, "pid": pid, "r": how, "n": starts})


def bounced_message(keys: list[str], host: str, pid: int) -> str:
    """A render host gave these photos back: it cannot see their root (host.py)."""
    return json.dumps({"v": results.WIRE_VERSION, "k": "bounced", "keys": keys, "h": host, "pid": pid})


def sight_message(host: str, root: str, why: str | None) -> str:
    """A render host cannot see a root (why), or sees it again (why None)."""
    return json.dumps({"v": results.WIRE_VERSION, "k": "blind" if why else "sees", "h": host, "root": root, "r": why or ""})


def stream_id(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms), int(seq or 0)
