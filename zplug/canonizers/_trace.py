"""Tracing a model with ``torch.fx`` to see how its modules are connected."""

from __future__ import annotations

import weakref

import torch
import torch.fx

from zplug.errors import NotTraceableError
from zplug.layers import Sum


class LeafTracer(torch.fx.Tracer):
    """``torch.fx`` tracer whose leaves are torch's own modules, zplug's ``Sum`` and any canonized module.

    A module with an instance ``forward`` (installed by a canonizer that ran earlier) is a
    leaf too: tracing into it would bypass the canonizer's forward.
    """

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, Sum) or "forward" in m.__dict__:
            return True
        return super().is_leaf_module(m, module_qualified_name)


_cache: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, torch.fx.Graph]] = weakref.WeakKeyDictionary()


def _signature(model: torch.nn.Module) -> tuple:
    # Which module objects sit where, and which of them carry canonizer-installed forwards.
    return tuple((name, id(m), id(m.__dict__.get("forward"))) for name, m in model.named_modules())


def trace(model: torch.nn.Module, purpose: str) -> torch.fx.Graph:
    """Return the ``torch.fx`` graph of ``model`` (cached while the module structure is unchanged).

    Parameters
    ----------
    model : torch.nn.Module
        The model; its class's ``forward`` is traced.
    purpose : str
        The canonizer's name, for the error message.

    Raises
    ------
    NotTraceableError
        With the tracer's reason and what to do instead.
    """
    if "forward" in model.__dict__:
        raise NotTraceableError(
            f"{purpose}: the model {type(model).__name__} has a replaced 'forward' (another canonizer, or rules, "
            f"are already applied); apply '{purpose}' first, before canonizers that replace the model's forward"
        )
    signature = _signature(model)
    cached = _cache.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    before = set(model.__dict__)
    try:
        graph = LeafTracer().trace(model)
    except Exception as exc:  # fx raises many kinds of errors; all mean "cannot trace"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise NotTraceableError(
            f"{purpose}: torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {first[:300]}). "
            "Typical causes are Python control flow on tensor values or shapes, or calls fx cannot record. "
            "Fix: make the model traceable (e.g. move the data-dependent part into a submodule), or write the "
            "operation with modules (zplug.Sum()(a, b) instead of a + b), or use a model-specific canonizer "
            "from a plugin or the named variant of this canonizer"
        ) from exc
    finally:
        # fx stores tensors made in the forward as model attributes (``_tensor_constant0``): the model
        # must come back as it was, so they move to the graph (see :func:`constants`).
        added = {key: model.__dict__.pop(key) for key in set(model.__dict__) - before}
    graph.zplug_constants = added
    _cache[model] = (signature, graph)
    return graph


def constants(graph: torch.fx.Graph) -> dict[str, object]:
    """The tensor constants of a graph made by :func:`trace`, by the attribute names its nodes use."""
    return dict(getattr(graph, "zplug_constants", {}))


__all__ = ("LeafTracer", "NotTraceableError", "constants", "trace")
