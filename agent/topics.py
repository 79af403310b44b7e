"""The one table of MQTT topics. Every topic the agent uses is built here, nowhere else.

    <prefix>/<agent>/status                          retained; "offline" as the last will
    <prefix>/<agent>/<camera>/tickets                ticket JSON documents
    <prefix>/<agent>/<camera>/evidence/<ticket>/<kind>   binary evidence (snapshot JPEG, ...)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str
    agent: str

    @property
    def root(self) -> str:
        return f"{self.prefix}/{self.agent}"

    def status(self) -> str:
        return f"{self.root}/status"

    def tickets(self, camera: str) -> str:
        return f"{self.root}/{camera}/tickets"

    def evidence(self, camera: str, ticket_id: str, kind: str) -> str:
        return f"{self.root}/{camera}/evidence/{ticket_id}/{kind}"
