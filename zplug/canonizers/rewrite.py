"""Forward rewrites that must prove themselves: the first call compares with the original forward.

A canonizer that replaces a module's ``forward`` (to route functional operations through
modules that rules can sit on) promises that the model computes the same function. A
:class:`ForwardRewrite` keeps that promise checkable: on the first call of each rewritten
module, the original forward runs too (without autograd) and the outputs are compared. If
they differ, that module's rewrite is undone at once and a :class:`CanonizerError` says which
module and by how much; on exit every rewrite is undone, also after errors.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import attrs

from zplug._lazy import lazy_module
from zplug.canonizers._patch import PatchStack
from zplug.canonizers.base import Canonizer
from zplug.errors import CanonizerError

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")  # declaring a rewrite canonizer (to register or list it) needs no torch

#: Largest accepted difference, relative to the largest output magnitude, by dtype name.
TOLERANCE = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}


@attrs.frozen(kw_only=True)
class Rewrite:
    """One module's rewrite: the children it needs and its new forward.

    Attributes
    ----------
    name : str
        The module's name in the model (``""`` for the model itself).
    module : torch.nn.Module
        The module.
    forward : Callable
        The new forward, bound to the module (its children are reached as attributes).
    children : Mapping[str, torch.nn.Module]
        Modules registered as children for the duration (names must be free).
    what : str
        One line for :meth:`Canonizer.describe`.
    graph : torch.fx.Graph or None
        The new forward's graph, where it is one (later fx rewrites continue from it).
    constants : Mapping[str, torch.Tensor]
        The tensor constants ``graph`` refers to.
    additions : tuple of str
        The tensor additions routed through ``Sum`` modules, as code (for descriptions).
    """

    name: str
    module: torch.nn.Module
    forward: Callable[..., Any]
    children: Mapping[str, torch.nn.Module] = attrs.field(factory=dict)
    what: str = ""
    graph: Any = None
    constants: Mapping[str, Any] = attrs.field(factory=dict)
    additions: tuple[str, ...] = ()


class CheckedForward:
    """A replacement forward that compares itself with the original on its first call.

    Parameters
    ----------
    rewrite : Rewrite
        What replaces what.
    original : Callable
        The forward the module had before (its class's, or one an earlier canonizer installed).
    undo : Callable
        Undoes this module's rewrite (called before the error is raised).
    canonizer : str
        The canonizer's name, for the message.
    """

    def __init__(self, rewrite: Rewrite, original: Callable[..., Any], undo: Callable[[], None], canonizer: str):
        self.rewrite = rewrite
        self.original = original
        self.undo = undo
        self.canonizer = canonizer
        self.signature = _signature(rewrite.module, canonizer)
        #: A module proven by an earlier application, and unchanged since, is not checked again.
        self.checked = _proven.get(rewrite.module) == self.signature

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the new forward; on the first call, compare with the original first."""
        if self.checked:
            return self.rewrite.forward(*args, **kwargs)
        expected = self.expected(*args, **kwargs)
        output = self.rewrite.forward(*args, **kwargs)
        self.confirm(output, expected)
        return output

    def expected(self, *args: Any, **kwargs: Any) -> Any:
        """What the original forward returns for these arguments (no autograd, random state kept)."""
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # same random numbers for both runs (dropout)
            return self.original(*args, **kwargs)

    def confirm(self, output: Any, expected: Any) -> None:
        """Accept the rewrite if ``output`` equals ``expected``; otherwise undo it and raise CanonizerError."""
        problem = difference(output, expected)
        if problem is not None:
            self.undo()
            module = self.rewrite.module
            where = f"'{self.rewrite.name}'" if self.rewrite.name else "the model"
            raise CanonizerError(
                f"{self.canonizer}: the rewritten forward of {where} ({type(module).__name__}) does not compute what "
                f"the original computes ({problem}); the rewrite is undone. The module probably uses a feature the "
                "rewrite does not reproduce (Python control flow that torch.fx fixed while tracing): leave this "
                "canonizer out, or write a canonizer for this module"
            )
        self.checked = True
        _proven[self.rewrite.module] = self.signature


#: Modules whose rewrite passed the check, with the signature they had then (see :func:`_signature`).
_proven: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _signature(module: torch.nn.Module, canonizer: str) -> tuple:
    """What the check depends on besides the input: the canonizer, the modules, their tensors and versions."""
    # Storage addresses rather than object identities: modules that canonizers add for the duration
    # (new objects every time) then look the same in every application, e.g. the query projection
    # whose weight is a view of ``in_proj_weight``. One walk over the module dictionaries (named_modules,
    # parameters and buffers are generators of generators, several times slower for the same result).
    tensors, children, seen = [], [], set()
    stack = [("", module)]
    while stack:
        name, current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        children.append((name, type(current)))
        for table in (current._parameters, current._buffers):
            tensors.extend((t.data_ptr(), t.dtype, tuple(t.shape), t._version) for t in table.values() if t is not None)
        prefix = f"{name}." if name else ""
        stack.extend((prefix + key, child) for key, child in reversed(current._modules.items()) if child is not None)
    return (canonizer, tuple(children), tuple(tensors))


def difference(output: Any, expected: Any) -> str | None:
    """Say how ``output`` differs from ``expected`` (nested tensors, tuples, lists, ``None``), or return ``None``."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(output, torch.Tensor):
            return f"a {type(output).__name__} instead of a tensor"
        if output.shape != expected.shape:
            return f"shape {tuple(output.shape)} instead of {tuple(expected.shape)}"
        if output.dtype != expected.dtype:
            return f"dtype {output.dtype} instead of {expected.dtype}"
        if not expected.is_floating_point():
            return None if torch.equal(output, expected) else "different values"
        out, exp = output.detach(), expected.detach()
        finite = torch.isfinite(exp)
        if not torch.equal(finite, torch.isfinite(out)):
            return "different non-finite entries"
        if not bool((out[~finite] == exp[~finite]).logical_or(out[~finite].isnan() & exp[~finite].isnan()).all()):
            return "different non-finite entries"  # NaN where the original has NaN is the same
        if not bool(finite.any()):
            return None
        scale = float(exp[finite].abs().max())
        gap = float((out[finite] - exp[finite]).abs().max())
        tolerance = TOLERANCE.get(str(exp.dtype).removeprefix("torch."), 1e-4)
        if gap > tolerance * max(scale, 1e-30):
            return f"largest difference {gap:.3g} at output magnitude {scale:.3g}"
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(output, (tuple, list)) or len(output) != len(expected):
            return f"{type(output).__name__} instead of a {type(expected).__name__} of {len(expected)}"
        for index, (a, b) in enumerate(zip(output, expected)):
            problem = difference(a, b)
            if problem is not None:
                return f"output {index}: {problem}"
        return None
    if expected is None:
        return None if output is None else f"a {type(output).__name__} instead of None"
    return None if output == expected else f"{output!r} instead of {expected!r}"


@attrs.frozen(kw_only=True)
class ForwardRewrite(Canonizer):
    """Base class of canonizers that replace modules' forwards, each checked on its first call.

    Subclasses implement :meth:`rewrites`; :meth:`applied` registers the children, installs
    the checked forwards and undoes everything on exit (in reverse order, also on errors).
    """

    def rewrites(self, model: torch.nn.Module) -> list[Rewrite]:
        """Return the rewrites for ``model`` (without changing it)."""
        raise NotImplementedError

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Install the rewrites; undo them on exit."""
        plan = self.rewrites(model)
        stacks: list[PatchStack] = []
        try:
            for rewrite in plan:
                stack = PatchStack()
                stacks.append(stack)
                module = rewrite.module
                for key, child in rewrite.children.items():
                    if hasattr(module, key):
                        where = f"'{rewrite.name}'" if rewrite.name else "the model"
                        raise CanonizerError(
                            f"{self.name}: cannot add module '{key}' to {where} ({type(module).__name__}): an "
                            "attribute of that name exists"
                        )
                    stack.child(module, key, child)
                original = module.forward  # the class's forward, or an earlier canonizer's
                checked = CheckedForward(rewrite, original, stack.undo, self.name)
                stack.attribute(module, "forward", checked)
            yield model
        finally:
            for stack in reversed(stacks):
                stack.undo()

    def describe(self, model: torch.nn.Module) -> list[str]:
        """One line per rewritten module."""
        return [f"{r.name or '<model>'} ({type(r.module).__name__}): {r.what}" for r in self.rewrites(model)]


__all__ = ("CheckedForward", "ForwardRewrite", "Rewrite", "TOLERANCE", "difference")
