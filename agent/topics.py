"""The one table of MQTT topics. Every topic the agent uses is built here, nowhere else.

    <prefix>/<agent>/status                          retained; "offline" as the last will
    <prefix>/<agent>/<camera>/tickets                ticket JSON documents
    <prefix>/<agent>/<camera>/evidence/<ticket>/<kind>   binary evidence (snapshot JPEG, clip, ...)
    <prefix>/<agent>/<camera>/snapshots/<command id>     spot-check snapshots
    <prefix>/<agent>/<camera>/telemetry/<kind>           periodic numbers (crowd counts)
    <prefix>/<agent>/<camera>/alarms                     local alarms (e-bike in a lift)
    <prefix>/<agent>/cmd/<verb>                          commands to the agent
    <prefix>/<agent>/replies                             replies to commands without a response topic
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

    def snapshot(self, camera: str, command_id: str) -> str:
        return f"{self.root}/{camera}/snapshots/{command_id}"

    def telemetry(self, camera: str, kind: str) -> str:
        return f"{self.root}/{camera}/telemetry/{kind}"

    def commands(self) -> str:
        """The filter the agent subscribes to."""
        return f"{self.root}/cmd/+"

    def command(self, verb: str) -> str:
        return f"{self.root}/cmd/{verb}"

    def replies(self) -> str:
        return f"{self.root}/replies"

    def alarm(self, camera: str) -> str:
        return f"{self.root}/{camera}/alarms"
