#!/usr/bin/env python3
"""Evaluate the agent on scenario composites: recall, false positives and timing per rule.

For each recipe the composite is built by tools/scenario_kit.py (or reused from ``--out`` when its
build key still matches), replayed through ``edge-agent replay`` with the bundled model and the
scenario's camera config, and the tickets are matched against the recipe's truth events.

Usage:
    python tools/evaluate.py scenarios/*.toml [--json report.json] [--out .cache/scenarios]
                             [--slack 10]

    from tools.evaluate import evaluate_scenario, match_tickets, rule_stats

Seeded sets (recipe names ``s<seed>_<rule>_<what>``, as tools/hard_set.py writes them) are also
reported per seed, with the mean and the worst case over seeds per rule; scenarios without truth
events (negatives) give false tickets per camera-hour; truth events that name their placement give
the smallest object found.

Matching: a truth event (rule, zone, start, end) is detected by the first ``opened`` ticket of
the same rule and zone whose open time lies in [start, end + slack] and that no earlier truth
event took; ``opened`` tickets left over are false positives. Time-to-open is open - start;
time-to-clear is clear - end, for truth events with an end whose ticket's ``cleared`` message
came. Tickets ``updated`` are ignored.

The tool reports and exits 0 even when the agent misses everything: tests decide what is good
enough. It exits 2 only when a recipe cannot be read, before anything runs.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python tools/evaluate.py`: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.typedtoml import ConfigError
from tools import shipped_manifest
from tools.scenario_kit import DEFAULT_OUT, Truth, ensure_built, load_recipe

REPO = Path(__file__).resolve().parents[1]
MANIFEST = shipped_manifest()
START_TIME = "2026-01-01T00:00:00Z"  # the composite's first frame, so ticket time - this = media time
START_EPOCH = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
DEFAULT_SLACK_S = 10.0
# The size the litter target is set at (recall >= 0.9 for objects this wide or wider, as pasted).
TARGET_ACROSS_PX = 12

# The box the replay runs in: the bundled model with edge.toml's own settings.
EDGE_TOML = """\
cameras = [{camera}]

[agent]
id = "evaluate"

[storage]
dir = {storage}

[models.{model}]
manifest = {manifest}
threads = 2
min_score = 0.35
"""


class EvaluationError(RuntimeError):
    """The replay of a composite failed."""


@dataclass(frozen=True)
class TicketMessage:
    """One opened/updated/cleared message, its time in seconds of the composite."""

    ticket_id: str
    event: str
    rule: str
    zone: str
    t: float
    reason: str = ""  # the message's reason: "evidence" for a clip attached later, the changed facts, ...


@dataclass(frozen=True)
class Match:
    """A truth event and the ticket that detected it (ticket_id None: missed)."""

    truth: Truth
    ticket_id: str | None = None
    open_s: float | None = None
    clear_s: float | None = None

    @property
    def detected(self) -> bool:
        return self.ticket_id is not None

    @property
    def time_to_open_s(self) -> float | None:
        return None if self.open_s is None else self.open_s - self.truth.start_s

    @property
    def time_to_clear_s(self) -> float | None:
        """clear - end; negative when the ticket cleared while the event was still going on."""
        if self.clear_s is None or self.truth.end_s is None:
            return None
        return self.clear_s - self.truth.end_s


@dataclass(frozen=True)
class Matching:
    matches: tuple[Match, ...]
    false_positives: tuple[TicketMessage, ...]  # the unmatched opened messages


@dataclass(frozen=True)
class RuleStats:
    rule: str
    truth_events: int
    detected: int
    false_positives: int
    precision: float | None  # None: no ticket opened
    recall: float | None  # None: no truth event
    open_mean_s: float | None
    open_max_s: float | None
    clear_mean_s: float | None
    clear_max_s: float | None


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    recipe: Path
    video: Path
    matching: Matching | None  # None when the replay failed
    reused: bool  # the composite came from the cache
    build_s: float
    replay_s: float
    duration_s: float  # of the composite: camera time the agent watched
    rules: tuple[str, ...]  # the rule types of the camera's zones
    sizes: tuple[dict, ...]  # each placement as pasted (across_px, height_px, area_px), from the truth file
    error: str | None = None

    @property
    def seed(self) -> int | None:
        """The seed of a generated recipe's name (``s<seed>_...``), else None."""
        found = re.match(r"s(\d+)_", self.name)
        return int(found.group(1)) if found else None


