"""The attributor base class, the output-relevance target, and the attribution session.

An attributor turns a differentiable function (the model, with or without rules attached)
into relevance for its inputs. It is a frozen attrs class whose fields are its parameters,
declared with :func:`zplug.parts.parameter` like rule parameters. A :class:`Session`
attaches a mapping's rules once and runs the attributor on as many batches as needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from numbers import Integral
from typing import Any, ClassVar

import attrs

from zplug._lazy import lazy_module
from zplug.errors import ModelMismatchError, SpecError
from zplug.parts import Part, make_part, parameter, positive_int

torch = lazy_module("torch")  # imported when relevance is computed, not to declare the attributor

Tensors = tuple["torch.Tensor", ...]
#: ``progress(done, total)``: called after each chunk of a sample-based attributor.
Progress = Callable[[int, int], None]
#: Maps the chosen model output to the output relevance (the vector of the vector-Jacobian product).
OutputRelevance = Callable[["torch.Tensor"], "torch.Tensor"]


def chunk_size_parameter(default: int = 32) -> Any:
    """Declare the ``chunk_size`` parameter shared by the sample-based attributors."""
    return parameter(
        default,
        doc="how many perturbed copies of the batch go through the model at once (bounds memory)",
        kind="integer >= 1",
        check=positive_int,
    )


@attrs.frozen(kw_only=True)
class Attributor(Part):
    """Base class of all attributors (a part, :mod:`zplug.parts`).

    Subclasses set ``name`` and ``summary``, declare their parameters as attrs fields with
    :func:`zplug.parts.parameter`, and implement :meth:`attribute`.
    """

    #: Whether the attributor differentiates the model (rules only matter then).
    uses_gradient: ClassVar[bool] = True

    def attribute(self, problem: Problem) -> tuple[torch.Tensor, Tensors]:
        """Return ``(output, relevance per input)`` for ``problem``."""
        raise NotImplementedError

    def session(
        self,
        model: torch.nn.Module,
        mapping: Any = None,
        *,
        output_index: int | None = None,
        observers: Sequence[Callable[..., None]] = (),
        form: str = "relevance",
    ) -> Session:
        """Return a :class:`Session` that runs this attributor on ``model`` under ``mapping``."""
        return Session(model, self, mapping, output_index=output_index, observers=observers, form=form)


def make_attributor(cls: type[Attributor], params: Mapping[str, Any]) -> Attributor:
    """Construct ``cls`` from a parameter mapping, with errors that name the parameter.

    Raises
    ------
    SpecError
        For unknown or missing parameters and invalid values.
    """
    return make_part("attributor", cls, params)


# -- target: which output relevance starts the backward pass ------------------------------------
def resolve_target(target: Any, output: torch.Tensor) -> OutputRelevance:
    """Turn ``target`` into a function from the output of a batch to its output relevance.

    Parameters
    ----------
    target : None, int, sequence of int, tensor or callable
        ``None``: the class with the largest output of each sample (decided on ``output``);
        an int: that class for every sample; a sequence or integer tensor: one class per
        sample; a floating-point tensor: the output relevance itself (the output's shape);
        a callable: ``f(output) -> output relevance`` (Zennit's ``attr_output``).
        Classes are indices along dimension 1; the output relevance is one-hot there
        (so the relevance is that of ``output[:, c]``).
    output : torch.Tensor
        The clean output of the batch (classes of ``None`` are taken from it).
    """
    if callable(target) and not isinstance(target, torch.Tensor):
        return _checked(target)
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        if target.shape != output.shape:
            raise SpecError(
                f"a floating-point target is the output relevance and needs the output's shape "
                f"{tuple(output.shape)} (got {tuple(target.shape)}); pass class indices as an integer tensor"
            )
        constant = target.to(output)
        return lambda out: constant
    if output.ndim < 2:
        raise SpecError(
            f"class targets need an output of shape (batch, classes, ...); the output has shape {tuple(output.shape)}; "
            "pass a callable target f(output) -> output relevance"
        )
    classes = _classes(target, output)
    onehot = torch.zeros_like(output)
    index = classes.reshape(-1, *([1] * (output.ndim - 1))).expand(-1, 1, *output.shape[2:])
    onehot.scatter_(1, index, 1.0)
    return lambda out: onehot


def _classes(target: Any, output: torch.Tensor) -> torch.Tensor:
    batch, n_classes = output.shape[0], output.shape[1]
    if target is None:
        return output.detach().reshape(batch, n_classes, -1).sum(2).argmax(1) if output.ndim > 2 else output.argmax(1)
    if isinstance(target, Integral) and not isinstance(target, bool):
        classes = torch.full((batch,), int(target), dtype=torch.long, device=output.device)
    else:
        try:
            classes = torch.as_tensor(target, device=output.device)
        except (TypeError, ValueError, RuntimeError):
            message = f"target must be a class index, a list of indices, a tensor or a callable (got {target!r})"
            raise SpecError(message) from None
        if classes.is_floating_point() or classes.dtype == torch.bool or classes.ndim != 1 or len(classes) != batch:
            raise SpecError(
                f"target must hold one integer class index per sample ({batch}); got shape {tuple(classes.shape)} "
                f"and dtype {str(classes.dtype).replace('torch.', '')}"
            )
        classes = classes.long()
    if bool(((classes < 0) | (classes >= n_classes)).any()):
        raise SpecError(f"target class out of range: the output has {n_classes} classes (got {classes.tolist()})")
    return classes


def _checked(fn: OutputRelevance) -> OutputRelevance:
    def relevance(out: torch.Tensor) -> torch.Tensor:
        value = fn(out)
        if not isinstance(value, torch.Tensor):
            raise SpecError(f"the target callable must return a tensor (got {type(value).__name__})")
        if value.shape != out.shape:
            value = value.expand_as(out) if value.ndim <= out.ndim else value
        if value.shape != out.shape:
            raise SpecError(
                f"the target callable returned shape {tuple(value.shape)} for an output of shape {tuple(out.shape)}"
            )
        return value

    return relevance


def chunk_relevance(fn: OutputRelevance, output: torch.Tensor, batch: int) -> torch.Tensor:
    """Apply ``fn`` to each batch-sized part of a chunk's ``output`` (``k * batch`` rows)."""
    if output.shape[0] == batch:
        return fn(output)
    return torch.cat([fn(part) for part in output.split(batch)])


# -- the problem an attributor solves ----------------------------------------------------------
class Problem:
    """One batch to explain: a differentiable forward, its inputs, and the target.

    Attributes
    ----------
    inputs : tuple of torch.Tensor
        The inputs (detached), each with the batch as its first dimension.
    batch : int
        The number of samples.
    progress : callable or None
        ``progress(done, total)``, called after each chunk.
    """

    def __init__(
        self,
        forward: Callable[[Tensors], torch.Tensor],
        inputs: Tensors,
        target: Any,
        progress: Progress | None = None,
        before_backward: Callable[[Tensors, torch.Tensor, torch.Tensor], None] | None = None,
    ) -> None:
        self.forward = forward
        self.inputs = inputs
        self.batch = inputs[0].shape[0]
        self.target = target
        self.progress = progress
        self.before_backward = before_backward
        self._clean: torch.Tensor | None = None

    def clean_output(self) -> torch.Tensor:
        """The output for the unperturbed inputs (computed once, without gradients)."""
        if self._clean is None:
            with torch.no_grad():
                self._clean = self.forward(self.inputs)
        return self._clean

    def output_relevance(self, output: torch.Tensor | None = None) -> OutputRelevance:
        """The target as a function of a batch's output (classes of ``None`` from ``output``)."""
        return resolve_target(self.target, self.clean_output() if output is None else output)

    def gradient(self, inputs: Tensors, relevance_fn: OutputRelevance) -> tuple[torch.Tensor, Tensors]:
        """Return ``(output, d<relevance_fn(output), output>/d inputs)`` for inputs of any multiple of the batch."""
        leaves = tuple(x.detach().requires_grad_(True) for x in inputs)
        with torch.enable_grad():
            output = self.forward(leaves)
            grad_output = chunk_relevance(relevance_fn, output, self.batch)
            if self.before_backward is not None:
                self.before_backward(leaves, output, grad_output)
            if not output.requires_grad:
                return output.detach(), tuple(torch.zeros_like(x) for x in inputs)
            # <grad_output, output> as a scalar: its gradient at the output is grad_output bit for bit
            # (1 * g), and autograd then skips the shape check of a given grad_outputs, whose import of
            # torch.fx.experimental.symbolic_shapes costs a quarter of torch's own import time.
            product = (output * grad_output.detach().to(output)).sum()
            grads = torch.autograd.grad((product,), leaves, allow_unused=True)
        return output.detach(), tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs))

    def report(self, done: int, total: int) -> None:
        """Report progress, if a callback was given."""
        if self.progress is not None:
            self.progress(done, total)


