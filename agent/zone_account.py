"""What each zone's rule saw, frame by frame: the account ``replay`` ends with.

"0 ticket messages" says nothing about why. The pipeline keeps one account per zone and rule and
records every analysed frame in it: whether the zone was watched (or why not: schedule closed,
muted, the view moved, the zone outside the picture), what of the rule's classes stood in the zone
and how they scored against its ``min_score``, static objects in the zone, the longest dwell the
rule's own clock reached (``Rule.dwell``) against its ``min_dwell_s``, and the events it raised.
Nothing here is rule-specific beyond those common keys, so a new rule gets its account for free.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.types import EventKind, Observation, RuleEvent, bottom_centres
from agent.zones import Zone


@dataclass
class ZoneAccount:
    zone: str
    rule: str
    min_score: float | None  # the rule's, if it has one
    min_dwell_s: float | None
    classes: frozenset[str] = frozenset()  # the detector classes the rule looks for; empty: blobs only
    blobs: bool = False  # the rule looks at static objects (the scene model's blobs)
    watched: int = 0  # analysed frames the zone was watched in
    inactive: Counter = field(default_factory=Counter)  # reason -> frames not watched
    candidate_frames: int = 0  # watched frames with one of the classes in the zone, at any score
    low_score_frames: int = 0  # ... all of them under min_score
    score_range: tuple[float, float] | None = None
    seen: Counter = field(default_factory=Counter)  # class -> frames it stood in the zone
    blob_frames: int = 0  # watched frames with a static object in the zone
    dwell_now: float | None = None  # the rule's dwell clock at the last frame
    longest_dwell_s: float = 0.0
    events: Counter = field(default_factory=Counter)  # event kind -> count

    @classmethod
    def for_rule(cls, zone_id: str, rule_type: str, params, blobs: bool) -> ZoneAccount:
        classes = getattr(params, "classes", None) or ()
        return cls(zone_id, rule_type, getattr(params, "min_score", None), getattr(params, "min_dwell_s", None),
                   frozenset(classes), blobs)

    def record(self, zone: Zone, obs: Observation, inactive: str | None, rule=None,
               events: Sequence[RuleEvent] = ()) -> None:
        """One analysed frame; ``rule`` (after its update) and ``events`` when the zone was watched."""
        if inactive is not None:
            self.inactive[inactive] += 1
            self.dwell_now = None
            return
        self.watched += 1
        found = obs.detections
        if self.classes and len(found):
            found = found[found.of_classes(self.classes)]
            found = found[zone.contains(found.bottom_centres())] if len(found) else found
            if len(found):
                self.candidate_frames += 1
                low, high = float(found.score.min()), float(found.score.max())
                self.score_range = (low, high) if self.score_range is None else (
                    min(low, self.score_range[0]), max(high, self.score_range[1]))
                if self.min_score is not None and high < self.min_score:
                    self.low_score_frames += 1
                self.seen.update(set(found.names()))
        if self.blobs and obs.static_blobs and zone.contains(bottom_centres(np.array([b.xyxy for b in obs.static_blobs]))).any():
            self.blob_frames += 1
        self.dwell_now = rule.dwell() if rule is not None and hasattr(rule, "dwell") else None
        if self.dwell_now is not None:
            self.longest_dwell_s = max(self.longest_dwell_s, self.dwell_now)
        self.events.update(event.kind.value for event in events)

    def blocked(self) -> list[str]:
        """Why no ticket opened, as far as the frames tell: empty when one did."""
        if self.events[EventKind.OPENED.value]:
            return []
        reasons = [f"not watched {frames} frames ({reason.replace('_', ' ')})"
                   for reason, frames in self.inactive.most_common()]
        if self.low_score_frames:
            assert self.score_range is not None  # set by every frame that counts as low-score
            low, high = self.score_range
            reasons.append(f"score under min_score {self.min_score:g} in {self.low_score_frames} of "
                           f"{self.candidate_frames} frames with candidates (scores {low:.2f}-{high:.2f})")
        if self.min_dwell_s is not None and self.longest_dwell_s < self.min_dwell_s and self.watched:
            reasons.append(f"dwell short: longest {self.longest_dwell_s:.1f} s of min_dwell_s {self.min_dwell_s:g} s")
        if self.watched and not self.candidate_frames and not self.blob_frames:
            reasons.append("nothing it looks for in the zone"
                           + (f" ({', '.join(sorted(self.classes))})" if self.classes else ""))
        return reasons

    def state(self) -> str:
        """The rule's state in a few words, for an annotated frame: "object_dwell 2.5 s / 3 s"."""
        if self.dwell_now is None:
            return f"{self.rule}: -"
        target = f" / {self.min_dwell_s:g} s" if self.min_dwell_s is not None else ""
        return f"{self.rule}: candidate {self.dwell_now:.1f} s{target}"

    def summary(self) -> str:
        """One paragraph for people: what was seen, how long it held, what opened, what blocked."""
        parts = [f"{self.watched} frames watched"]
        if self.classes:
            seen = ", ".join(f"{name} {frames}" for name, frames in self.seen.most_common())
            scores = (f", scores {self.score_range[0]:.2f}-{self.score_range[1]:.2f}"
                      if self.score_range is not None else "")
            parts.append(f"candidates in {self.candidate_frames} frames ({seen or 'none'}{scores})")
        if self.blobs:
            parts.append(f"static objects in {self.blob_frames} frames")
        if self.min_dwell_s is not None:
            parts.append(f"longest dwell {self.longest_dwell_s:.1f} s of min_dwell_s {self.min_dwell_s:g} s")
        parts.append("rule events: " + (", ".join(f"{kind.value} {self.events[kind.value]}" for kind in EventKind
                                                    if self.events[kind.value]) or "none"))
        text = f"zone {self.zone} ({self.rule}): " + "; ".join(parts)
        blocked = self.blocked()
        return text + (f"\n  blocked: {'; '.join(blocked)}" if blocked else "")