def match_tickets(truth: Iterable[Truth], messages: Iterable[TicketMessage],
                  slack_s: float = DEFAULT_SLACK_S) -> Matching:
    """Match truth events to opened tickets as described in the module docstring.

    Truth events are served in order of start, each taking the earliest free ticket in its window,
    so with two events in one zone the first cannot take the second's ticket unless it opened in
    the first's window too, which is what a ticket that opens late means.
    """
    messages = sorted(messages, key=lambda m: m.t)
    opened = [m for m in messages if m.event == "opened"]
    cleared: dict[str, float] = {}
    for m in messages:
        if m.event == "cleared":
            cleared.setdefault(m.ticket_id, m.t)
    taken: set[str] = set()
    matches = []
    for event in sorted(truth, key=lambda e: e.start_s):
        latest = float("inf") if event.end_s is None else event.end_s + slack_s
        ticket = next((m for m in opened if m.ticket_id not in taken and m.rule == event.rule
                       and m.zone == event.zone and event.start_s <= m.t <= latest), None)
        if ticket is None:
            matches.append(Match(event))
            continue
        taken.add(ticket.ticket_id)
        matches.append(Match(event, ticket.ticket_id, ticket.t, cleared.get(ticket.ticket_id)))
    return Matching(tuple(matches), tuple(m for m in opened if m.ticket_id not in taken))


def rule_stats(matchings: Iterable[Matching]) -> list[RuleStats]:
    """Per rule, over all scenarios: counts, precision, recall, time-to-open and time-to-clear."""
    matches: dict[str, list[Match]] = {}
    false_positives: dict[str, int] = {}
    for matching in matchings:
        for m in matching.matches:
            matches.setdefault(m.truth.rule, []).append(m)
        for fp in matching.false_positives:
            false_positives[fp.rule] = false_positives.get(fp.rule, 0) + 1
            matches.setdefault(fp.rule, [])
    stats = []
    for rule, found in sorted(matches.items()):
        detected = sum(m.detected for m in found)
        fps = false_positives.get(rule, 0)
        opens = [m.time_to_open_s for m in found if m.time_to_open_s is not None]
        clears = [m.time_to_clear_s for m in found if m.time_to_clear_s is not None]
        stats.append(RuleStats(
            rule=rule, truth_events=len(found), detected=detected, false_positives=fps,
            precision=detected / (detected + fps) if detected + fps else None,
            recall=detected / len(found) if found else None,
            open_mean_s=statistics.fmean(opens) if opens else None, open_max_s=max(opens, default=None),
            clear_mean_s=statistics.fmean(clears) if clears else None, clear_max_s=max(clears, default=None)))
    return stats


def read_tickets(stdout: str) -> list[TicketMessage]:
    """The replay's stdout (one ticket JSON a line) as messages timed from the first frame."""
    messages = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)
        moment = datetime.fromisoformat(doc["event_time"]).timestamp()
        messages.append(TicketMessage(doc["ticket_id"], doc["event"], doc["rule"], doc["zone_id"],
                                      moment - START_EPOCH, doc.get("reason", "")))
    return messages