def chunks(total: int, size: int) -> Iterator[range]:
    """Split ``range(total)`` into consecutive ranges of at most ``size``."""
    for start in range(0, total, size):
        yield range(start, min(start + size, total))


# -- sessions: rules attached once, reused for many batches -------------------------------------
class Session:
    """Run one attributor on one model under one mapping, for as many batches as needed.

    Use it as a context manager: the mapping's canonizers and rules are applied on entry
    and removed on exit (also on errors), so they are attached once for all batches::

        with zplug.attributors.SmoothGrad(n_iter=8).session(model, mapping) as run:
            for x, y in loader:
                output, (relevance,) = run(x, target=y)

    Calling a session outside ``with`` applies the mapping for that one call.

    Parameters
    ----------
    model : torch.nn.Module
        The model; it is called as ``model(*inputs)``.
    attributor : Attributor
        What to compute.
    mapping : object with ``applied(model, observers=...)``, a ``{module name: rule}`` dict, or None
        The rules (``None``: the plain gradient).
    output_index : int or None
        For models that return a tuple or list: which output to explain.
    observers : sequence of callables
        Passed to the engine (see :class:`zplug.engine.Binding`); used by the ledger.
    form : {"relevance", "gradient"}
        What the backward pass carries between layers (see :meth:`zplug.LayerMapping.applied`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        attributor: Attributor,
        mapping: Any = None,
        *,
        output_index: int | None = None,
        observers: Sequence[Callable[..., None]] = (),
        form: str = "relevance",
    ) -> None:
        from zplug.engine.gradient_form import check_form

        self.model = model
        self.attributor = attributor
        self.mapping = as_mapping(mapping)
        self.output_index = output_index
        self.observers = tuple(observers)
        self.form = check_form(form)
        self._stack: ExitStack | None = None

    def __enter__(self) -> Session:
        if self._stack is not None:
            raise RuntimeError("this session is already active")
        stack = ExitStack()
        try:
            stack.enter_context(self._applied())
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _applied(self):
        if self.mapping is None or not self.attributor.uses_gradient:
            return nullcontext(self.model)
        if self.form == "relevance":  # mapping objects of other makers need not know the keyword
            return self.mapping.applied(self.model, observers=self.observers)
        return self.mapping.applied(self.model, observers=self.observers, form=self.form)

    def forward(self, inputs: Tensors) -> torch.Tensor:
        """Run the model and return the explained output."""
        return select_output(self.model(*inputs), self.output_index)

    def __call__(
        self,
        inputs: torch.Tensor | Sequence[torch.Tensor],
        target: Any = None,
        *,
        progress: Progress | None = None,
        before_backward: Callable[[Tensors, torch.Tensor, torch.Tensor], None] | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Explain one batch: return ``(output, relevance)``, the relevance shaped like ``inputs``.

        Parameters
        ----------
        inputs : tensor or tuple of tensors
            Floating-point tensors sharing the batch dimension.
        target : None, int, sequence of int, tensor or callable
            Which output relevance starts the backward pass (see :func:`resolve_target`).
        progress : callable or None
            ``progress(done, total)`` after each chunk.
        before_backward : callable or None
            ``f(inputs, output, output_relevance)`` just before each backward pass (the ledger uses it).
        """
        single = isinstance(inputs, torch.Tensor)
        xs = check_inputs(inputs)
        problem = Problem(self.forward, xs, target, progress, before_backward)
        context = nullcontext() if self._stack is not None else self
        with context:
            output, relevance = self.attributor.attribute(problem)
        return output, relevance[0] if single else relevance


