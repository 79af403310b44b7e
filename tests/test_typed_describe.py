"""typedtoml.describe: the rule forms of the calibration page come from the same field metadata
the loader checks, so a form cannot offer what the loader refuses or miss a bound."""

from __future__ import annotations

from agent.rules import rule_types
from agent.rules.litter import Params as LitterParams
from agent.rules.object_dwell import Params as DwellParams
from agent.typedtoml import describe, unit_of


def test_units_come_from_the_key_names():
    assert [unit_of(n) for n in ("min_dwell_s", "min_area_px", "area_m2", "px_per_m2", "analysis_fps",
                                 "min_length", "levels")] == ["s", "px", "m²", "px/m²", "fps", "", ""]


def test_a_rule_is_described_with_types_defaults_bounds_and_help():
    fields = {f["name"]: f for f in describe(DwellParams)}
    assert fields["classes"] == {"name": "classes", "type": "list:string", "optional": False, "required": True,
                                 "default": None, "help": fields["classes"]["help"], "unit": "",
                                 "ge": None, "gt": None, "le": None}
    assert fields["min_score"]["default"] == 0.4 and (fields["min_score"]["ge"], fields["min_score"]["le"]) == (0, 1)
    assert fields["clear_after_s"]["gt"] == 0 and fields["clear_after_s"]["unit"] == "s"
    litter = {f["name"]: f for f in describe(LitterParams)}
    assert litter["px_per_m2"]["optional"] and litter["px_per_m2"]["default"] is None
    assert "person" in litter["mover_classes"]["default"]  # a tuple default, as JSON: a list


def test_every_rule_describes_every_field_it_loads():
    for name, rule in rule_types().items():
        described = describe(rule.params)
        assert described, name
        assert all(f["type"] != "other" for f in described), (name, [f["name"] for f in described if f["type"] == "other"])