def replay(video: Path, camera_file: Path, camera_id: str, manifest: Path = MANIFEST,
           store: Path | None = None) -> list[TicketMessage]:
    """Run ``edge-agent replay`` over ``video`` in a throwaway box, as its own process: a crash or
    a leak in one scenario cannot touch the next, and what runs is exactly the shipped CLI.
    ``store``: keep the replay's outbox and evidence there (tools/make_fixtures.py reads the
    messages as they would be sent)."""
    model = tomllib.loads(camera_file.read_text()).get("model", "default")
    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        edge = Path(tmp) / "edge.toml"
        edge.write_text(EDGE_TOML.format(camera=json.dumps(str(camera_file)),
                                         storage=json.dumps(str(Path(tmp) / "var")), model=model,
                                         manifest=json.dumps(str(manifest.resolve()))))
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", "-c", str(edge), "replay", str(video), "--camera", camera_id,
             "--start-time", START_TIME, *(["--store", str(store)] if store is not None else [])],
            check=False, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise EvaluationError(f"edge-agent replay exited with {done.returncode}: {tail}")
    return read_tickets(done.stdout)


def evaluate_scenario(recipe_path: Path, out_dir: Path = DEFAULT_OUT, slack_s: float = DEFAULT_SLACK_S,
                      manifest: Path = MANIFEST) -> ScenarioResult:
    """Build (or reuse) one scenario's composite, replay it and match its tickets."""
    recipe = load_recipe(recipe_path)
    started = time.monotonic()
    composite = ensure_built(recipe, out_dir)
    built = time.monotonic()
    try:
        messages = replay(composite.video, composite.camera_file, composite.camera_id, manifest)
        matching, error = match_tickets(composite.truth, messages, slack_s), None
    except EvaluationError as exc:
        matching, error = None, str(exc)
    sizes = json.loads(composite.truth_file.read_text()).get("placements", [])
    rules = tuple(sorted({zone["rule"]["type"] for zone in recipe.camera.get("zones", {}).values()}))
    return ScenarioResult(name=recipe.name, recipe=recipe.path, video=composite.video, matching=matching,
                          reused=not composite.built, build_s=built - started,
                          replay_s=time.monotonic() - built, duration_s=composite.duration_s, rules=rules,
                          sizes=tuple(sizes), error=error)


# --------------------------------------------------------------------------- report

def _size(result: ScenarioResult, match: Match) -> dict | None:
    index = match.truth.placement
    return result.sizes[index] if index is not None and index < len(result.sizes) else None


def across_seeds(by_seed: dict[int, list[RuleStats]]) -> list[dict]:
    """Per rule, over the seeds that have it: the mean and the worst of recall, precision,
    time-to-open and time-to-clear (worst: the lowest rate, the longest mean time). A seed where a
    rule had no truth event or opened nothing adds nothing to that figure."""
    rules: dict[str, list[RuleStats]] = {}
    for stats in by_seed.values():
        for s in stats:
            rules.setdefault(s.rule, []).append(s)
    rows = []
    for rule, stats in sorted(rules.items()):
        row = {"rule": rule, "seeds": len(stats)}
        for key, worst in (("recall", min), ("precision", min), ("open_mean_s", max), ("clear_mean_s", max)):
            values = [getattr(s, key) for s in stats if getattr(s, key) is not None]
            row[f"{key}_mean"] = statistics.fmean(values) if values else None
            row[f"{key}_worst"] = worst(values) if values else None
        rows.append(row)
    return rows


def negatives(results: list[ScenarioResult]) -> list[dict]:
    """Per rule: false tickets per camera-hour on the scenarios that have no truth event at all
    (every ticket there is false), over their total duration; and over every scenario, for scale."""
    rows = []
    for rule in sorted({rule for r in results for rule in r.rules}):
        watched = [(r, r.matching) for r in results if rule in r.rules and r.matching is not None]
        empty = [(r, m) for r, m in watched if not m.matches]
        hours, all_hours = sum(r.duration_s for r, _ in empty) / 3600, sum(r.duration_s for r, _ in watched) / 3600
        false = sum(fp.rule == rule for _, m in empty for fp in m.false_positives)
        all_false = sum(fp.rule == rule for _, m in watched for fp in m.false_positives)
        rows.append({"rule": rule, "negative_scenarios": len(empty), "negative_hours": hours,
                     "false_tickets": false, "per_camera_hour": false / hours if hours else None,
                     "all_hours": all_hours, "all_false_tickets": all_false,
                     "all_per_camera_hour": all_false / all_hours if all_hours else None})
    return rows