def check_inputs(inputs: torch.Tensor | Sequence[torch.Tensor]) -> Tensors:
    """Return ``inputs`` as a tuple of detached floating-point tensors with one batch size."""
    xs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not xs:
        raise SpecError("inputs must be a tensor or a non-empty tuple of tensors")
    for i, x in enumerate(xs):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            dtype = str(x.dtype).replace("torch.", "") if isinstance(x, torch.Tensor) else ""
            what = f"a {dtype} tensor" if dtype else type(x).__name__
            raise SpecError(f"input {i} must be a floating-point tensor (got {what})")
        if x.ndim == 0 or x.shape[0] != xs[0].shape[0]:
            raise SpecError(
                f"inputs must share the batch size (first dimension): input 0 has shape {tuple(xs[0].shape)}, "
                f"input {i} has shape {tuple(x.shape)}"
            )
    if torch.is_inference_mode_enabled():
        raise SpecError(
            "relevance needs autograd, which torch.inference_mode() switches off: explain outside the "
            "inference_mode block (torch.no_grad() around the call is fine)"
        )
    # A tensor made under inference_mode cannot join autograd; a copy made here can (same values).
    return tuple(x.clone() if x.is_inference() else x.detach() for x in xs)


def select_output(output: Any, index: int | None) -> torch.Tensor:
    """Pick the explained tensor from a model's output."""
    if isinstance(output, torch.Tensor):
        if index not in (None, 0):
            raise ModelMismatchError(f"output_index={index} was given, but the model returns a single tensor")
        return output
    if isinstance(output, (tuple, list)):
        if index is None:
            raise ModelMismatchError(
                f"the model returns a {type(output).__name__} of {len(output)} outputs; choose one with output_index"
            )
        if not -len(output) <= index < len(output):
            raise ModelMismatchError(f"output_index={index} is out of range for the model's {len(output)} outputs")
        chosen = output[index]
        if isinstance(chosen, torch.Tensor):
            return chosen
    raise ModelMismatchError(f"the model's output is a {type(output).__name__}, not a tensor")


