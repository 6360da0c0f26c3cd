"""The plugin registry: lazy entry points, conflicts, blocked and broken plugins, every hook."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import types

import attrs
import pytest
import torch

import zplug
from zplug import hookimpl
from zplug.errors import PluginConflictError, PluginLoadError, UnknownNameError
from zplug.hookspecs import hook_names
from zplug.registry import BUILTIN_PLUGINS, PluginRegistry
from zplug.rules import Rule


# -- fakes: plugin modules, distributions and entry points, nothing installed ------------------
def make_plugin(module_name: str, *hooks) -> types.ModuleType:
    """Build a plugin module from hook implementations (functions named ``zplug_*``)."""
    module = types.ModuleType(module_name)
    for hook in hooks:
        setattr(module, hook.__name__, hookimpl(hook))
    return module


def rule_class(rule_name: str, class_name: str) -> type[Rule]:
    return attrs.frozen(kw_only=True)(type(class_name, (Rule,), {"name": rule_name, "summary": "test rule"}))


def registers_rules(*classes):
    def zplug_register_rules():
        return list(classes)

    return zplug_register_rules


class FakeDistribution:
    def __init__(self, name: str, version: str = "1.0") -> None:
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    """An entry point of the group ``zplug`` whose ``load()`` returns ``plugin`` (or raises it)."""

    group = "zplug"

    def __init__(self, name: str, plugin: object, dist: str | None = None) -> None:
        self.name = name
        self.value = f"{name}_module.plugin"
        self.dist = FakeDistribution(dist) if dist else None
        self.plugin = plugin
        self.loads = 0

    def load(self) -> object:
        self.loads += 1
        if isinstance(self.plugin, BaseException):
            raise self.plugin
        return self.plugin


@pytest.fixture
def entry_points(monkeypatch):
    """Install fake entry points: ``entry_points.add(name, plugin, dist)``; counts scans in ``.scans``."""

    class Installed(list):
        scans = 0

        def add(self, name, plugin, dist=None):
            ep = FakeEntryPoint(name, plugin, dist)
            self.append(ep)
            return ep

    installed = Installed()

    def fake_entry_points(*, group=None):
        installed.scans += 1
        return [ep for ep in installed if group is None or ep.group == group]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.delenv("ZPLUG_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("ZPLUG_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    return installed


Epsilon2A = rule_class("epsilon2", "Epsilon2A")
Epsilon2B = rule_class("epsilon2", "Epsilon2B")
Other = rule_class("other", "Other")


# -- import zplug stays light --------------------------------------------------------------------
def test_import_zplug_scans_no_entry_points_and_imports_no_torch():
    script = """
