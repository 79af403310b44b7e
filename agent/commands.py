"""Commands from the platform: validated, carried out, answered.

A command arrives on ``<prefix>/<agent>/cmd/<verb>``; its signature is checked
(:mod:`agent.command_auth`), then its JSON against ``command.schema.json`` and the topic's verb,
all before anything happens, so an unsigned, forged, stale, replayed, malformed or unknown command
gets an error reply and changes nothing. Replies go through the outbox like everything
else (durable, in order after the ticket messages the command caused) to the request's MQTT 5
ResponseTopic with its CorrelationData.
"""

from __future__ import annotations

import json
import logging
import math

import jsonschema

from agent import schemas
from agent.clock import Clock
from agent.command_auth import AuthError, CommandAuth
from agent.evidence import EvidenceStore, spot_check
from agent.logs import log_event
from agent.model_update import ModelUpdateError, ModelUpdater
from agent.outbox import MessageProps, Outbox, OutMessage
from agent.pipeline import CameraPipeline
from agent.redact import redact
from agent.remote_config import RemoteConfig
from agent.ticket_store import TicketStore
from agent.tickets import SCHEMA_VERSION, TicketBook, TicketError, iso_utc
from agent.topics import Topics
from agent.transport import Request

log = logging.getLogger("agent.commands")

MAX_FRAME_AGE_S = 15.0  # an older picture is not "the zone now"
MAX_PAYLOAD = 64 * 1024


