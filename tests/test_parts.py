"""The part model shared by rules, canonizers and attributors (zplug.parts)."""

import subprocess
import sys

import attrs
import pytest
import torch

from zplug.attributors.base import Attributor
from zplug.canonizers.base import Canonizer
from zplug.errors import SpecError
from zplug.parts import Part, make_part, non_negative, parameter, parameter_info, positive_int
from zplug.rules import Rule


@attrs.frozen(kw_only=True)
class Scale(Part):
    name = "scale"
    summary = "multiply by a factor"
    factor: float = parameter(1.0, doc="the factor", kind="number >= 0", check=non_negative)
    steps: int = parameter(doc="how many steps", kind="integer >= 1", check=positive_int)


@pytest.mark.parametrize("base", [Rule, Canonizer, Attributor, Part])
def test_every_kind_of_part_prints_as_name_and_params(base):
    cls = attrs.frozen(kw_only=True)(
        type("Thing", (base,), {"name": "thing", "__annotations__": {"a": "float"}, "a": parameter(
            0.5, doc="a", kind="number")})
    )
    assert repr(cls()) == "thing(a=0.5)"
    assert repr(cls(a=torch.tensor([1.0, 2.0]))) == "thing(a=tensor([1.0, 2.0], shape=(2,)))"


def test_make_part_errors_name_the_parameter():
    assert make_part("widget", Scale, {"steps": 2}) == Scale(steps=2)
    with pytest.raises(SpecError, match=r"^widget 'scale' has no parameter 'factr' \(did you mean 'factor'\? "
                       r"valid: factor, steps\)$"):
        make_part("widget", Scale, {"factr": 1, "steps": 2})
    with pytest.raises(SpecError, match=r"^widget 'scale' needs parameter 'steps' \(how many steps\)$"):
        make_part("widget", Scale, {})
    with pytest.raises(SpecError, match=r"^widget 'scale': parameter 'factor' must be a number >= 0 \(got -1\)$"):
        make_part("widget", Scale, {"factor": -1, "steps": 1})
    with pytest.raises(SpecError, match=r"^widget 'scale': parameter 'steps' must be an integer >= 1 \(got 0\)$"):
        make_part("widget", Scale, {"steps": 0})


def test_parameter_info_describes_fields():
    info = parameter_info(Scale)
    assert info["factor"] == {"doc": "the factor", "kind": "number >= 0", "required": False, "default": 1.0}
    assert info["steps"]["required"] is True


def test_validators_are_public_in_zplug_rules():
    import zplug.parts
    import zplug.rules

    for name in ("parameter", "non_negative", "non_negative_or_callable", "number", "number_or_tensor", "names",
                 "to_names", "positive_int", "parameter_info"):
        assert getattr(zplug.rules, name) is getattr(zplug.parts, name)


def test_part_module_imports_no_torch():
    code = "import sys, zplug.parts; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