def object_sizes(results: list[ScenarioResult], rule: str = "litter") -> dict:
    """How small the ``rule``'s objects were that were found, and the largest missed ones."""
    found: list[dict] = []
    missed: list[dict] = []
    for r in results:
        for m in r.matching.matches if r.matching is not None else ():
            size = _size(r, m)
            if m.truth.rule == rule and size is not None:
                (found if m.detected else missed).append(size)

    def least(sizes, key):
        return min((s[key] for s in sizes), default=None)

    def most(sizes, key):
        return max((s[key] for s in sizes), default=None)

    large_found = sum(s["across_px"] >= TARGET_ACROSS_PX for s in found)
    large = large_found + sum(s["across_px"] >= TARGET_ACROSS_PX for s in missed)
    return {"rule": rule, "found": len(found), "missed": len(missed),
            "target_across_px": TARGET_ACROSS_PX, "found_at_target": large_found, "at_target": large,
            "smallest_found_across_px": least(found, "across_px"), "smallest_found_area_px": least(found, "area_px"),
            "largest_missed_across_px": most(missed, "across_px"), "largest_missed_area_px": most(missed, "area_px")}


def report(results: list[ScenarioResult], slack_s: float, manifest: Path = MANIFEST) -> dict:
    """The JSON report: per rule, per seed and over seeds, negatives, object sizes, then per
    scenario with every truth event and false positive."""
    scenarios = []
    for r in results:
        entry: dict[str, Any] = {"name": r.name, "recipe": str(r.recipe), "video": str(r.video), "seed": r.seed,
                 "duration_s": r.duration_s, "reused": r.reused,
                 "build_s": round(r.build_s, 2), "replay_s": round(r.replay_s, 2), "error": r.error}
        if r.matching is not None:
            entry["events"] = [{**asdict(m.truth), "ticket_id": m.ticket_id, "open_s": m.open_s,
                                "clear_s": m.clear_s, "time_to_open_s": m.time_to_open_s,
                                "time_to_clear_s": m.time_to_clear_s, "size": _size(r, m)}
                               for m in r.matching.matches]
            entry["false_positives"] = [asdict(fp) for fp in r.matching.false_positives]
        scenarios.append(entry)
    stats = rule_stats(r.matching for r in results if r.matching is not None)
    seeds = sorted({r.seed for r in results if r.seed is not None})
    by_seed = {seed: rule_stats(r.matching for r in results if r.seed == seed and r.matching is not None)
               for seed in seeds}
    where = manifest.resolve()
    return {"start_time": START_TIME, "slack_s": slack_s,
            "model": str(where.relative_to(REPO) if where.is_relative_to(REPO) else where),
            "rules": [asdict(s) for s in stats],
            "by_seed": {str(seed): [asdict(s) for s in by_seed[seed]] for seed in seeds},
            "across_seeds": across_seeds(by_seed) if seeds else [],
            "negatives": negatives(results), "litter_sizes": object_sizes(results),
            "scenarios": scenarios}


def _cell(value: float | None, unit: str = "") -> str:
    return "—" if value is None else f"{value:.2f}{unit}"


def _rule_rows(stats: list[dict], seed: str | None = None) -> list[str]:
    first = f"| {seed} " if seed is not None else ""
    return [f"{first}| {s['rule']} | {s['truth_events']} | {s['detected']} | {s['false_positives']} | "
            f"{_cell(s['precision'])} | {_cell(s['recall'])} | "
            f"{_cell(s['open_mean_s'], ' s')} / {_cell(s['open_max_s'], ' s')} | "
            f"{_cell(s['clear_mean_s'], ' s')} / {_cell(s['clear_max_s'], ' s')} |" for s in stats]


RULE_HEADER = ("| rule | truth events | detected | false positives | precision | recall | "
               "time-to-open mean / max | time-to-clear mean / max |")


