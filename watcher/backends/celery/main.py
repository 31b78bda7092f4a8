"""`thumbwatch worker`: the render host's process — a Celery worker with workers.count render
processes, its log made to read like ours, systemd told how it is (READY once it has reached
the broker and its pool is up, STATUS, WATCHDOG from a loop that proves it is alive, STOPPING),
and started again when Celery's worker ends without being asked to."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

from ...config import Config
from ...limits import planned_cap
from ...paths import PathRules
from ...systemd import Notifier
from ...thumbtree import remove_stale_temps
from .. import results
from . import wire
from .host import RenderHost, RenderRequest

import celery  # noqa: E402 - wire.py has said what is missing when it is

logger = logging.getLogger(__name__)

_host: RenderHost | None = None
STATUS_EVERY = 5.0  # s between STATUS= updates (and WATCHDOG=1 at least this often)


def worker_app(config: Config, name: str) -> "celery.Celery":
    app = wire.make_app(config)
    RenderRequest.host_args = (config, name)

    def give_back(photos: list, settings: dict, sizes: list) -> None:
        app.send_task(wire.TASK, args=(photos, settings, sizes), task_id=uuid.uuid4().hex, queue=config.celery.queue,
                      argsrepr=f"{len(photos)} photo(s) given back", kwargsrepr="")

    def the_host() -> RenderHost:
        global _host
        if _host is None:
            _host = RenderHost(config, name, send_task=give_back)
        return _host

    @app.task(name=wire.TASK, bind=True, Request=RenderRequest, acks_late=True, reject_on_worker_lost=True)
    def render_batch(self: Any, photos: list, settings: dict, sizes: list) -> None:
        the_host().run_batch(self.request.id, photos, settings, sizes)

    @celery.signals.worker_process_init.connect(weak=False)
    def init_render_process(**_kwargs: Any) -> None:
        init_render_process_for(config)
        the_host()

    return app


def init_render_process_for(config: Config) -> None:
    """A render process's set-up, the local workers' own (results.prepare_render_process). Its
    memory-cap note was said once by the host's main process (worker_main), so not again here."""
    note = results.prepare_render_process(config.limits.worker_memory_mb)
    if note:
        logger.debug("%s", note)


# Celery's loggers that speak per task ("Task ... received", "... succeeded in 0.04 s: None")
# or repeat what our own lines say; their warnings and errors still show.
CELERY_CHATTER = ("celery.worker.strategy", "celery.app.trace", "celery.apps.worker", "celery.worker.consumer.mingle",
                  "celery.bootsteps", "kombu")
CONSUMER_LOGGER = "celery.worker.consumer.consumer"


class BrokerOutage(logging.Filter):
    """Celery's consumer says "Cannot connect to ...\nTrying again in 4.00 seconds... (2/100)"
    at every retry: keep the first, on one line, and say nothing more until it connects again
    ("Connected to ..."). Any other record passes untouched. `down` is the broker's state as
    the host's log tells it, for systemd's STATUS= line."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.why = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == CONSUMER_LOGGER and str(record.msg).startswith("consumer: Cannot connect"):
            if self.down:
                return False
            self.down = True
            text = " ".join(record.getMessage().split())
            self.why = text.removeprefix("consumer: ").split(" Trying again", 1)[0].rstrip(". ")
            record.msg, record.args = text + " (said once until it connects again)", ()
        elif record.name == "celery.worker.consumer.connection" and str(record.msg).startswith("Connected to"):
            self.down = False
        return True


def quiet_celery(app: "celery.Celery", name: str, config: Config) -> BrokerOutage:
    """Make `thumbwatch worker`'s log read like ours: logsetup's format, one line per photo and
    per state change; no banner, no line per task. Errors and warnings keep their place, and so
    does Celery's "worker: Warm shutdown (MainProcess)" (said from its signal handler, where
    we must not log)."""

    @celery.signals.setup_logging.connect(weak=False)
    def keep_our_logging(**_kwargs: Any) -> None:
        """A receiver here tells Celery to leave logging alone (in the pool processes too)."""

    for logger_name in CELERY_CHATTER:
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    outage = BrokerOutage()
    consumer = logging.getLogger(CONSUMER_LOGGER)
    consumer.setLevel(logging.WARNING)  # its INFO is QoS detail ("Skipping prefetch count reduction ...")
    consumer.addFilter(outage)
    logging.getLogger("celery.worker.consumer.connection").addFilter(outage)

    import warnings

    # Celery's multi-line root warning; ours is one line, as the master's
    warnings.filterwarnings("ignore", category=celery.exceptions.SecurityWarning)
    # the notice that Celery 6 will change worker_cancel_long_running_tasks_on_connection_loss's
    # default, ten lines at every connection loss: make_app sets it, so the notice says nothing.
    # (A warnings filter would not hold: Celery's logging setup puts "always" in front of it.)
    logging.getLogger("py.warnings").addFilter(lambda record: "worker_cancel_long_running_tasks_on_connection_loss" not in record.getMessage())
    if os.geteuid() == 0:
        logger.warning("running as root: run unprivileged instead (the shipped units run as User=thumbwatch; see the README's Installing)")
    return outage


class HostNotifier:
    """systemd's view of a render host: READY=1 at Celery's worker_ready (connected to the broker,
    pool up); STATUS= with photos done and failed (counted in Redis by this host's render
    processes) and the broker's state; WATCHDOG=1 while Celery's event loop runs (a timer on the
    loop ticks; a thread checks the tick is recent, or that the consumer is reconnecting to a
    broker that is away, which is alive too); STOPPING=1 at shutdown."""

    def __init__(self, name: str, config: Config, outage: BrokerOutage, notifier: Notifier | None = None):
        self.name = name
        self.config = config
        self.outage = outage
        self.notifier = notifier or Notifier()
        self.keys = wire.Keys(config.celery.queue)
        self.every = min(self.notifier.watchdog_interval() or STATUS_EVERY, STATUS_EVERY)
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.counts = {"done": 0, "failed": 0}
        self.ticked = time.monotonic()

    def connect(self) -> None:
        @celery.signals.worker_ready.connect(weak=False)
        def ready(sender: Any = None, **_kwargs: Any) -> None:
            logger.info("ready: render host %s, %d process(es), broker %s queue=%s",
                        self.name, self.config.workers.count, wire.redacted(self.config.celery.broker), self.config.celery.queue)
            timer = getattr(sender, "timer", None)
            if timer is not None and hasattr(timer, "call_repeatedly"):
                timer.call_repeatedly(self.every / 2, self.tick)
            self.ticked = time.monotonic()
            self.ready.set()
            self.notifier.ready(self.status())

        @celery.signals.worker_shutting_down.connect(weak=False)
        def stopping(**_kwargs: Any) -> None:
            self.stop.set()
            self.notifier.stopping("stopping: finishing the photos in hand")

        if self.notifier.address is not None:
            threading.Thread(target=self.beat, name="thumbwatch-notify", daemon=True).start()

    def tick(self) -> None:
        """On Celery's event loop: it runs."""
        self.ticked = time.monotonic()

    def status(self) -> str:
        broker = f"broker unreachable ({self.outage.why})" if self.outage.down else "broker connected"
        if not self.ready.is_set():
            return f"waiting for the broker: {self.outage.why}" if self.outage.down else f"connecting to {wire.redacted(self.config.celery.broker)}"
        return f"{self.counts['done']} photo(s) done, {self.counts['failed']} failed; {broker}"

    def read_counts(self, client: Any) -> None:
        try:
            counts = client.hgetall(self.keys.host_stats(self.name))
        except (OSError, wire.redis.RedisError):
            return  # the broker's state says why
        self.counts = {k: int(counts.get(k.encode(), 0)) for k in ("done", "failed")}

    def beat(self) -> None:
        client = wire.connect(self.config, socket_timeout=2)
        last = ""
        while not self.stop.wait(self.every):
            if self.ready.is_set():
                if self.alive():
                    self.notifier.watchdog()
                self.read_counts(client)
            text = self.status()
            if text != last:
                self.notifier.status(text)
                last = text

    def alive(self) -> bool:
        return self.outage.down or time.monotonic() - self.ticked < 3 * self.every


