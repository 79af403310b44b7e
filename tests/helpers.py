"""Builders for test configs; everything real except what each test changes."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

from agent.command_auth import CommandKey, sign

REPO = Path(__file__).resolve().parent.parent
# The command key of every test box: tests that send commands sign with it (agent.command_auth.sign).
COMMAND_KEY_HEX = "5e" * 32
COMMAND_KEY = CommandKey(bytes.fromhex(COMMAND_KEY_HEX))


def signed(topic: str, doc: dict, now: float) -> bytes:
    """``doc`` as the platform sends it on ``topic``: signed with the test box's command key at ``now``."""
    return json.dumps(sign(COMMAND_KEY, topic, doc, int(now), uuid.uuid4().hex)).encode()
NANODET_MANIFEST = REPO / "models" / "nanodet-g-416.toml"

CAMERA_TOML = """\
id = "{camera_id}"
url = "{url}"
model = "default"
analysis_fps = {fps}
read_timeout_s = 3
realtime = {realtime}

[location]
lat = 31.2304
lon = 121.4737
grid_code = "310101001001"

[zones.{zone}]
polygon = {polygon}

[zones.{zone}.rule]
type = "object_dwell"
classes = ["person"]
min_dwell_s = {dwell}
clear_after_s = 5
cooldown_s = 600
"""

EDGE_TOML = """\
cameras = [{cameras}]

[agent]
id = "{agent_id}"

[storage]
dir = "{storage}"

[models.default]
manifest = "{manifest}"
threads = 2
min_score = 0.35
{commands}{mqtt}
"""


def write_camera(folder: Path, camera_id: str, url: str, *, zone: str = "plaza", dwell: float = 2,
                 fps: float = 2.0, realtime: bool = False,
                 polygon: str = "[[0, 250], [768, 250], [768, 576], [0, 576]]") -> Path:
    path = folder / f"{camera_id}.toml"
    path.write_text(CAMERA_TOML.format(camera_id=camera_id, url=url, zone=zone, dwell=dwell, fps=fps,
                                       realtime=str(realtime).lower(), polygon=polygon))
    return path


def looping_camera(folder: Path, camera_id: str, video: Path) -> Path:
    """A file camera that plays in real time and starts again at the end: a camera that never ends."""
    path = write_camera(folder, camera_id, str(video), realtime=True)
    path.write_text(path.read_text().replace("realtime = true", "realtime = true\nloop = true"))
    return path


def write_edge(folder: Path, cameras: list[Path], *, agent_id: str = "test-box", mqtt_port: int | None = None,
               prefix: str = "cityops", manifest: Path = NANODET_MANIFEST, command_key: bool = True,
               mqtt_extra: str = "", extra: str = "", commands_extra: str = "") -> Path:
    """``command_key``: write COMMAND_KEY_HEX to command.key (0600) and name it in [commands];
    ``mqtt_extra``, ``commands_extra``: more lines of the [mqtt], [commands] tables; ``extra``:
    more tables after them."""
    mqtt = textwrap.dedent(f"""
        [mqtt]
        host = "127.0.0.1"
        port = {mqtt_port}
        prefix = "{prefix}"
        reconnect_min_s = 0.2
        reconnect_max_s = 2
    """) + textwrap.dedent(mqtt_extra) if mqtt_port else ""
    commands = ""
    if command_key:
        key = folder / "command.key"
        key.write_text(COMMAND_KEY_HEX + "\n")
        key.chmod(0o600)
        commands = f'\n[commands]\nkey_file = "{key}"\n' + textwrap.dedent(commands_extra)
    path = folder / "edge.toml"
    path.write_text(EDGE_TOML.format(
        cameras=", ".join(f'"{c}"' for c in cameras), agent_id=agent_id, storage=folder / "var",
        manifest=manifest, commands=commands, mqtt=mqtt) + textwrap.dedent(extra))
    return path

