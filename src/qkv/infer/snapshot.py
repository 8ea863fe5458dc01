"""Frozen copies of a model's weights for fast inference, kept while the weights stay the same.

The inference stacks (:mod:`qkv.infer.stacks`) prepare each weight once (packed for the BLAS, stacked,
int8). :func:`model_snapshot` keeps what they built per model and key, and builds afresh when any
parameter has changed or moved; a snapshot never keeps its model alive.
"""

from __future__ import annotations

import operator
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from torch import nn
from torch.nn.modules.module import (
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)

# Per model: a few snapshots by key, each with the parameter versions it was built from.
_SNAPSHOTS: weakref.WeakKeyDictionary[nn.Module, OrderedDict[Hashable, tuple[tuple[int, ...] | None, Any]]]
_SNAPSHOTS = weakref.WeakKeyDictionary()
# e.g. the float32 and int8 steps, the whole-sequence passes, and one step at another thread count
_KEPT_PER_MODEL = 4
_T = TypeVar("_T")


# A model's parameter list is read once and kept until any module anywhere registers or is assigned a
# parameter or submodule (torch's global registration hooks count those, installed on the first
# snapshot, not at import): walking a model's modules at every call costs as much as a short pass.
_registrations = 0
_hooks_installed = False
_PARAMETERS: weakref.WeakKeyDictionary[nn.Module, tuple[int, list[nn.Parameter], bool]]
_PARAMETERS = weakref.WeakKeyDictionary()


def _count_registration(*_: object) -> None:
    global _registrations
    _registrations += 1


def _install_hooks() -> None:
    global _hooks_installed
    if not _hooks_installed:
        register_module_parameter_registration_hook(_count_registration)
        register_module_module_registration_hook(_count_registration)
        _hooks_installed = True


_VERSION = operator.attrgetter("_version")
_DATA_PTR = operator.methodcaller("data_ptr")


def _parameter_versions(model: nn.Module) -> tuple[int, ...] | None:
    """Changes when any parameter is updated in place, replaced or moved; None where torch keeps no
    version count (parameters made under ``torch.inference_mode()``)."""
    _install_hooks()
    found = _PARAMETERS.get(model)
    if found is None or found[0] != _registrations:
        parameters = list(model.parameters())
        found = (_registrations, parameters, any(p.is_inference() for p in parameters))
        _PARAMETERS[model] = found
    read_at, parameters, inference = found
    if inference:
        return None
    # map with operator getters: faster than a comprehension of pairs, read at every decoding call
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
