"""Greedy decoding whose decode step is replayed as a CUDA graph: the same tokens, without launch overhead.

A decode step of a 135M model on a GPU is bound by launching kernels, not by computing: ~30 layers of
small matmuls, norms and rotary embeddings are a few hundred launches from Python for a step whose
arithmetic takes well under a millisecond. A CUDA graph records the launches once and replays them
in one call. Recording needs every tensor of the step at a fixed address and a fixed shape, so this
loop differs from :func:`step_jepa.evaluation.decode._decode_batch` in three ways, none of which changes a
token:

* the KV cache is a zero-filled slab of full capacity, written at a slot index held *on the device*
  (:class:`StaticSlabLayer`); attention reads a window of it whose length is rounded up to
  ``window_step`` slots, and the padding mask hides the slots not yet written (zeros, so masked
  weights of exactly 0 never meet a NaN);
* all per-row state (next token, position, mask, done flags, the output buffer, the step counter)
  lives in persistent tensors that the step updates in place, so a replay needs no host input;
* finished rows leave the batch only when at most half are still running, and the batch then shrinks
  to the next power of two (keeping a few finished rows as filler), so one decode sees few shapes.

A new (rows, window) shape costs one ordinary eager step — which is also the warm-up the capture
needs — and one capture; every later step of that shape is a replay. On the CPU, or when a capture
fails (a model whose forward syncs with the host cannot be recorded), the same step runs eagerly, so
the tests check this loop's tokens against ``model.generate`` on the CPU.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from step_jepa.evaluation.kv_cache import SlabLayer


class StaticSlabLayer(SlabLayer):
    """A slab cache layer written at a device-side slot index and read through a fixed-length window.

    ``write_at`` is a one-element tensor shared by every layer; the decode step advances it in place,
    so the layer has no Python state that changes from step to step (what a CUDA graph requires).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int, write_at: torch.Tensor) -> None:
        super().__init__(keys, values, capacity)
        # Zeros, not new_empty: the window exposes unwritten slots; masked to weight 0, but 0 · NaN = NaN.
        self._k[:, :, keys.shape[-2] :].zero_()
        self._v[:, :, values.shape[-2] :].zero_()
        self.write_at = write_at

    def set_window(self, window: int) -> None:
        self._set_length(window)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._k.index_copy_(2, self.write_at, key_states)
        self._v.index_copy_(2, self.write_at, value_states)
        return self.keys, self.values


def can_use_static(cache: Any) -> bool:
    """Only a cache whose every layer is a slab (full attention everywhere) can be made static."""
    return all(isinstance(layer, SlabLayer) for layer in cache.layers)


def _to_static(cache: Any, write_at: torch.Tensor) -> None:
    for i, layer in enumerate(cache.layers):
        cache.layers[i] = StaticSlabLayer(layer.keys, layer.values, layer._k.shape[-2], write_at)


@dataclass
class _State:
    """Everything a decode step reads or writes, as persistent device tensors (``cur``/``step``: [1])."""

    tok: torch.Tensor
    pos: torch.Tensor
    mask: torch.Tensor
    done: torch.Tensor
    row_ids: torch.Tensor
    cur: torch.Tensor
    step: torch.Tensor

    def select(self, keep: torch.Tensor) -> None:
        self.tok, self.pos, self.mask = self.tok[keep], self.pos[keep], self.mask[keep]
        self.done, self.row_ids = self.done[keep], self.row_ids[keep]


def _step(
    fwd: Callable, cache: Any, st: _State, out: torch.Tensor, window: int, stop_t: torch.Tensor, pad_id: int
) -> None:
    """One greedy decode step, in place: the body a CUDA graph records.

    The same arithmetic as the eager loop: open the mask at the new slot, advance positions, attend
    over the window, take the argmax, feed finished rows the pad token, record the token.
    """
    st.mask.index_fill_(1, st.cur, 1)
    st.pos.add_(1)
    logits = fwd(st.tok[:, None], st.mask[:, None, None, :window].bool(), st.pos[:, None], cache, last_only=False)
    nxt = torch.where(st.done, pad_id, logits.argmax(-1))
    st.tok.copy_(nxt)
    out.index_put_((st.row_ids, st.step.expand_as(st.row_ids)), nxt)
    st.done.logical_or_(torch.isin(nxt, stop_t))
    st.cur.add_(1)
    st.step.add_(1)


