"""Loading presets: the format, the built-in presets, and one exact message per bad preset file."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch

import zplug
from zplug.errors import SpecError, UnknownNameError, ZplugError
from zplug.preset import REQUIRED, ParamRef, Preset, TensorLiteral, dump_toml, parse_toml

BAD = Path(__file__).parent / "bad_specs"
DOCS = Path(__file__).parent.parent / "docs" / "presets.md"
BAD_FILES = sorted(BAD.glob("*.toml"))


def _expected(path: Path, registry) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message>'"
    message = first[len("# expect: ") :]
    lists = {
        "{rules}": registry.rules,
        "{canonizers}": registry.canonizers,
        "{layer_types}": registry.layer_types,
        "{presets}": registry.presets,
    }
    for placeholder, names in lists.items():
        message = message.replace(placeholder, ", ".join(sorted(names)))
    return f"{path}: " + message.replace("{file}", str(path))


def test_corpus_is_large_enough():
    assert len(BAD_FILES) >= 25


@pytest.mark.parametrize("path", BAD_FILES, ids=lambda p: p.stem)
def test_bad_preset_gives_its_exact_message(registry, path):
    with pytest.raises(SpecError) as info:
        zplug.load_preset(path)
    message = str(info.value)
    assert "\n" not in message
    assert message == _expected(path, registry)


def test_syntax_errors_keep_the_line_number(registry):
    with pytest.raises(SpecError, match=r"at line 5, column 1\)$"):
        zplug.load_preset(BAD / "syntax_unclosed_array.toml")


# -- the built-in presets ------------------------------------------------------------------------
ZENNIT_PARAMS = {  # Zennit 0.5.1's constructor defaults (canonizers and maps excluded)
    "epsilon_gamma_box": {"low": REQUIRED, "high": REQUIRED, "epsilon": 1e-6, "gamma": 0.25, "stabilizer": 1e-6,
                          "zero_params": []},
    "epsilon_plus": {"epsilon": 1e-6, "stabilizer": 1e-6, "zero_params": []},
    "epsilon_alpha2_beta1": {"epsilon": 1e-6, "stabilizer": 1e-6, "zero_params": []},
    "epsilon_plus_flat": {"epsilon": 1e-6, "stabilizer": 1e-6, "zero_params": []},
    "epsilon_alpha2_beta1_flat": {"epsilon": 1e-6, "stabilizer": 1e-6, "zero_params": []},
    "deconvnet": {},
    "guided_backprop": {},
    "excitation_backprop": {"stabilizer": 1e-6, "zero_params": []},
    "beta_smooth": {"beta_smooth": 10.0, "zero_params": []},
}


@pytest.mark.parametrize("name", sorted(ZENNIT_PARAMS))
def test_builtin_preset_has_zennits_parameters(registry, name):
    preset = zplug.load_preset(name)
    assert preset.name == name and preset.summary
    assert {k: d.default for k, d in preset.params.items()} == ZENNIT_PARAMS[name]
    assert all(d.doc for d in preset.params.values())
    assert preset.canonizers == "auto"
    assert preset.file == f"zplug:presets/{name}.toml"


def test_presets_lists_builtins_with_summaries(registry):
    listing = zplug.presets()
    assert set(ZENNIT_PARAMS) <= set(listing)
    assert all(isinstance(s, str) and s and not s.startswith("(invalid") for s in listing.values())
    assert zplug.presets is zplug.preset.list_presets and not isinstance(zplug.presets, types.ModuleType)


def test_epsilon_routes_only_to_epsilon_rules(registry):
    """``epsilon`` feeds epsilon rules, ``stabilizer`` every other rule, ``zero_params`` every rule that has it."""
    for name in ZENNIT_PARAMS:
        preset = zplug.load_preset(name)
        for entry in preset.entries():
            refs = {k: v.param for k, v in entry.rule.params.items() if isinstance(v, ParamRef)}
            if "epsilon" in refs.values():
                assert entry.rule.name == "epsilon" and refs["epsilon"] == "epsilon"
            if "stabilizer" in refs:
                assert refs["stabilizer"] == "stabilizer"
            fields = registry.rules[entry.rule.name].__attrs_attrs__
            if any(f.name == "zero_params" for f in fields):
                assert refs.get("zero_params") == "zero_params", (name, entry.where)


def test_unknown_preset_name_suggests(registry):
    with pytest.raises(UnknownNameError, match=r"unknown preset 'epsilon_pluss' \(did you mean 'epsilon_plus'\?"):
        zplug.load_preset("epsilon_pluss")


def test_missing_file(registry, tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(SpecError) as info:
        zplug.load_preset(path)
    assert str(info.value) == f"{path}: no such preset file"


def test_not_utf8(registry, tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes(b"schema = 1\nsummary = \"caf\xe9\"\n")
    with pytest.raises(SpecError, match=r"latin.toml: not UTF-8 text \(byte 25\)$"):
        zplug.load_preset(path)


# -- format features -----------------------------------------------------------------------------
def _write(tmp_path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_extends_merges_params_entries_and_canonizers(registry, tmp_path):
    base = _write(tmp_path, "base.toml", """
schema = 1
summary = "base"
canonizers = ["merge_batchnorm"]
[params]
epsilon = 0.1
[[layer_map]]
types = ["linear"]
rule = { name = "epsilon", epsilon = { param = "epsilon" } }
""")
    child = _write(tmp_path, "child.toml", """