import importlib.metadata, json, sys
calls = []
importlib.metadata.entry_points = lambda *a, **k: calls.append(k) or []
import zplug
from zplug import hookimpl, PluginConflictError
heavy = ("torch", "zplug.registry", "zplug.rules", "zplug.engine")
print(json.dumps({"calls": calls, "heavy": sorted(m for m in heavy if m in sys.modules)}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {"calls": [], "heavy": []}


# -- lazy loading, once ----------------------------------------------------------------------------
def test_entry_points_load_on_first_use_and_only_once(entry_points):
    ep = entry_points.add("a", make_plugin("a_module", registers_rules(Epsilon2A)), dist="zplug-a")
    registry = PluginRegistry(autoload=True, disable=())
    assert (entry_points.scans, ep.loads) == (0, 0)

    assert registry.rules["epsilon2"] is Epsilon2A
    registry.rules, registry.presets, registry.plugins(), registry.load_entry_points()
    assert (entry_points.scans, ep.loads) == (1, 1)


def test_autoload_off_never_scans_entry_points(entry_points, monkeypatch):
    entry_points.add("a", make_plugin("a_module", registers_rules(Epsilon2A)))
    monkeypatch.setenv("ZPLUG_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = PluginRegistry()
    assert "epsilon2" not in registry.rules
    assert [p.name for p in registry.plugins(include_builtin=True)] == ["zplug"]
    assert entry_points.scans == 0


def test_plugin_info_names_distribution_version_module_and_hooks(entry_points):
    entry_points.add("a", make_plugin("a_module", registers_rules(Epsilon2A)), dist="zplug-a")
    (info,) = PluginRegistry(autoload=True, disable=()).plugins()
    assert info.to_dict() == {
        "name": "a",
        "distribution": "zplug-a",
        "version": "1.0",
        "builtin": False,
        "modules": ["a_module.plugin"],
        "hooks": ["zplug_register_rules"],
        "registered": {"rules": ["epsilon2"]},
        "error": None,
        "disabled": False,
        "extends_builtin": {},
    }


def test_builtins_are_one_plugin_named_zplug(registry):
    assert registry.plugins() == []
    (info,) = registry.plugins(include_builtin=True)
    assert (info.name, info.builtin, info.modules) == ("zplug", True, BUILTIN_PLUGINS)
    assert registry.rules.entry("zplug:epsilon").plugin == "zplug"


# -- conflicts -------------------------------------------------------------------------------------
def test_same_name_from_two_plugins_is_an_error_naming_both(entry_points):
    entry_points.add("a", make_plugin("a_module", registers_rules(Epsilon2A)))
    entry_points.add("b", make_plugin("b_module", registers_rules(Epsilon2B, Other)))
    registry = PluginRegistry(autoload=True, disable=())
    with pytest.raises(PluginConflictError) as info:
        registry.rules["epsilon2"]
    assert str(info.value) == (
        "rule 'epsilon2' is registered by plugins 'a' and 'b'; select one with 'a:epsilon2' or 'b:epsilon2', "
        "or disable a plugin with ZPLUG_DISABLE_PLUGINS"
    )
    assert registry.rules["a:epsilon2"] is Epsilon2A
    assert registry.rules["b:epsilon2"] is Epsilon2B
    assert registry.rules["other"] is Other
    assert "epsilon2" in registry.rules
    assert registry.conflicts() == {"rules": {"epsilon2": ["a", "b"]}}


def test_a_plugin_name_that_clashes_with_a_builtin_is_a_conflict_too(registry):
    registry.register(make_plugin("mine", registers_rules(rule_class("epsilon", "MyEpsilon"))), "mine")
    with pytest.raises(PluginConflictError, match="registered by plugins 'zplug' and 'mine'"):
        registry.rules["epsilon"]
    assert registry.rules["zplug:epsilon"].__name__ == "Epsilon"
    assert registry.rules["mine:epsilon"].__name__ == "MyEpsilon"


def test_two_distributions_with_one_entry_point_name_keep_the_first(entry_points):
    entry_points.add("a", make_plugin("a_module", registers_rules(Epsilon2A)), dist="zplug-a")
    second = entry_points.add("a", make_plugin("a2_module", registers_rules(Other)), dist="zplug-other")
    registry = PluginRegistry(autoload=True, disable=())
    with pytest.warns(RuntimeWarning):
        infos = registry.plugins()
    assert [(i.name, i.distribution, i.error) for i in infos] == [
        ("a", "zplug-a", "zplug-other also uses the plugin name 'a'; ignored")
    ]
    assert second.loads == 0


# -- blocking ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("blocked", ["b", "zplug-b"], ids=["entry-point-name", "distribution-name"])
@pytest.mark.parametrize("via", ["argument", "environment"])
def test_blocked_plugin_is_never_loaded(entry_points, monkeypatch, blocked, via):
    entry_points.add("a", make_plugin("a_module", registers_rules(Epsilon2A)), dist="zplug-a")
    b = entry_points.add("b", make_plugin("b_module", registers_rules(Epsilon2B)), dist="zplug-b")
    if via == "environment":
        monkeypatch.setenv("ZPLUG_DISABLE_PLUGINS", f" {blocked} ")
        registry = PluginRegistry(autoload=True)
    else:
        registry = PluginRegistry(autoload=True, disable=[blocked])
    assert registry.rules["epsilon2"] is Epsilon2A  # no conflict: b is not there
    assert [(p.name, p.disabled) for p in registry.plugins()] == [("a", False), ("b", True)]
    assert b.loads == 0


@pytest.mark.parametrize("written", ["ZPLUG_B", "zplug.b", "Zplug__B"])
def test_a_distribution_name_is_matched_the_way_pip_normalises_it(entry_points, written):
    b = entry_points.add("b", make_plugin("b_module", registers_rules(Epsilon2B)), dist="zplug-b")
    registry = PluginRegistry(autoload=True, disable=[written])
    assert "epsilon2" not in registry.rules and b.loads == 0


def test_a_disable_name_that_matches_nothing_is_warned_about(entry_points):
    entry_points.add("a", make_plugin("a_module", registers_rules(Epsilon2A)), dist="zplug-a")
    registry = PluginRegistry(autoload=True, disable=["zplug-aa", "a"])
    with pytest.warns(RuntimeWarning) as record:
        registry.load_entry_points()
    assert [str(w.message) for w in record] == [
        "ZPLUG_DISABLE_PLUGINS names 'zplug-aa', which match no installed plugin (installed: a; built-in modules: "
        + ", ".join(BUILTIN_PLUGINS) + ")"
    ]


def test_zplug_plugins_lists_a_disabled_plugin_as_disabled(entry_points, monkeypatch, capsys):
    from zplug.cli.plugins import format_plugin

    entry_points.add("b", make_plugin("b_module", registers_rules(Epsilon2B)), dist="zplug-b")
    registry = PluginRegistry(autoload=True, disable=["zplug-b"])
    (info,) = registry.plugins()
    assert format_plugin(info).splitlines()[0] == "b: zplug-b 1.0 [disabled]"
    assert info.to_dict()["disabled"] is True


# -- name clashes with built-ins -------------------------------------------------------------------
ClashingEpsilon = rule_class("epsilon", "ClashingEpsilon")


def test_a_third_party_rule_named_like_a_builtin_changes_no_builtin_preset(entry_points):
    import torch

    from zplug.rules.lrp import Epsilon

    entry_points.add("clash", make_plugin("clash_module", registers_rules(ClashingEpsilon)), dist="zplug-clash")
    registry = PluginRegistry(autoload=True)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2)).eval()
    mapping = zplug.resolve(model, "epsilon_plus", canonizers=[], registry=registry)
    assert type(mapping["0"].rule) is Epsilon
    assert registry.conflicts() == {"rules": {"epsilon": ["zplug", "clash"]}}


def test_the_clashing_name_itself_is_ambiguous_in_a_users_preset(entry_points, tmp_path):
    import torch

    entry_points.add("clash", make_plugin("clash_module", registers_rules(ClashingEpsilon)), dist="zplug-clash")
    registry = PluginRegistry(autoload=True)
    preset = tmp_path / "mine.toml"
    preset.write_text('schema = 1\n[[layer_map]]\ntypes = ["linear"]\nrule = "epsilon"\n')
    with pytest.raises(zplug.SpecError) as info:
        zplug.resolve(torch.nn.Sequential(torch.nn.Linear(3, 2)), preset, registry=registry)
    assert str(info.value) == (
        f"{preset}: layer_map[0].rule: rule 'epsilon' is registered by plugins 'zplug' and 'clash'; select one "
        "with 'zplug:epsilon' or 'clash:epsilon', or disable a plugin with ZPLUG_DISABLE_PLUGINS"
    )
    preset.write_text('schema = 1\n[[layer_map]]\ntypes = ["linear"]\nrule = "clash:epsilon"\n')
    assert zplug.load_preset(preset, registry=registry).layer_map[0].rule.name == "clash:epsilon"


def test_a_plugin_adding_to_a_builtin_layer_type_is_reported(entry_points):
    def zplug_register_layer_types():
        return {"activation": ["torch.nn.Conv2d"], "own": ["torch.nn.Conv2d"]}

    entry_points.add("widen", make_plugin("widen_module", zplug_register_layer_types), dist="zplug-widen")
    registry = PluginRegistry(autoload=True)
    (info,) = registry.plugins()
    assert info.extends_builtin == {"activation": ("torch.nn.Conv2d",)}
    from zplug.cli.plugins import format_plugin

    assert (
        "  changes built-in layer type 'activation' (and so the built-in presets): adds torch.nn.Conv2d"
        in format_plugin(info).splitlines()
    )


def test_a_builtin_module_can_be_blocked(entry_points):
    registry = PluginRegistry(autoload=False, disable=["zplug.layertypes"])
    assert "convolution" not in registry.layer_types
    assert "zplug.layertypes" not in registry.plugins(include_builtin=True)[0].modules
    assert "epsilon" in registry.rules


# -- broken plugins -------------------------------------------------------------------------------
def test_plugin_that_fails_to_import_is_reported_and_the_rest_works(entry_points):
    entry_points.add("broken", ModuleNotFoundError("No module named 'missing_dep'"), dist="zplug-broken")
    entry_points.add("a", make_plugin("a_module", registers_rules(Epsilon2A)), dist="zplug-a")
    registry = PluginRegistry(autoload=True, disable=())
    with pytest.warns(RuntimeWarning, match="zplug plugin 'broken' failed: cannot load broken_module.plugin"):
        assert registry.rules["epsilon2"] is Epsilon2A
    a, broken = registry.plugins()  # sorted by name
    assert (broken.name, broken.distribution, broken.version) == ("broken", "zplug-broken", "1.0")
    assert broken.registered == {}
    assert broken.error == "cannot load broken_module.plugin: ModuleNotFoundError: No module named 'missing_dep'"
    assert (a.name, a.error, a.registered) == ("a", None, {"rules": ("epsilon2",)})
    with pytest.raises(UnknownNameError) as info:
        registry.rules["broken:epsilon3"]
    assert str(info.value) == f"unknown rule 'broken:epsilon3': plugin 'broken' failed to load ({broken.error})"


def test_plugin_whose_hook_raises_is_reported_and_its_other_hooks_work(entry_points, tmp_path):
    def zplug_register_rules():
        raise ValueError("boom")

    def zplug_register_presets():
        return [tmp_path / "mine.toml"]

    entry_points.add("bad", make_plugin("bad_module", zplug_register_rules, zplug_register_presets))
    registry = PluginRegistry(autoload=True, disable=())
    with pytest.warns(RuntimeWarning, match="zplug_register_rules"):
        assert registry.rules["epsilon"].name == "epsilon"
    assert registry.presets["mine"] == tmp_path / "mine.toml"
    (bad,) = registry.plugins()
    assert bad.error == "zplug_register_rules() raised ValueError: boom"
    assert bad.registered == {"presets": ("mine",)}


def test_a_rule_that_is_not_a_rule_class_marks_its_plugin_broken(registry):
    class NotARule:
        name = "fake"

    registry.register(make_plugin("m", registers_rules(NotARule)), "m")
    with pytest.warns(RuntimeWarning):
        assert "fake" not in registry.rules
    (info,) = registry.plugins()
    assert info.error == (
        "zplug_register_rules() raised TypeError: rule class "
        "test_a_rule_that_is_not_a_rule_class_marks_its_plugin_broken.<locals>.NotARule must subclass zplug.rules.Rule"
    )


def test_a_name_with_a_colon_marks_its_plugin_broken(registry):
    registry.register(make_plugin("m", registers_rules(rule_class("x:y", "XY"))), "m")
    with pytest.warns(RuntimeWarning):
        registry.rules
    (info,) = registry.plugins()
    assert info.error == (
        "zplug_register_rules() raised ValueError: name 'x:y' contains ':', which separates a plugin from a name"
    )


def test_a_builtin_whose_hook_raises_is_an_error(monkeypatch):
    def zplug_register_models():
        raise RuntimeError("bug in zplug")

    monkeypatch.setitem(sys.modules, "fake_builtin", make_plugin("fake_builtin", zplug_register_models))
    registry = PluginRegistry(autoload=False, builtins=["fake_builtin"])
    with pytest.raises(RuntimeError, match="bug in zplug"):
        registry.models


def test_hook_without_a_spec_is_refused_at_register(registry):
    def zplug_register_rule():  # typo: the hook is zplug_register_rules
        return []

    with pytest.raises(PluginLoadError, match=r"^plugin 'typo': unknown hook 'zplug_register_rule' in plugin"):
        registry.register(make_plugin("typo", zplug_register_rule), "typo")
    assert [p.name for p in registry.plugins()] == []
    assert "epsilon" in registry.rules


def test_a_plugin_name_can_be_registered_once(registry):
    registry.register(make_plugin("one"), "one")
    with pytest.raises(PluginLoadError) as info:
        registry.register(make_plugin("two"), "one")
    assert str(info.value) == "a plugin named 'one' is already registered"
    registry.unregister("one")
    registry.register(make_plugin("two"), "one")


# -- unknown names -------------------------------------------------------------------------------
@pytest.fixture
def small_registry():
    """No built-ins: one plugin ``a`` with the rules ``epsilon2`` and ``other``."""
    registry = PluginRegistry(autoload=False, builtins=())
    registry.register(make_plugin("a_module", registers_rules(Epsilon2A, Other)), "a")
    return registry


def test_unknown_name_suggests_the_nearest(small_registry):
    with pytest.raises(UnknownNameError) as info:
        small_registry.rules["epsilon"]
    assert str(info.value) == "unknown rule 'epsilon' (did you mean 'epsilon2'? known: epsilon2, other)"
    with pytest.raises(UnknownNameError) as info:
        small_registry.canonizers["x"]
    assert str(info.value) == "unknown canonizer 'x' (known: none registered)"


def test_unknown_qualified_name_suggests_the_plugin_that_has_it(small_registry):
    with pytest.raises(UnknownNameError) as info:
        small_registry.rules["b:epsilon2"]
    assert str(info.value) == (
        "unknown rule 'b:epsilon2': plugin 'b' has no rule 'epsilon2' (did you mean 'a:epsilon2'?)"
    )


def test_unknown_name_mentions_broken_plugins(small_registry, entry_points):
    entry_points.add("broken", ImportError("cannot import name 'x'"))
    small_registry.autoload, small_registry._loaded = True, False
    with pytest.warns(RuntimeWarning):
        small_registry.load_entry_points()
    with pytest.raises(UnknownNameError) as info:
        small_registry.rules["epsilon3"]
    assert str(info.value) == (
        "unknown rule 'epsilon3' (did you mean 'epsilon2'? known: epsilon2, other); "
        "plugin 'broken' failed to load, see `zplug plugins`"
    )


# -- one test per hook (test_every_hook_has_a_test checks the names) -----------------------------
def test_hook_zplug_register_rules(small_registry):
    assert dict(small_registry.rules) == {"epsilon2": Epsilon2A, "other": Other}
    assert small_registry.rules.entry("other").plugin == "a"


def named(kind: str, name: str) -> type:
    return type(f"{kind}_{name}", (), {"name": name})


def test_hook_zplug_register_canonizers(registry):
    merge = named("canonizer", "merge_things")
    registry.register(make_plugin("m", _returning("zplug_register_canonizers", [merge])), "m")
    assert registry.canonizers["m:merge_things"] is merge


def test_hook_zplug_register_attributors(registry):
    smooth = named("attributor", "smoother")
    registry.register(make_plugin("m", _returning("zplug_register_attributors", [smooth])), "m")
    assert registry.attributors["smoother"] is smooth


def test_hook_zplug_register_layer_types_merges_over_plugins(registry):
    class MyActivation(torch.nn.Module):
        pass

    registry.register(make_plugin("m", _returning("zplug_register_layer_types", {"activation": [MyActivation]})), "m")
    activation = registry.layer_types["activation"]
    assert MyActivation in activation and torch.nn.ReLU in activation
    assert len(set(activation)) == len(activation)
    assert registry.conflicts() == {}


def test_hook_zplug_register_presets_names_files_by_stem(registry, tmp_path):
    path = tmp_path / "my_preset.toml"
    registry.register(make_plugin("m", _returning("zplug_register_presets", [path])), "m")
    assert registry.presets["my_preset"] == path
    assert registry.presets.entry("m:my_preset").plugin == "m"


def test_hook_zplug_register_models(registry):
    registry.register(make_plugin("m", _returning("zplug_register_models", {"tiny": torch.nn.Identity})), "m")
    assert isinstance(registry.models["tiny"](), torch.nn.Identity)


def test_hook_zplug_register_metrics(registry):
    import attrs

    from zplug.metrics import Metric

    @attrs.frozen(kw_only=True)
    class Sharpness(Metric):
        name = "sharpness"

    registry.register(make_plugin("m", _returning("zplug_register_metrics", [Sharpness])), "m")
    assert registry.metrics["m:sharpness"] is Sharpness
    assert {"pixel_flipping", "region_perturbation", "srg"} <= set(registry.metrics)
    not_a_metric = named("metric", "not_a_metric")
    registry.register(make_plugin("bad", _returning("zplug_register_metrics", [not_a_metric])), "bad")
    with pytest.warns(RuntimeWarning, match="must subclass zplug.metrics.Metric"):
        assert "not_a_metric" not in registry.metrics


def test_hook_zplug_suggest_canonizers(registry):
    def first(model):
        return ["merge_batchnorm"] if isinstance(model, torch.nn.Sequential) else None

    def second(model):
        return [("merge_batchnorm", "ignored: first plugin wins"), ("flatten", "has a Flatten")]

    registry.register(make_plugin("p", _named("zplug_suggest_canonizers", first)), "p")
    registry.register(make_plugin("q", _named("zplug_suggest_canonizers", second)), "q")
    assert registry.suggest_canonizers(torch.nn.Sequential()) == [
        ("merge_batchnorm", "suggested by plugin 'p'", "p"),
        ("flatten", "has a Flatten", "q"),
    ]
    assert registry.suggest_canonizers(torch.nn.Linear(1, 1)) == [
        ("merge_batchnorm", "ignored: first plugin wins", "q"),
        ("flatten", "has a Flatten", "q"),
    ]


def test_hook_zplug_register_op_treatments(registry):
    from zplug.coverage.treatments import LINEAR, UNCOVERED, Treatment

    class Shuffle(torch.nn.Module):
        pass

    def my_op(x):
        return x

    careful = Treatment(covered=True, summary="my rule-free treatment")
    declared = {"my_op": "linear", Shuffle: "linear", my_op: careful, "roll": "not covered"}
    registry.register(make_plugin("m", _returning("zplug_register_op_treatments", declared)), "m")
    table = registry.op_treatments
    assert table.names["my_op"] is LINEAR and table.names["view"] is LINEAR  # the built-ins are there too
    assert table.names["roll"] is UNCOVERED  # a plugin's declaration overrides the built-in one
    assert table.module(Shuffle()) is LINEAR and table.module(torch.nn.Flatten()) is LINEAR
    assert table.classify("anything", 1, my_op) is careful

    registry.register(make_plugin("n", _returning("zplug_register_op_treatments", {"my_op": "not covered"})), "n")
    with pytest.raises(PluginConflictError, match=r"^operation 'my_op': plugins 'm' and 'n' declare different "):
        registry.op_treatments

    registry.unregister("n")
    registry.register(make_plugin("bad", _returning("zplug_register_op_treatments", {"x": "fine"})), "bad")
    with pytest.warns(RuntimeWarning, match="zplug_register_op_treatments"):
        table = registry.op_treatments
    assert "x" not in table.names and "my_op" in table.names
    [info] = [p for p in registry.plugins() if p.name == "bad"]
    assert "a treatment is 'linear', 'not covered' or a zplug.coverage.Treatment (got 'fine')" in info.error


def _named(hook_name: str, function):
    function.__name__ = hook_name
    return function


def test_hook_zplug_input_convention(registry):
    def none(model):
        return None

    def first(model):
        return {"resize": 8, "source": "first"} if isinstance(model, torch.nn.Sequential) else None

    def second():  # an implementation may take fewer arguments than the specification
        return {"crop": 4}

    def broken(model):
        return ["not", "a", "mapping"]

    for name, hook in (("n", none), ("p", first), ("b", broken), ("q", second)):
        registry.register(make_plugin(name, _named("zplug_input_convention", hook)), name)
    assert registry.input_convention(torch.nn.Sequential()) == ({"resize": 8, "source": "first"}, "p")
    with pytest.warns(RuntimeWarning, match="an input convention is a mapping or None, not list"):
        assert registry.input_convention(torch.nn.Linear(1, 1)) == ({"crop": 4}, "q")
    assert "zplug_input_convention() raised TypeError" in next(i for i in registry.plugins() if i.name == "b").error


def test_hook_zplug_explain_inputs(registry):
    import zplug
    from zplug.explanation import Explanation

    calls = []

    def tokens(model, inputs, target, **options):
        calls.append((model, inputs, target, options))
        return Explanation(output=inputs, relevance=inputs, attributor=None)

    def answer(model, inputs):
        return tokens if not inputs.is_floating_point() else None

    def broken(inputs):  # an implementation may take fewer arguments than the specification
        return "not callable"

    for name, hook in (("b", broken), ("p", answer)):
        registry.register(make_plugin(name, _named("zplug_explain_inputs", hook)), name)
    model = torch.nn.Linear(3, 2)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.warns(RuntimeWarning, match="an explainer is a callable or None, not str"):
        assert registry.explainer(model, ids) == (tokens, "p")
    assert "zplug_explain_inputs() raised TypeError" in next(i for i in registry.plugins() if i.name == "b").error
    result = zplug.explain(model, ids, 5, preset="epsilon", epsilon=0.5)
    assert result.relevance is ids
    [(seen_model, seen_inputs, seen_target, options)] = calls
    assert seen_model is model and seen_inputs is ids and seen_target == 5
    assert options["preset"] == "epsilon" and options["epsilon"] == 0.5 and options["ledger"] is False
    # floating-point inputs never reach the hook
    x = torch.ones(1, 3)
    assert zplug.explain(model, x, 0).relevance.shape == x.shape
    assert len(calls) == 1


def _returning(hook_name: str, value):
    return _named(hook_name, lambda: value)


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_has_a_test(hook):
    tests = [name for name in globals() if name.startswith(f"test_hook_{hook}")]
    assert tests, f"add a test named test_hook_{hook}"


def test_hook_names_are_the_hookspecs():
    assert hook_names() == sorted(PluginRegistry(autoload=False, builtins=()).pm.hook.__dict__)


def test_hook_zplug_register_commands(registry, tmp_path, monkeypatch, capsys):
    from zplug.cli import build_parser, main

    (tmp_path / "zplug_hello_cli.py").write_text(
        "def add_parser(subparsers):\n"
        "    p = subparsers.add_parser('hello', help='say hello')\n"
        "    p.add_argument('--name', default='world')\n"
        "    p.set_defaults(run=lambda args: print(f'hello {args.name}'))\n"
    )
    (tmp_path / "zplug_broken_cli.py").write_text("raise ImportError('needs a library that is missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def zplug_register_commands():
        return {"hello": "zplug_hello_cli", "explain": "zplug_hello_cli", "broken": "zplug_broken_cli"}

    registry.register(make_plugin("cli_module", zplug_register_commands), "cli")
    assert registry.commands["hello"] == "zplug_hello_cli"
    assert main(["hello", "--name", "zplug"]) == 0
    out, err = capsys.readouterr()
    assert out == "hello zplug\n"
    assert err.splitlines() == [  # in name order
        "zplug: warning: plugin 'cli': command 'broken' is broken (zplug_broken_cli: ImportError: needs a library "
        "that is missing); ignored",
        "zplug: warning: plugin 'cli': command 'explain' is already taken (by zplug or an earlier plugin); ignored",
    ]
    assert "explain" in build_parser()._subparsers._group_actions[0].choices  # zplug's own command stays


def test_a_command_module_that_is_not_a_module_name_marks_its_plugin_broken(registry):
    def zplug_register_commands():
        return {"hello": "not a module"}

    registry.register(make_plugin("cli_module", zplug_register_commands), "cli")
    with pytest.warns(RuntimeWarning, match="'not a module' is not a module name such as 'my_plugin.cli'"):
        assert "hello" not in registry.commands