class _Replayer:
    """Runs one decode step per call: a replay when the shape was recorded, else eager then record."""

    def __init__(self, run: Callable[[int], None], capture: bool) -> None:
        self.run, self.capture = run, capture
        self.graph: Any = None
        self.key: tuple[int, int] | None = None
        self.captures = 0
        self.capture_s = 0.0  # host seconds spent in new-shape steps (eager step + recording)

    def __call__(self, rows: int, window: int) -> None:
        if self.capture and self.key == (rows, window):
            self.graph.replay()
            return
        self.graph = self.key = None  # frees the old graph's memory before a new one is recorded
        if not self.capture:
            self.run(window)
            return
        t0 = time.perf_counter()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # the real step of this call, and the warm-up capture needs
            self.run(window)
        torch.cuda.current_stream().wait_stream(side)
        self._record(rows, window)
        self.capture_s += time.perf_counter() - t0

    def _record(self, rows: int, window: int) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):  # records the launches; nothing runs, so no state moves
                self.run(window)
        except Exception as exc:  # noqa: BLE001 - any capture failure: keep decoding eagerly
            warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); decoding eagerly", stacklevel=3)
            self.capture = False
            return
        self.graph, self.key = graph, (rows, window)
        self.captures += 1


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _shrink(cache: Any, st: _State, n_done: int) -> bool:
    """Drop finished rows once at most half still run; keep a power-of-two batch. True if it shrank."""
    rows = st.done.numel()
    live = rows - n_done
    if live > rows // 2:
        return False
    target = min(rows, _next_pow2(live))
    order = torch.argsort(st.done.to(torch.int8), stable=True)  # running rows first, then finished ones
    keep = order[:target]
    cache.batch_select_indices(keep)
    st.select(keep)
    return True


def decode_batch_static(
    fwd: Callable,
    cache: Any,
    logits: torch.Tensor,
    mask: torch.Tensor,
    plen: int,
    max_new_tokens: int,
    stops: Sequence[int],
    pad_id: int,
    *,
    check_every: int = 8,
    window_step: int = 128,
    capture: bool | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Decode from a prefilled slab cache; return (generated ids [rows, max_new_tokens], stats).

    ``cache`` holds :class:`~step_jepa.evaluation.kv_cache.SlabLayer` s of capacity ``plen + max_new_tokens``,
    ``logits`` the prompts' last-position logits, ``mask`` the [rows, capacity] padding mask with
    the prompt part set. ``capture`` defaults to "on CUDA". ``window_step`` trades attention over
    unwritten slots (a coarse window reads up to ``window_step - 1`` zero slots per row) against
    captures (one per window length and batch size). ``stats``: decode steps, graphs recorded
    and the host seconds those new-shape steps took.
    """
    if window_step < 1:  # before the cache is made static: a refused call leaves it usable
        raise ValueError(f"window_step must be >= 1, got {window_step}")
    device = logits.device
    rows, capacity = mask.shape
    capture = device.type == "cuda" if capture is None else capture
    stop_t = torch.tensor(list(stops) or [-1], dtype=torch.long, device=device)
    out = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    tok = logits.argmax(-1)
    out[:, 0] = tok
    st = _State(
        tok=tok,
        pos=mask[:, :plen].sum(-1) - 1,
        mask=mask,
        done=torch.isin(tok, stop_t),
        row_ids=torch.arange(rows, device=device),
        cur=torch.tensor([plen], device=device),
        step=torch.tensor([1], device=device),
    )
    _to_static(cache, st.cur)

    def run(window: int) -> None:
        for layer in cache.layers:
            layer.set_window(window)
        _step(fwd, cache, st, out, window, stop_t, pad_id)

    replay = _Replayer(run, capture)
    cur = plen  # host copy of st.cur: the window is chosen without reading the device
    steps = 0
    for step in range(1, max_new_tokens):
        if step % check_every == 0 or step == 1:
            n_done = int(st.done.sum())  # the loop's only host sync
            if n_done == st.done.numel():
                break
            _shrink(cache, st, n_done)
        window = min(capacity, -(-(cur + 1) // window_step) * window_step)
        replay(st.done.numel(), window)
        cur += 1
        steps += 1
    return out, {"steps": steps, "captures": replay.captures, "capture_s": round(replay.capture_s, 4)}
