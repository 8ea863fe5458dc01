"""Frozen copies of a model's weights for fast inference, kept while the weights stay the same.

The fast CPU paths (:mod:`qkv.decode.fast`, :mod:`qkv.decode.fast_sequence`, BERT's frozen forward in
:mod:`qkv.models.bert`) prepare each weight once (packed for the BLAS, stacked, int8). :func:`model_snapshot`
keeps what they built per model and key, and builds afresh when any parameter has changed or moved; a
snapshot never keeps its model alive.
"""

from __future__ import annotations

import operator
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.modules.module import (
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)


def fast_inference_allowed(model: nn.Module, activation: Tensor) -> bool:
    """Whether a frozen fast path computes what the model's modules would, here and now: a float32 model
    on a CPU, in eval mode, with no gradients wanted and CPU autocast off. ``activation``: any tensor of
    the pass (its device and dtype)."""
    return (
        activation.device.type == "cpu"
        and activation.dtype == torch.float32
        and not model.training
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


# Per model: a few snapshots by key, each with the parameter versions it was built from.
_SNAPSHOTS: weakref.WeakKeyDictionary[nn.Module, OrderedDict[Hashable, tuple[tuple[int, ...] | None, Any]]]
_SNAPSHOTS = weakref.WeakKeyDictionary()
# e.g. the float32 and int8 steps, the whole-sequence passes, and one step at another thread count
_KEPT_PER_MODEL = 4
_T = TypeVar("_T")


# A model's parameter list is read once and kept until any module anywhere registers or is assigned a
# parameter or submodule (torch's global registration hooks count those): walking a model's ~100
# modules took 0.1 ms, a tenth of a one-sentence NAT translation.
_registrations = 0
_PARAMETERS: weakref.WeakKeyDictionary[nn.Module, tuple[int, list[nn.Parameter], bool]]
_PARAMETERS = weakref.WeakKeyDictionary()


def _count_registration(*_: object) -> None:
    global _registrations
    _registrations += 1


register_module_parameter_registration_hook(_count_registration)
register_module_module_registration_hook(_count_registration)


_VERSION = operator.attrgetter("_version")
_DATA_PTR = operator.methodcaller("data_ptr")


def _parameter_versions(model: nn.Module) -> tuple[int, ...] | None:
    """Changes when any parameter is updated in place, replaced or moved; None where torch keeps no
    version count (parameters made under ``torch.inference_mode()``)."""
    found = _PARAMETERS.get(model)
    if found is None or found[0] != _registrations:
        parameters = list(model.parameters())
        found = (_registrations, parameters, any(p.is_inference() for p in parameters))
        _PARAMETERS[model] = found
    read_at, parameters, inference = found
    if inference:
        return None
    # map with operator getters, not a comprehension of pairs: 34 vs 40 us for a 3+3-layer model's 129
    return (read_at, *map(_VERSION, parameters), *map(_DATA_PTR, parameters))


def model_snapshot(model: nn.Module, key: Hashable, build: Callable[[], _T]) -> _T:
    """``build()``'s result for ``model`` and ``key``, kept and reused while the model's parameters stay
    the same (the four most recently used keys are kept per model; none keeps its model alive).

    Changes are seen through torch's version counters: an optimizer step, ``load_state_dict``, any
    in-place update. A change made through ``.data`` is not counted by torch. A model whose parameters
    were made under ``torch.inference_mode()`` has no version counts: it gets a fresh snapshot each call.
    """
    versions = _parameter_versions(model)
    if versions is None:
        return build()
    snapshots = _SNAPSHOTS.setdefault(model, OrderedDict())
    found = snapshots.get(key)
    if found is not None and found[0] == versions:
        snapshots.move_to_end(key)
        return found[1]  # type: ignore[no-any-return]
    fresh = build()
    snapshots[key] = (versions, fresh)
    snapshots.move_to_end(key)
    for stale in [k for k, (v, _) in snapshots.items() if v != versions]:
        del snapshots[stale]
    while len(snapshots) > _KEPT_PER_MODEL:
        snapshots.popitem(last=False)
    return fresh
