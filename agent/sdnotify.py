"""Telling systemd how the agent is (``sd_notify``): READY once the cameras run, WATCHDOG from the
main loop, RELOADING/STOPPING around a reload or a stop, and a STATUS line for ``systemctl status``.

The protocol is one datagram of ``KEY=value`` lines to the unix socket ``$NOTIFY_SOCKET`` names
(a leading ``@`` is an abstract socket); without it (not under systemd, a container, a test) every
call is a no-op. libsystemd is not needed for that, and a box may not have its Python binding.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

from agent.logs import log_event

log = logging.getLogger("agent.sdnotify")


class ServiceNotifier:
    def __init__(self, address: str | None = None, watchdog: bool = False):
        """``address``: the socket, as ``$NOTIFY_SOCKET`` gives it; ``watchdog``: whether the unit
        asked for pings (``WatchdogSec=``)."""
        self.address = address
        self.watchdog_enabled = watchdog and address is not None
        self._failed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServiceNotifier:
        """As sd_notify(3) and sd_watchdog_enabled(3) read the environment: pings only when
        ``WATCHDOG_USEC`` is set and ``WATCHDOG_PID``, if set, is this process."""
        pid = env.get("WATCHDOG_PID")
        watchdog = bool(env.get("WATCHDOG_USEC")) and (pid is None or pid == str(os.getpid()))
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog)

    def ready(self, status: str) -> None:
        self._send(READY="1", STATUS=status)

    def watchdog(self) -> None:
        if self.watchdog_enabled:
            self._send(WATCHDOG="1")

    def reloading(self, status: str) -> None:
        # MONOTONIC_USEC: systemd (253+, Type=notify-reload) matches the reload to this message.
        self._send(RELOADING="1", MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000),
                   STATUS=status)

    def stopping(self, status: str) -> None:
        self._send(STOPPING="1", STATUS=status)

    def status(self, status: str) -> None:
        self._send(STATUS=status)

    def _send(self, **fields: str) -> None:
        if self.address is None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, target)
        except OSError as exc:
            # systemd gone or the socket wrong: the agent's work goes on; say it once, not every 0.5 s.
            if not self._failed:
                log_event(log, "service_notify_failed", level=logging.WARNING, socket=self.address,
                          reason=exc.strerror or str(exc))
            self._failed = True
