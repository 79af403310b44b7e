"""``edge-agent run`` as a service: SIGTERM and SIGINT stop the agent cleanly, SIGHUP reloads its
config, and systemd hears of each step (:mod:`agent.sdnotify`).

A reload checks the new config as ``edge-agent check`` does (config, models, privacy) while the
running agent carries on; only a config that passes replaces it: the agent is stopped as on
SIGTERM, rebuilt from the new config and run again, in this process. A config that fails is
logged, naming the file and the key, and the running agent keeps its old one: SIGHUP never
stops the agent.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from agent.app import Agent
from agent.calibration import CalibrationError
from agent.config import BoxConfig
from agent.config_check import checked_config
from agent.logs import log_event, setup_logging
from agent.redact import redact
from agent.sdnotify import ServiceNotifier
from agent.typedtoml import ConfigError

log = logging.getLogger("agent.service")


def reload_config(path: Path) -> BoxConfig | None:
    """The config at ``path`` if it passes ``check``, else None with the reason logged. The one
    entry point of a reload: what is reloaded, and how, is up to the caller."""
    try:
        config = checked_config(path)
    except ConfigError as exc:
        log_event(log, "config_reload_refused", level=logging.ERROR, file=exc.source, key=exc.key,
                  reason=redact(exc.reason), running="the old config")
        return None
    except Exception as exc:  # noqa: BLE001 - a calibration, a model, a file's mode: none may end the agent
        log_event(log, "config_reload_refused", level=logging.ERROR, file=path, error=type(exc).__name__,
                  reason=redact(str(exc)), running="the old config")
        return None
    log_event(log, "config_reload_checked", file=path, cameras=len(config.cameras))
    return config


class AgentService:
    """Runs agents one after the other in this process: the first from ``config``, the next from
    each config a SIGHUP brings that passes ``check``, until SIGTERM/SIGINT or every camera ended."""

    def __init__(self, config: BoxConfig, make_agent: Callable[[BoxConfig], Agent],
                 notifier: ServiceNotifier):
        self.config, self.make_agent, self.notifier = config, make_agent, notifier
        self.config_path = config.source_file
        self._stopping = threading.Event()  # SIGTERM/SIGINT: the service ends
        self._agent_stop = threading.Event()  # the running agent's stop: the service's, or a reload's
        self._hangup = threading.Event()
        self._next_config: BoxConfig | None = None
        self._lock = threading.Lock()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, lambda *_: self._hangup.set())
        threading.Thread(target=self._reload_loop, name="reload", daemon=True).start()
        agent = self.make_agent(self.config)
        while True:
            agent.run(self._agent_stop, self.notifier)
            with self._lock:
                next_config, self._next_config = self._next_config, None
                self._agent_stop = threading.Event()
            if self._stopping.is_set() or next_config is None:
                break
            self.notifier.watchdog()  # stopping the old agent took a while; building the next one will too
            agent = self._rebuild(next_config)
        if not self._stopping.is_set():
            self.notifier.stopping("every camera ended")
        self._stopping.set()
        self._hangup.set()  # lets the reload thread end
        return 0

    def _on_stop_signal(self, signum: int, frame) -> None:
        # No lock: the handler runs on the main thread, which may hold it. Setting _stopping first
        # is enough, the loop in run() looks at it after every agent.
        self.notifier.stopping(f"stopping on {signal.Signals(signum).name}")
        self._stopping.set()
        self._agent_stop.set()

    def _rebuild(self, config: BoxConfig) -> Agent:
        """An agent for the new config; should that fail after all (a file changed again since
        the check), one for the old config, which ran a moment ago."""
        setup_logging(config.agent.log_level, config.agent.log_format.value)
        try:
            agent = self.make_agent(config)
        except (ConfigError, CalibrationError) as exc:
            log_event(log, "config_reload_failed", level=logging.ERROR, file=config.source_file,
                      reason=redact(str(exc)), running="the old config")
            setup_logging(self.config.agent.log_level, self.config.agent.log_format.value)
            return self.make_agent(self.config)
        self.config = config
        log_event(log, "config_reloaded", file=config.source_file, cameras=len(config.cameras))
        return agent

    def _reload_loop(self) -> None:
        """On its own thread, so that the running agent goes on (and pings the watchdog) while
        the new config's models load."""
        while True:
            self._hangup.wait()
            if self._stopping.is_set():
                return
            self._hangup.clear()
            self.notifier.reloading("checking the config (SIGHUP)")
            log_event(log, "config_reload_requested", file=self.config_path, signal="SIGHUP")
            config = reload_config(self.config_path)
            if config is None:
                self.notifier.ready("config reload refused, running the old config; see the log")
                continue
            with self._lock:
                if self._stopping.is_set():
                    return
                self._next_config = config
                self._agent_stop.set()