def markdown(doc: dict) -> str:
    lines = [RULE_HEADER, "|---|---|---|---|---|---|---|---|", *_rule_rows(doc["rules"]), ""]
    if doc["by_seed"]:
        lines += ["Per seed:", "", "| seed " + RULE_HEADER, "|---|---|---|---|---|---|---|---|---|"]
        for seed, stats in doc["by_seed"].items():
            lines += _rule_rows(stats, seed)
        lines += ["", "Over seeds, mean / worst:", "",
                  "| rule | seeds | recall | precision | time-to-open (mean per seed) | time-to-clear (mean per seed) |",
                  "|---|---|---|---|---|---|"]
        for row in doc["across_seeds"]:
            cells = [f"{_cell(row[k + '_mean'], unit)} / {_cell(row[k + '_worst'], unit)}"
                     for k, unit in (("recall", ""), ("precision", ""), ("open_mean_s", " s"), ("clear_mean_s", " s"))]
            lines.append(f"| {row['rule']} | {row['seeds']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["False tickets per camera-hour:", "",
              "| rule | negative scenarios | hours | false tickets | per camera-hour | all scenarios: hours, false, per hour |",
              "|---|---|---|---|---|---|"]
    for row in doc["negatives"]:
        lines.append(f"| {row['rule']} | {row['negative_scenarios']} | {row['negative_hours']:.3f} | "
                     f"{row['false_tickets']} | {_cell(row['per_camera_hour'])} | {row['all_hours']:.3f}, "
                     f"{row['all_false_tickets']}, {_cell(row['all_per_camera_hour'])} |")
    sizes = doc["litter_sizes"]
    if sizes["found"] or sizes["missed"]:
        lines += ["", (f"Litter objects: {sizes['found']} found, {sizes['missed']} missed; smallest found "
                  f"{sizes['smallest_found_across_px'] or '—'} px across / {sizes['smallest_found_area_px'] or '—'} px²; "
                  f"largest missed {sizes['largest_missed_across_px'] or '—'} px across / "
                  f"{sizes['largest_missed_area_px'] or '—'} px²; {sizes['target_across_px']} px across or "
                  f"more: {sizes['found_at_target']} of {sizes['at_target']} found.")]
    lines.append("")
    for sc in doc["scenarios"]:
        how = "reused" if sc["reused"] else "built"
        lines.append(f"- **{sc['name']}** ({how} in {sc['build_s']:.1f} s, replayed in {sc['replay_s']:.1f} s)"
                     + (f": ERROR {sc['error']}" if sc["error"] else ""))
        for e in sc.get("events", []):
            end = "end" if e["end_s"] is None else f"{e['end_s']:g} s"
            seen = (f"opened at {e['open_s']:.1f} s, cleared at {_cell(e['clear_s'], ' s')}"
                    if e["ticket_id"] else "MISSED")
            size = f" ({e['size']['across_px']} px across, {e['size']['area_px']} px²)" if e.get("size") else ""
            lines.append(f"  - {e['rule']} in {e['zone']}, {e['start_s']:g} s to {end}{size}: {seen}")
        for fp in sc.get("false_positives", []):
            lines.append(f"  - false positive: {fp['rule']} in {fp['zone']} opened at {fp['t']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="+", type=Path, help="scenario recipe TOML files")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"composites folder (default {DEFAULT_OUT})")
    parser.add_argument("--slack", type=float, default=DEFAULT_SLACK_S,
                        help="seconds after a truth event's end a ticket may still open and count")
    parser.add_argument("--manifest", type=Path, default=MANIFEST,
                        help=f"the detector's model manifest (default {MANIFEST.relative_to(REPO)})")
    args = parser.parse_args(argv)
    try:
        for path in args.recipes:  # every recipe is checked before the first long build
            load_recipe(path)
    except (ConfigError, ValueError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    results = []
    for path in args.recipes:
        result = evaluate_scenario(path, args.out, args.slack, args.manifest)
        print(f"{result.name}: {'reused' if result.reused else 'built'} in {result.build_s:.1f} s, "
              f"replayed in {result.replay_s:.1f} s", file=sys.stderr)
        results.append(result)
    doc = report(results, args.slack, args.manifest)
    print(markdown(doc))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