schema = 1
extends = "base.toml"
[params]
epsilon = 0.5
[[layer_map]]
types = ["torch.nn.Linear"]
rule = "zplus"
""")
    preset = zplug.load_preset(child)
    assert preset.name == "child" and preset.params["epsilon"].default == 0.5
    assert [(e.origin, e.rule.name) for e in preset.layer_map] == [("child", "zplus"), ("base", "epsilon")]
    assert [c.name for c in preset.canonizers] == ["merge_batchnorm"]
    assert zplug.load_preset(base).params["epsilon"].default == 0.1
    _write(tmp_path, "none.toml", 'schema = 1\nextends = "base.toml"\ncanonizers = []\n')
    assert zplug.load_preset(tmp_path / "none.toml").canonizers == ()


def test_extends_a_builtin_and_uses_its_params(registry, tmp_path):
    path = _write(tmp_path, "mine.toml", """
schema = 1
extends = "epsilon_plus"
[[name_map]]
names = ["head"]
rule = { name = "epsilon", epsilon = { param = "epsilon" } }
""")
    preset = zplug.load_preset(path)
    assert set(preset.params) == {"epsilon", "stabilizer", "zero_params"}
    assert preset.canonizers == "auto"
    assert preset.label(preset.layer_map[0]) == "epsilon_plus:layer_map[0]"
    assert preset.label(preset.name_map[0]) == "name_map[0]"


def test_error_in_a_child_names_the_child_file(registry, tmp_path):
    path = _write(tmp_path, "child.toml", """
schema = 1
extends = "epsilon_plus"
[[layer_map]]
types = ["linear"]
rule = { name = "epsilon", epsilon = { param = "epsilonn" } }
""")
    with pytest.raises(SpecError) as info:
        zplug.load_preset(path)
    assert str(info.value) == (
        f"{path}: layer_map[0].rule.epsilon.param: no parameter 'epsilonn' (did you mean 'epsilon'? "
        "known: epsilon, stabilizer, zero_params; declare it under [params])"
    )


def test_tensor_values(registry, tmp_path):
    path = _write(tmp_path, "t.toml", """
schema = 1
[params]
low = { tensor = [-1.0, -2.0, -3.0], shape = [1, 3, 1, 1] }
high = { default = { tensor = 2.5, dtype = "float64" }, doc = "upper bound" }
""")
    preset = zplug.load_preset(path)
    assert preset.params["low"].default == TensorLiteral((-1.0, -2.0, -3.0), (1, 3, 1, 1), "float32")
    assert preset.params["high"].default == TensorLiteral((2.5,), (), "float64")
    low, high = preset.bind({})["low"], preset.bind({})["high"]  # tensors once the preset is bound
    assert low.shape == (1, 3, 1, 1) and low.dtype == torch.float32 and low.flatten().tolist() == [-1, -2, -3]
    assert high.dtype == torch.float64 and high.item() == 2.5 and preset.params["high"].doc == "upper bound"


def test_dump_toml_round_trips_values():
    doc = {
        "schema": 1,
        "summary": 'quote " backslash \\ unicode \u00e9 del \x7f',
        "canonizers": [{"name": "x", "pairs": [["a", "b"]]}],
        "name_map": [{"names": ["a.0", ""], "rule": {"name": "epsilon", "epsilon": float("inf"), "flag": True}}],
    }
    assert parse_toml(dump_toml(doc)) == doc
    assert parse_toml(dump_toml({"x": float("nan")}))["x"] != 0  # nan survives


def test_preset_from_toml_directly(registry):
    preset = Preset.from_toml('schema = 1\n[[layer_map]]\ntypes = ["linear"]\nrule = "epsilon"\n', name="inline")
    assert preset.file is None and preset.layer_map[0].rule.name == "epsilon"
    with pytest.raises(SpecError, match=r"^layer_map\[0\]\.rule: unknown rule 'eps'"):
        Preset.from_toml('schema = 1\n[[layer_map]]\ntypes = ["linear"]\nrule = "eps"\n', name="inline")


def test_a_broken_plugin_preset_is_listed_as_invalid(registry, tmp_path):
    bad = _write(tmp_path, "broken.toml", "schema = 7\n")

    class Plugin:
        @staticmethod
        @zplug.hookimpl
        def zplug_register_presets():
            return [bad]

    registry.register(Plugin, "broken_plugin")
    listing = zplug.presets()
    assert listing["broken"].startswith("(invalid: broken_plugin:")
    assert "unsupported schema 7" in listing["broken"]


# -- docs/presets.md: every TOML example loads ----------------------------------------------------
def _doc_examples() -> list[tuple[str, str]]:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    examples = []
    for block in blocks:
        first = block.splitlines()[0]
        match = re.match(r"# (\S+\.toml)", first)
        if match:
            examples.append((match.group(1), block))
    return examples


def test_docs_have_examples():
    assert len(_doc_examples()) >= 4


@pytest.mark.parametrize("name,text", _doc_examples(), ids=[n for n, _ in _doc_examples()])
def test_docs_example_loads(registry, tmp_path, name, text):
    for other, other_text in _doc_examples():  # examples may extend each other
        _write(tmp_path, other, other_text)
    path = tmp_path / name
    try:
        preset = zplug.load_preset(path)
    except ZplugError as exc:  # pragma: no cover - the message is the point
        pytest.fail(f"docs/presets.md example {name} does not load: {exc}")
    assert preset.name == Path(name).stem
