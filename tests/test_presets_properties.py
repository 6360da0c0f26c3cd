"""Property tests: random presets round-trip through ``to_toml``; mutated TOML fails only with ZplugError."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import zplug
from zplug.errors import ZplugError
from zplug.preset import Preset, dump_toml
from zplug.registry import PluginRegistry

REGISTRY = PluginRegistry(autoload=False)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PRESET_DIR = Path(zplug.__file__).parent / "preset" / "presets"

# -- random models --------------------------------------------------------------------------------
LAYERS = {
    "linear": lambda: nn.Linear(4, 4),
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "bn": lambda: nn.BatchNorm1d(4),
    "dropout": nn.Dropout,
    "conv": lambda: nn.Conv1d(4, 4, 1),
    "avgpool": lambda: nn.AvgPool1d(1),
}


@st.composite
def models(draw, depth: int = 0) -> nn.Module:
    size = draw(st.integers(1, 5))
    children = []
    for _ in range(size):
        if depth < 2 and draw(st.integers(0, 5)) == 0:
            children.append(draw(models(depth + 1)))
        else:
            children.append(LAYERS[draw(st.sampled_from(sorted(LAYERS)))]())
    return nn.Sequential(*children)


# -- random presets -------------------------------------------------------------------------------
TYPES = ["convolution", "linear", "affine", "batchnorm", "avgpool", "activation", "torch.nn.ReLU", "torch.nn.Module",
         "torch.nn.Sequential"]
PARAMS = {"eps": 0.25, "stab": 1e-3, "gam": 0.5, "zero": ["bias"]}


def _number(name: str, values) -> st.SearchStrategy:
    return st.one_of(st.sampled_from(values), st.just({"param": name}))


RULES = st.one_of(
    st.just("pass"),
    st.just("norm"),
    st.fixed_dictionaries(
        {"name": st.just("epsilon")},
        optional={"epsilon": _number("eps", [0.0, 1e-6, 0.1]), "zero_params": st.just({"param": "zero"})},
    ),
    st.fixed_dictionaries({"name": st.just("zplus")}, optional={"stabilizer": _number("stab", [1e-6, 1e-2])}),
    st.fixed_dictionaries({"name": st.just("gamma")}, optional={"gamma": _number("gam", [0.0, 0.25, 3.0])}),
    st.fixed_dictionaries({"name": st.just("alpha_beta"), "alpha": st.just(2.0), "beta": st.just(1.0)}),
    st.fixed_dictionaries({"name": st.just("flat")}, optional={"zero_params": st.just(["bias"])}),
    st.fixed_dictionaries({"name": st.just("zbox"), "low": st.just(-1.0), "high": st.just({"tensor": [2.0]})}),
)
ENTRY = st.fixed_dictionaries({"types": st.lists(st.sampled_from(TYPES), min_size=1, max_size=3), "rule": RULES})


@st.composite
def presets(draw, names: list[str]) -> dict:
    doc: dict = {"schema": 1, "summary": "random", "canonizers": [], "params": dict(PARAMS)}
    for table in ("first_map", "last_map", "layer_map"):
        entries = draw(st.lists(ENTRY, max_size=4))
        if entries:
            doc[table] = entries
    patterns = st.one_of(st.sampled_from(["*", "0", "?", "*.0", "1.*", "[01]"]), st.sampled_from(names))
    name_map = draw(st.lists(st.fixed_dictionaries({"names": st.lists(patterns, min_size=1, max_size=3),
                                                    "rule": RULES}), max_size=3))
    if name_map:
        doc["name_map"] = name_map
    return doc


@SETTINGS
@given(data=st.data())
def test_to_toml_reproduces_the_mapping(data):
    model = data.draw(models())
    names = [n for n, _ in model.named_modules()]
    doc = data.draw(presets(names))
    overrides = data.draw(st.fixed_dictionaries({}, optional={"eps": st.floats(0, 1), "gam": st.floats(0, 4)}))
    preset = Preset.from_toml(dump_toml(doc), name="random", registry=REGISTRY)
    mapping = zplug.resolve(model, preset, registry=REGISTRY, **overrides)
    explicit = Preset.from_toml(mapping.to_toml(), name="explicit", registry=REGISTRY)
    again = zplug.resolve(model, explicit, registry=REGISTRY)
    assert again.same_as(mapping)
    assert [e.rule_name for e in again] == [e.rule_name for e in mapping]
    assert again.unmapped == mapping.unmapped


# -- mutations ------------------------------------------------------------------------------------
SOURCES = sorted(PRESET_DIR.glob("*.toml")) + sorted((Path(__file__).parent / "bad_specs").glob("*.toml"))
TOKENS = ['"', "'", "[", "]", "[[", "]]", "{", "}", "=", ",", ".", "\n", "#", "-", "1", "1e309", "nan", "true",
          "1979-05-27", '"x"', "name", "param", "types", "rule", "names", "schema", "params", "extends", "tensor",
          "shape", "required", "default", "canonizers", '"auto"', '"epsilon"', '"linear"', '"torch.nn.Linear"',
          '"torch"', '"os.path"', '"bias"', "[]", "{}", "{ param = \"epsilon\" }", "layer_map", "first_map",
          "name_map", "last_map", "\\u0000", "\x00", "é", " "]


@st.composite
def mutated(draw) -> str:
    text = draw(st.sampled_from(SOURCES)).read_text(encoding="utf-8")
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        if kind == "insert":
            text = text[:position] + draw(st.sampled_from(TOKENS)) + text[position:]
        elif kind == "delete":
            text = text[:position] + text[position + draw(st.integers(1, 12)) :]
        elif kind == "replace":
            text = text[:position] + draw(st.sampled_from(TOKENS)) + text[position + draw(st.integers(1, 8)) :]
        else:
            lines = text.splitlines(keepends=True)
            if lines:
                i = draw(st.integers(0, len(lines) - 1))
                lines.insert(i, lines[i])
                text = "".join(lines)
    return text


MUTATION_MODEL = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3, 2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=mutated())
def test_mutated_presets_fail_only_with_zplug_errors(text):
    try:
        preset = Preset.from_toml(text, name="mutant", file="mutant.toml", registry=REGISTRY)
        if preset.extends is None:
            zplug.resolve(MUTATION_MODEL, preset, registry=REGISTRY, low=-1.0, high=1.0)
    except ZplugError as exc:  # anything else fails the test
        message = str(exc)
        assert message and "\n" not in message


@pytest.mark.parametrize("path", sorted(PRESET_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_builtin_presets_round_trip_through_dump(path):
    """Parsing a built-in preset, writing it with dump_toml and parsing again gives the same document."""
    from zplug.preset import parse_toml

    doc = parse_toml(path.read_text(encoding="utf-8"))
    assert parse_toml(dump_toml(doc)) == doc