@attrs.frozen
class RuleAssignment:
    """A plain ``{module name: rule}`` assignment, usable wherever a mapping is expected."""

    rules: Mapping[str, Any]

    @contextmanager
    def applied(
        self, model: torch.nn.Module, observers: Sequence[Callable[..., None]] = (), *, form: str = "relevance"
    ) -> Iterator[Any]:
        """Attach the rules to ``model`` inside a ``with`` block (in ``form``, see :meth:`LayerMapping.applied`)."""
        from zplug.engine import attach_rules
        from zplug.engine.gradient_form import model_boundaries

        with attach_rules(model, self.rules, observers=tuple(observers), form=form):
            if form == "gradient":
                with model_boundaries(model):
                    yield model
            else:
                yield model


def as_mapping(mapping: Any) -> Any:
    """Accept a mapping object (with ``applied``), a ``{name: rule}`` dict, or None."""
    if mapping is None or hasattr(mapping, "applied"):
        return mapping
    if isinstance(mapping, Mapping):
        return RuleAssignment(dict(mapping))
    raise SpecError(
        f"mapping must be a LayerMapping (from zplug.resolve), a {{module name: rule}} dict or None "
        f"(got {type(mapping).__name__})"
    )


__all__ = (
    "Attributor",
    "Problem",
    "RuleAssignment",
    "Session",
    "as_mapping",
    "check_inputs",
    "chunk_relevance",
    "chunk_size_parameter",
    "chunks",
    "make_attributor",
    "positive_int",
    "resolve_target",
    "select_output",
)