def worker_main(config: Config, name: str | None = None) -> int:
    """`thumbwatch worker`: a Celery worker with workers.count render processes."""
    name = name or socket.gethostname()
    app = worker_app(config, name)
    outage = quiet_celery(app, name, config)
    notify = HostNotifier(name, config, outage)
    notify.connect()
    logger.info("render host %s starting: %d process(es) taking photos from %s queue=%s",
                name, config.workers.count, wire.redacted(config.celery.broker), config.celery.queue)
    _cap, note = planned_cap(config.limits.worker_memory_mb)
    if note:
        logger.warning("%s", note)
    client = wire.connect(config)
    try:
        client.delete(wire.Keys(config.celery.queue).host_stats(name))  # STATUS= counts since this start
    except (OSError, wire.redis.RedisError):
        pass  # the broker not up yet: Celery's consumer says so, and waits for it
    finally:
        client.close()
    removed = remove_stale_temps(PathRules(config))
    if removed:
        logger.info("removed %d temp file(s) left by render processes of this host that died", removed)
    argv = [
        "--quiet", "worker", "--pool=prefork", f"--concurrency={config.workers.count}", f"--queues={config.celery.queue}",
        f"--hostname=thumbwatch-{os.getpid()}@{name}", "--without-gossip", "--without-mingle", "--prefetch-multiplier=1",
        f"--loglevel={config.log.level.upper()}",
    ]
    asked = []  # the signal that asked for the stop, if one did

    def shutting_down(sig: object = None, **_kw: object) -> None:
        if sig:
            asked.append(sig)

    celery.signals.worker_shutting_down.connect(shutting_down, weak=False)
    code = 0
    try:
        app.worker_main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
        if code and not asked:
            _start_again(name, f"exit code {code}")
    else:
        if not asked:
            # Celery's consumer can die of a broker restart (kombu: "Unrecoverable error") and the
            # worker then simply ends; a render host must not stay down for that.
            _start_again(name, "Celery's worker ended without being asked to")
    notify.notifier.stopping("stopped")
    logger.info("render host %s stopped%s", name, f" (exit code {code})" if code else "")
    return code


def _start_again(name: str, why: str) -> None:
    """Run this render host afresh (same pid, same process group, so it is still the one a
    service manager or a test knows), with back-off: 1 s, 2 s, 4 s, ... up to 60 s."""
    tries = int(os.environ.get("THUMBWATCH_WORKER_RESTARTS", "0"))
    delay = min(2 ** tries, 60)
    logger.error("render host %s stopped unexpectedly (%s); starting it again in %d s", name, why, delay)
    time.sleep(delay)
    os.environ["THUMBWATCH_WORKER_RESTARTS"] = str(tries + 1)
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
