"""Arguments of zplug.explain that used to fail deep inside: one-line errors, or simply working."""

from __future__ import annotations

import pytest
import torch

import zplug
from zplug.errors import SpecError

KNOWN = "known: convnext, densenet"


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()


@pytest.mark.parametrize("canonizers", ["bogus", ["bogus"]])
def test_an_unknown_canonizer_name_is_named_whole_and_blamed_on_the_argument(canonizers):
    with pytest.raises(SpecError) as info:
        zplug.explain(_model(), torch.ones(1, 4), 0, preset="epsilon_plus", canonizers=canonizers)
    assert str(info.value).startswith("canonizers=: unknown canonizer 'bogus' (")


def test_a_single_canonizer_name_works_like_a_list_of_one():
    x = torch.randn(2, 4)
    one = zplug.explain(_model(), x, 0, preset="epsilon_plus", canonizers="merge_batchnorm").relevance
    listed = zplug.explain(_model(), x, 0, preset="epsilon_plus", canonizers=["merge_batchnorm"]).relevance
    assert torch.equal(one, listed)


def test_canonizers_of_the_wrong_type_say_what_is_accepted():
    with pytest.raises(SpecError) as info:
        zplug.explain(_model(), torch.ones(1, 4), 0, preset="epsilon_plus", canonizers=3)
    assert str(info.value) == (
        "canonizers= must be 'auto', a canonizer name, a list of names or canonizer instances, or [] for none (got int)"
    )


def test_inference_mode_is_refused_with_the_fix():
    with torch.inference_mode(), pytest.raises(SpecError) as info:
        zplug.explain(_model(), torch.ones(1, 4), 0, preset="epsilon_plus")
    assert str(info.value) == (
        "relevance needs autograd, which torch.inference_mode() switches off: explain outside the inference_mode "
        "block (torch.no_grad() around the call is fine)"
    )


def test_inputs_made_under_inference_mode_are_explained_like_ordinary_ones():
    with torch.inference_mode():
        frozen = torch.randn(2, 4)
    plain = frozen.clone()
    model = _model()
    assert torch.equal(
        zplug.explain(model, frozen, 1, preset="epsilon_plus").relevance,
        zplug.explain(model, plain, 1, preset="epsilon_plus").relevance,
    )
