"""The camera faults that become tickets of their own, and their default case classes.

Apart from :mod:`agent.faults`, which watches for them with OpenCV, so that :mod:`agent.config`
checks ``[categories.<fault>]`` without loading it; importable from :mod:`agent.faults` too.
"""

from __future__ import annotations

from enum import Enum

from agent.rules import Category


class Fault(str, Enum):
    OFFLINE = "camera_offline"
    VIEW_SHIFTED = "view_shifted"
    TAMPERED = "camera_tampered"


# Codes follow the platform's "other" range until an operator maps them: check them against the
# platform's own code table and override in edge.toml. docs/messages.md "Categories" says where every
# default comes from (these are the project's own).
DEFAULT_CATEGORIES = {
    Fault.OFFLINE: Category("设施设备", "视频监控离线", "99-01"),
    Fault.VIEW_SHIFTED: Category("设施设备", "视频监控移位", "99-02"),
    Fault.TAMPERED: Category("设施设备", "视频监控遮挡或失焦", "99-03"),
}