class CommandError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class CommandHandler:
    def __init__(self, agent_id: str, topics: Topics, outbox: Outbox, evidence: EvidenceStore, clock: Clock,
                 books: dict[str, TicketBook], pipelines: dict[str, CameraPipeline], chunk_bytes: int,
                 auth: CommandAuth | None, models: ModelUpdater, remote_config: RemoteConfig):
        """``auth`` None: the box has no command key, so every command is refused."""
        self.agent_id, self.topics, self.outbox, self.evidence = agent_id, topics, outbox, evidence
        self.clock, self.books, self.pipelines, self.chunk_bytes = clock, books, pipelines, chunk_bytes
        self.auth, self.models, self.remote_config = auth, models, remote_config
        self.tickets = TicketStore(outbox)

    def handle(self, request: Request) -> dict:
        """Carry out one command and store its reply; returns the reply document."""
        now = self.clock.now()
        command: dict = {}
        try:
            command = self._parse_json(request)
            self._authenticate(request, command, now)
            self._validate(request, command)
            reply = self._dispatch(command, now)
        except (CommandError, AuthError, TicketError, ModelUpdateError) as exc:
            reply = {"ok": False, "error": {"code": exc.code, "message": redact(str(exc))}}
            log_event(log, "command_refused", level=logging.WARNING, topic=request.topic, code=exc.code,
                      reason=str(exc))
        except Exception as exc:  # a bug must cost one reply, not the command thread
            log.exception("command_failed", extra={"fields": {"topic": request.topic}})
            reply = {"ok": False, "error": {"code": "internal", "message": redact(f"{type(exc).__name__}: {exc}")}}
        # Echo the id and verb when the request carried them, even if it failed validation.
        echo = {key: value if isinstance(value, str) else None
                for key, value in (("command_id", command.get("command_id")), ("verb", command.get("verb")))}
        doc = {"schema": "edge-agent/reply", "schema_version": SCHEMA_VERSION, "agent_id": self.agent_id,
               **echo, "time": iso_utc(now), **reply}
        self._store_reply(request, doc, now)
        return doc

    # --- validation -------------------------------------------------------------------------
    def _parse_json(self, request: Request) -> dict:
        if len(request.payload) > MAX_PAYLOAD:
            raise CommandError("bad_json", f"payload of {len(request.payload)} bytes exceeds {MAX_PAYLOAD}")
        try:
            command = json.loads(request.payload)
        except (UnicodeDecodeError, ValueError) as exc:
            raise CommandError("bad_json", f"payload on {request.topic} is not JSON: {exc}") from None
        if not isinstance(command, dict):
            raise CommandError("bad_schema", f"payload on {request.topic} must be a JSON object")
        return command

    def _authenticate(self, request: Request, command: dict, now: float) -> None:
        if self.auth is None:
            raise CommandError("no_command_key", f"agent {self.agent_id} has no [commands] key_file: "
                                                 "it accepts no commands")
        self.auth.check(request.topic, command, now)

    def _validate(self, request: Request, command: dict) -> None:
        errors = sorted(schemas.validator("command").iter_errors(command), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
            raise CommandError("bad_schema", f"{where}: {_short(first)}")
        if isinstance(command.get("duration_s"), float) and not math.isfinite(command["duration_s"]):
            raise CommandError("bad_schema", "duration_s: must be finite")
        verb_in_topic = request.topic.rsplit("/", 1)[-1]
        if verb_in_topic != command["verb"]:
            raise CommandError("bad_topic", f"topic verb {verb_in_topic!r} differs from body verb {command['verb']!r}")

    # --- the verbs --------------------------------------------------------------------------
    def _dispatch(self, command: dict, now: float) -> dict:
        verb = command["verb"]
        log_event(log, "command", verb=verb, command_id=command["command_id"],
                  ticket=command.get("ticket_id", "-"), camera=command.get("camera_id", "-"),
                  model=command.get("model", "-"))
        if verb == "model":
            return self.models.handle(command)  # downloads, verifies and swaps: agent/model_update.py
        if verb in ("ack", "dispatched", "handled"):
            book = self._book_of_ticket(command["ticket_id"])
            step = {"ack": "acked", "dispatched": "dispatched", "handled": "handled"}[verb]
            ticket = book.record_step(command["ticket_id"], step, now, command.get("case_id"))
            if verb == "handled":
                return self._verify(book, command["ticket_id"], now)  # 处置 done: 核查 at once
            return {"ok": True, "result": "recorded", "ticket_id": ticket.id, "ticket_status": ticket.status.value}
        if verb == "verify":
            return self._verify(self._book_of_ticket(command["ticket_id"]), command["ticket_id"], now)
        if verb == "reject":
            book = self._book_of_ticket(command["ticket_id"])
            book.reject(command["ticket_id"], now, command.get("duration_s"))
            return {"ok": True, "result": "rejected", "ticket_id": command["ticket_id"], "ticket_status": "rejected"}
        if verb == "config":  # before the camera's book: it may be a new camera
            return self.remote_config.apply(command["camera_id"], command["camera_toml"])
        book = self._book_of_camera(command["camera_id"])
        zone = command.get("zone_id")
        if verb == "snapshot":
            return self._snapshot(book, command, zone, now)
        if verb == "mute":
            until = now + command["duration_s"]
            book.mute(zone, until, now)
            return {"ok": True, "result": "muted", "muted_until": iso_utc(until)}
        book.unmute(zone, now)  # the schema admits no other verb
        return {"ok": True, "result": "unmuted", "muted_until": None}

    def _verify(self, book: TicketBook, ticket_id: str, now: float) -> dict:
        ticket = book.get(ticket_id)
        obs = self._fresh_observation(book.camera.id, now)
        rule = self.pipelines[book.camera.id].rule_for(ticket.zone, ticket.rule)
        boxes = rule.present(obs) if rule is not None else None
        result, doc = book.verify(ticket_id, now, obs.image, obs.detections, boxes)
        return {"ok": True, "result": result, "ticket_id": ticket_id, "ticket_status": doc["status"],
                "evidence": [e for e in doc["evidence"] if e["kind"] == "snapshot_verify"]}

    def _snapshot(self, book: TicketBook, command: dict, zone: str | None, now: float) -> dict:
        camera = command["camera_id"]
        pipeline = self.pipelines[camera]
        zones = [zr.config.zone for zr in pipeline.zone_rules if zone is None or zr.config.zone.id == zone]
        if zone is not None and not zones:
            raise CommandError("unknown_zone", f"camera {camera} has no zone {zone!r}")
        obs = self._fresh_observation(camera, now)
        picture = spot_check(obs.image, zones, obs.detections, book.camera.privacy)
        # command_id is a safe topic level and folder name: the schema allows [A-Za-z0-9_-] only.
        item = self.evidence.save_jpeg(f"spot-{command['command_id']}", "snapshot", picture)
        topic = self.topics.snapshot(camera, command["command_id"])
        with self.outbox.transaction(now) as tx:
            for message in item.messages(topic, None, self.chunk_bytes):
                tx.add(message)
        return {"ok": True, "result": "snapshot", "evidence": [item.describe(topic, self.chunk_bytes)]}

    def _fresh_observation(self, camera: str, now: float):
        obs = self.pipelines[camera].latest
        if obs is None or now - obs.ts > MAX_FRAME_AGE_S:
            age = "no frame yet" if obs is None else f"last frame {now - obs.ts:.0f} s old"
            raise CommandError("no_frame", f"camera {camera} has no current picture ({age})")
        return obs

    def _book_of_ticket(self, ticket_id: str) -> TicketBook:
        ticket = self.tickets.get(ticket_id)
        if ticket is None or ticket.camera not in self.books:
            raise CommandError("unknown_ticket", f"no ticket {ticket_id} on agent {self.agent_id}")
        return self.books[ticket.camera]

    def _book_of_camera(self, camera: str) -> TicketBook:
        if camera not in self.books:
            raise CommandError("unknown_camera", f"no camera {camera!r} on agent {self.agent_id} "
                                                 f"(cameras: {', '.join(self.books)})")
        return self.books[camera]

    def _store_reply(self, request: Request, doc: dict, now: float) -> None:
        topic = request.response_topic or self.topics.replies()
        props = MessageProps(user=(("kind", "reply"),), correlation_data=request.correlation_data)
        with self.outbox.transaction(now) as tx:
            tx.add(OutMessage(topic, "reply", "application/json", doc.get("ticket_id"),
                              payload=json.dumps(doc, ensure_ascii=False).encode(), props=props))


def _short(error: jsonschema.ValidationError) -> str:
    message = error.message
    return message if len(message) <= 200 else message[:200] + "…"
