"""The key/value cache for incremental decoding: a value passed in and handed back.

During autoregressive decoding the decoder's self-attention keys and values for earlier target
positions never change, so each step computes only the newest position's and appends it; the
cross-attention keys and values depend only on the encoder output and are computed once.

The cache is a plain container, not module state: ``out, cache = model.decode(..., cache=cache)``.
Beam search reorders it with :meth:`KVCache.select`.

Self-attention keys and values live in preallocated buffers that grow by doubling, so appending a
step copies one position, not the whole prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class LayerCache:
    """One decoder layer's cached keys and values, each (batch, heads, length, d_head).

    ``self_k``/``self_v`` are buffers whose first ``self_len`` positions are valid.
    """

    self_k: Tensor | None = None
    self_v: Tensor | None = None
    self_len: int = 0
    cross_k: Tensor | None = None
    cross_v: Tensor | None = None

    def append_self(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new positions (batch, heads, new, d_head); return all keys and values so far."""
        new = k.shape[2]
        needed = self.self_len + new
        if self.self_k is None or self.self_v is None:
            capacity = max(needed, 16)
            self.self_k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
            self.self_v = v.new_empty(v.shape[0], v.shape[1], capacity, v.shape[3])
        elif needed > self.self_k.shape[2]:
            capacity = max(needed, 2 * self.self_k.shape[2])
            grown_k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
            grown_v = v.new_empty(v.shape[0], v.shape[1], capacity, v.shape[3])
            grown_k[:, :, : self.self_len] = self.self_k[:, :, : self.self_len]
            grown_v[:, :, : self.self_len] = self.self_v[:, :, : self.self_len]
            self.self_k, self.self_v = grown_k, grown_v
        # narrow, not slicing syntax: one operator instead of an index parse (a decoding step appends
        # in every layer, and at one sentence each operator's fixed cost counts).
        self.self_k.narrow(2, self.self_len, new).copy_(k)
        self.self_v.narrow(2, self.self_len, new).copy_(v)
        self.self_len = needed
        return self.self_k.narrow(2, 0, needed), self.self_v.narrow(2, 0, needed)

    def select(
        self, indices: Tensor, *, same_sources: bool = False, sources: Tensor | None = None
    ) -> LayerCache:
        """Keep batch rows ``indices`` (in that order), e.g. the surviving beams.

        ``same_sources=True`` promises that new row i reads the same source as old row i (beams of one
        sentence trading places): the cross-attention keys and values are then kept as they are, not
        copied, since they depend on the source only. ``sources`` picks the cross-attention rows
        separately, for a cache that holds them once per source and the self-attention ones per beam.
        """

        def pick(t: Tensor | None, rows: Tensor) -> Tensor | None:
            return None if t is None else t.index_select(0, rows)

        def pick_valid(buffer: Tensor | None) -> Tensor | None:
            """Rows of a self-attention buffer, its first ``self_len`` positions copied: the rest of the
            capacity is not (beam search copies these at every step)."""
            if buffer is None or self.self_len == buffer.shape[2] or buffer.requires_grad:
                return pick(buffer, indices)  # (out= has no gradient)
            picked = buffer.new_empty(indices.shape[0], *buffer.shape[1:])
            torch.index_select(buffer[:, :, : self.self_len], 0, indices, out=picked[:, :, : self.self_len])
            return picked

        if same_sources:
            cross_k, cross_v = self.cross_k, self.cross_v
        else:
            cross_rows = indices if sources is None else sources
            cross_k, cross_v = pick(self.cross_k, cross_rows), pick(self.cross_v, cross_rows)
        return LayerCache(pick_valid(self.self_k), pick_valid(self.self_v), self.self_len, cross_k, cross_v)

    def reorder_(self, moved: Tensor, parents: Tensor) -> None:
        """In place: row ``moved[i]`` of the self-attention keys and values becomes a copy of what row
        ``parents[i]`` held (every parent is read before any row is written). Only the first
        ``self_len`` positions are copied; the cross-attention keys and values stay (beams of one source).
        """
        for buffer in (self.self_k, self.self_v):
            if buffer is not None:
                valid = buffer[:, :, : self.self_len]
                valid.index_copy_(0, moved, valid.index_select(0, parents))


@dataclass
class KVCache:
    """The whole decoder's cache: one :class:`LayerCache` per layer.

    ``length`` is the number of target positions already decoded (the position of the next token).
    """

    layers: list[LayerCache] = field(default_factory=list)

    @classmethod
    def empty(cls, num_layers: int) -> KVCache:
        return cls([LayerCache() for _ in range(num_layers)])

    @property
    def length(self) -> int:
        return self.layers[0].self_len if self.layers else 0

    def select(
        self,
        indices: Tensor,
        *,
        same_sources: bool = False,
        sources: Tensor | None = None,
        in_place: bool = False,
    ) -> KVCache:
        """Reorder or subset the batch dimension of every layer (beam search); see
        :meth:`LayerCache.select` for ``same_sources`` and ``sources``.

        ``in_place=True`` (with ``same_sources``, and as many rows as before) reorders this cache itself
        and returns it: only the rows whose source row differs are copied (in beam search about half of
        them move at a step; a copy of every row into fresh buffers is what it saves). The cache before
        the call is gone: use it only where nothing else holds it.
        """
        indices = indices.to(torch.long)
        rows = self.layers[0].self_k.shape[0] if self.layers and self.layers[0].self_k is not None else -1
        if in_place and same_sources and indices.shape[0] == rows and not torch.is_grad_enabled():
            moved = (indices != torch.arange(rows, device=indices.device)).nonzero().squeeze(1)
            if moved.numel():
                parents = indices.index_select(0, moved)
                for layer in self.layers:
                    layer.reorder_(moved, parents)
            return self
        sources = None if sources is None else sources.to(torch.long)
        return KVCache(
            [layer.select(indices, same_sources=same_sources, sources=sources) for layer in self.layers]
        )
