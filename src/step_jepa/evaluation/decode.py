"""Fast batched greedy decoding of chat prompts: our own decode loop, used by ``step-jepa eval``.

``model.generate`` runs every batch until its longest row finishes and pays per-step overhead for
features we do not use; here prompts are length sorted into memory-sized batches (the whole GSM8K
test set of a small model is one batch on an 80 GB GPU), finished rows are dropped from the batch as
they accumulate, the decode step skips transformers' mask construction (and the host sync inside
it), writes the KV cache in place and attends each key/value head once (:mod:`step_jepa.evaluation.kv_cache`),
and the host only synchronises every few steps.  The tokens are the same as
``model.generate(do_sample=False)`` (tested on CPU in fp32).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------------------------------------
# Prompt encoding and batching
# --------------------------------------------------------------------------------------------------------

# End-of-turn markers of common chat templates. Instruct models end their answer with these, and a
# tokenizer's `eos_token` is not always the one the template uses (Llama 3: <|end_of_text|> vs <|eot_id|>).
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>", "</s>")


@dataclass
class GenResult:
    """One generation: decoded text (stop token and special tokens removed), the number of generated
    tokens (stop token included: it was computed), and the error message if the example failed."""

    text: str
    n_tokens: int
    error: str | None = None


def encode_prompts(tokenizer: Any, prompts: Sequence[list[dict]]) -> list[list[int]]:
    """Token ids of each chat prompt with the assistant turn opened (``add_generation_prompt``).

    Rendered by `segment.render`, the same function training uses — the tokenizer's template, or the
    plain fallback for tokenizers without one — so evaluation sees exactly the trained prompt format.
    Tokenized without extra special tokens: the template already writes BOS where one is expected.
    """
    from step_jepa.data.segment import render

    texts = [render(tokenizer, list(p), add_generation_prompt=True) for p in prompts]
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def stop_token_ids(model: Any, tokenizer: Any, stop_tokens: Sequence[str] | None = None) -> list[int]:
    """Token ids that end a generation: the tokenizer's eos, the generation config's eos id(s) and,
    of `stop_tokens` (default: the end-of-turn markers of known chat templates), those that are
    single tokens of this vocabulary."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if eos is not None:
        ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in (_END_OF_TURN if stop_tokens is None else stop_tokens) if t in vocab)
    return sorted(ids)


def _pad_id(tokenizer: Any, stops: Sequence[int]) -> int:
    """Pad token id; falls back to a stop token (any id works: padded positions are masked out)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    return int(stops[0]) if stops else 0


def plan_batches(
    lengths: Sequence[int], max_new_tokens: int, max_batch_tokens: int | None, batch_size: int | None
) -> list[list[int]]:
    """Group prompt indices into batches, longest prompts first.

    Length sorting keeps left padding small.  A batch's cost is ``rows x (longest prompt +
    max_new_tokens)`` cache slots; it must stay under ``max_batch_tokens`` (when given) and have at most
    ``batch_size`` rows (when given).  Longest first means an out-of-memory error shows up in the first
    batch, not after minutes of work.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        new_longest = max(longest, lengths[i])
        too_many = batch_size is not None and len(current) + 1 > batch_size
        too_big = (
            max_batch_tokens is not None and (len(current) + 1) * (new_longest + max_new_tokens) > max_batch_tokens
        )
        if current and (too_many or too_big):
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def _kv_bytes_per_token(model: Any) -> int:
    """Bytes of K and V cache one token costs across all layers (the dominant memory of decoding)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    elem = next(model.parameters()).element_size()
    return cfg.num_hidden_layers * 2 * kv_heads * head_dim * elem


def default_batch_tokens(model: Any, memory_fraction: float = 0.5) -> int | None:
    """Cache-slot budget that fits in ``memory_fraction`` of the free GPU memory, or None on CPU.

    Per token we count the KV cache plus the transient activations of the prefill; the other half of
    free memory covers logits (rows x vocab floats), the argmax and allocator fragmentation.
    """
    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int(free * memory_fraction / _kv_bytes_per_token(model)))


# --------------------------------------------------------------------------------------------------------
# The decode loop
# --------------------------------------------------------------------------------------------------------


def _cache_kwarg(model: Any) -> str:
    """Name of the forward's cache argument: ``cache`` from transformers 5.2x, ``past_key_values`` before."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _supports_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _new_cache(model: Any):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # pragma: no cover - older signature
        return DynamicCache()


def _select_rows(cache: Any, keep) -> None:
    """Keep only the ``keep`` rows of every cache layer (finished rows leave the batch)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(keep)
    else:  # pragma: no cover - older cache API
        for layer in cache.layers:
            layer.batch_select_indices(keep)


class _Forward:
    """Calls the model with the right cache keyword for the installed transformers."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache_kw = _cache_kwarg(model)
        self.keep_last = _supports_logits_to_keep(model)

    def __call__(self, input_ids, attention_mask, position_ids, cache, last_only: bool):
        kwargs = {self.cache_kw: cache, "use_cache": True}
        if last_only and self.keep_last:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        return out.logits[:, -1, :]


def _prefill(fwd: _Forward, input_ids, mask, prefill_tokens: int):
    """Run the prompts through the model; return (cache ready for decoding, last-position logits).

    Prefill activations scale with rows x prompt length (decoding's only with rows), so rows are
    prefilled in chunks of at most ``prefill_tokens`` tokens and the per-layer K/V concatenated
    along the batch once.  Every chunk has the same padded width, so the caches line up.
    """
    import torch

    rows, plen = input_ids.shape
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as HF generate computes them
    chunk = max(1, prefill_tokens // max(plen, 1))
    caches, logits = [], []
    for start in range(0, rows, chunk):
        sl = slice(start, start + chunk)
        cache = _new_cache(fwd.model)
        logits.append(fwd(input_ids[sl], mask[sl], position_ids[sl], cache, last_only=True))
        caches.append(cache)
    if len(caches) == 1:
        return caches[0], logits[0]
    merged = caches[0]
    for li, layer in enumerate(merged.layers):
        layer.keys = torch.cat([c.layers[li].keys for c in caches], 0)
        layer.values = torch.cat([c.layers[li].values for c in caches], 0)
    return merged, torch.cat(logits, 0)


def _decode_mask(model: Any) -> Callable[[Any], Any]:
    """Turns the running 2D padding mask into what the decode step passes as ``attention_mask``.

    With one query token the causal mask *is* the padding mask, so for SDPA we hand over the 4D
    boolean mask directly: transformers returns a 4D mask unchanged, which skips its per-step mask
    construction and the ``padding_mask.all()`` check in it, a host sync on every forward.  Other
    attention implementations (eager wants an additive float mask) get the 2D mask as usual.
    """
    impl = getattr(model.config, "_attn_implementation", None)
    if impl == "sdpa" and not _has_sliding_window(model):
        return _padding_mask_4d
    return _identity


def _padding_mask_4d(m):
    return m[:, None, None, :].bool()


def _identity(m):
    return m


def _has_sliding_window(model: Any) -> bool:
    """Whether some layer attends to a window only: our 4D padding mask would drop that limit."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or []):
        return True
    return bool(getattr(cfg, "sliding_window", None)) and getattr(cfg, "use_sliding_window", True) is not False


def _prefilled(model: Any, seqs: Sequence[Sequence[int]], max_new_tokens: int, pad_id: int, prefill_tokens: int):
    """Left-pad the prompts, prefill them; return (forward, slab cache, last logits, mask, prompt width).

    ``mask`` is the [rows, prompt width + max_new_tokens] padding mask with the prompt part set, as
    ``model.generate`` builds it; the cache's full-attention layers are slabs of that capacity.
    """
    import torch

    from step_jepa.evaluation.kv_cache import to_slabs

    device = next(model.parameters()).device
    rows, plen = len(seqs), max(len(s) for s in seqs)
    capacity = plen + max_new_tokens
    input_ids = torch.full((rows, plen), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, capacity), dtype=torch.long)
    for r, s in enumerate(seqs):
        if len(s):
            input_ids[r, plen - len(s) :] = torch.tensor(list(s), dtype=torch.long)
        mask[r, plen - len(s) : plen] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    fwd = _Forward(model)
    cache, logits = _prefill(fwd, input_ids, mask[:, :plen], prefill_tokens)
    to_slabs(cache, capacity)
    return fwd, cache, logits, mask, plen


def _decode_batch(
    model: Any,
    seqs: Sequence[Sequence[int]],
    max_new_tokens: int,
    stops: Sequence[int],
    pad_id: int,
    *,
    check_every: int = 8,
    compact_fraction: float = 0.25,
    prefill_tokens: int = 65536,
    cuda_graphs: bool = False,
    graph_window: int = 128,
    stats: list[dict] | None = None,
) -> list[list[int]]:
    """Greedy-decode one batch; return each row's generated ids (stop token included when hit).

    Mirrors ``model.generate(do_sample=False)``: left padding, position ids from the attention mask's
    cumulative sum, finished rows fed the pad token with mask 1 until they are dropped.  Rows leave
    the batch (cache, mask and state index-selected) once more than ``compact_fraction`` of those still
    in it are done; the "anyone left?" check is the only host sync and runs every ``check_every`` steps.
    ``cuda_graphs`` hands the decode steps to :mod:`step_jepa.evaluation.cuda_graphs` (recorded and replayed
    on CUDA; the same static-shape loop run eagerly elsewhere) where the model allows it, with
    attention windows of ``graph_window`` slots. ``stats``, when given, receives one dict per batch
    (rows, decode steps, loop, graphs recorded).
    """
    from step_jepa.evaluation.cuda_graphs import can_use_static, decode_batch_static
    from step_jepa.evaluation.kv_cache import decode_attention

    as_mask = _decode_mask(model)
    fwd, cache, logits, mask, plen = _prefilled(model, seqs, max_new_tokens, pad_id, prefill_tokens)
    with decode_attention(model) if as_mask is _padding_mask_4d else contextlib.nullcontext():
        if cuda_graphs and as_mask is _padding_mask_4d and can_use_static(cache):
            out, info = decode_batch_static(
                fwd,
                cache,
                logits,
                mask,
                plen,
                max_new_tokens,
                stops,
                pad_id,
                check_every=check_every,
                window_step=graph_window,
            )
            if stats is not None:
                stats.append({"rows": len(seqs), "loop": "static", **info})
            return _trim(out.cpu().tolist(), set(stops))
        out, steps = _eager_loop(
            fwd, cache, logits, mask, plen, max_new_tokens, stops, pad_id, as_mask, check_every, compact_fraction
        )
    if stats is not None:
        stats.append({"rows": len(seqs), "loop": "eager", "steps": steps})
    return _trim(out.cpu().tolist(), set(stops))


def _eager_loop(
    fwd: _Forward,
    cache: Any,
    logits,
    mask,
    plen: int,
    max_new_tokens: int,
    stops: Sequence[int],
    pad_id: int,
    as_mask: Callable[[Any], Any],
    check_every: int,
    compact_fraction: float,
):
    """The decode steps with Python-side shapes: the cache grows by one slot per step, rows are dropped.
    Returns (generated ids, decode steps run)."""
    import torch

    device = logits.device
    rows = mask.shape[0]
    stop_t = torch.tensor(list(stops) or [-1], dtype=torch.long, device=device)
    out = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    next_tok = logits.argmax(-1)
    out[:, 0] = next_tok
    state = _Rows(
        mask=mask,
        last_pos=mask[:, :plen].sum(-1) - 1,
        next_tok=next_tok,
        done=torch.isin(next_tok, stop_t),
        row_ids=torch.arange(rows, device=device),
    )
    cur = plen
    steps = 0
    for step in range(1, max_new_tokens):
        if (step % check_every == 0 or step == 1) and state.all_done_or_compact(cache, compact_fraction):
            break
        steps += 1
        state.mask[:, cur] = 1
        state.last_pos = state.last_pos + 1
        logits = fwd(
            state.next_tok[:, None], as_mask(state.mask[:, : cur + 1]), state.last_pos[:, None], cache, last_only=False
        )
        cur += 1
        state.next_tok = torch.where(state.done, pad_id, logits.argmax(-1))
        out[state.row_ids, step] = state.next_tok
        state.done = state.done | torch.isin(state.next_tok, stop_t)
    return out, steps


@dataclass
class _Rows:
    """Per-row decode state of the rows still in the batch (``row_ids`` maps them to output rows)."""

    mask: Any
    last_pos: Any
    next_tok: Any
    done: Any
    row_ids: Any

    def all_done_or_compact(self, cache: Any, compact_fraction: float) -> bool:
        """True when every row is done; otherwise drop finished rows once they are ``compact_fraction``.

        ``int(done.sum())`` is the loop's only host sync, which is why callers check every few steps.
        """
        n_done = int(self.done.sum())
        if n_done == self.done.numel():
            return True
        if n_done > compact_fraction * self.done.numel():
            keep = (~self.done).nonzero().squeeze(1)
            _select_rows(cache, keep)
            self.mask, self.last_pos, self.next_tok = self.mask[keep], self.last_pos[keep], self.next_tok[keep]
            self.done, self.row_ids = self.done[keep], self.row_ids[keep]
        return False


def _trim(rows: list[list[int]], stops: set[int]) -> list[list[int]]:
    """Cut each row after its first stop token (what follows is padding or never computed)."""
    trimmed = []
    for toks in rows:
        for j, t in enumerate(toks):
            if t in stops:
                toks = toks[: j + 1]
                break
        trimmed.append(toks)
    return trimmed


def attention_backends(device: Any) -> contextlib.AbstractContextManager:
    """On CUDA, keep SDPA off the cuDNN backend while decoding.

    cuDNN attention builds an execution plan for every new key length, and a decode step has a new key
    length every time: measured on an H100 (torch 2.11), that cost ~60 ms per step the first time
    each length is seen, more than the step itself.  Flash / memory-efficient kernels have no such
    per-shape setup.  Elsewhere (CPU) nothing changes.
    """
    if getattr(device, "type", str(device)) != "cuda":
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _free_memory() -> None:
    """Release cached GPU blocks after a failure so the retry with fewer rows can use them."""
    import gc

    import torch

    if torch.cuda.is_available():  # on CPU freed tensors go back to the OS by themselves
        gc.collect()
        torch.cuda.empty_cache()


def _decode_with_fallback(
    model: Any, seqs: list[list[int]], decode: Callable[[list[list[int]]], list[list[int]]]
) -> list[list[int] | BaseException]:
    """Decode a batch; on an exception split it in halves and retry, down to single examples.

    Out-of-memory errors are batch-size dependent, so a smaller batch often succeeds; an example that
    fails alone gets its exception back (recorded as its error, counted wrong).
    """
    try:
        return list(decode(seqs))
    except Exception as exc:  # noqa: BLE001 - any failure is recorded per example, never fatal
        _free_memory()
        if len(seqs) == 1:
            return [exc]
        half = len(seqs) // 2
        return _decode_with_fallback(model, seqs[:half], decode) + _decode_with_fallback(model, seqs[half:], decode)


def resolve_budget(model: Any, max_batch_tokens: int | None, batch_size: int | None) -> tuple[int | None, int | None]:
    """The (max_batch_tokens, batch_size) :func:`generate` actually uses: on CUDA the token budget
    defaults to half the free memory (:func:`default_batch_tokens`), on CPU the rows to 16.
    Recorded in summary.json: in bf16 the budget changes the outputs."""
    device = next(model.parameters()).device
    if max_batch_tokens is None:
        max_batch_tokens = default_batch_tokens(model)
    if batch_size is None and device.type != "cuda":
        batch_size = 16
    return max_batch_tokens, batch_size


def resolve_cuda_graphs(model: Any, cuda_graphs: bool | None) -> bool:
    """``None`` (auto): CUDA graphs on a CUDA device, the plain loop elsewhere."""
    if cuda_graphs is None:
        return next(model.parameters()).device.type == "cuda"
    return bool(cuda_graphs)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict]],
    *,
    max_new_tokens: int = 512,
    batch_size: int | None = None,
    max_batch_tokens: int | None = None,
    progress: bool = True,
    stop_ids: Sequence[int] | None = None,
    check_every: int = 8,
    cuda_graphs: bool | None = False,
    graph_window: int = 128,
    stats: list[dict] | None = None,
) -> list[GenResult]:
    """Greedy completions of chat prompts (system + user messages), in the order given.

    ``max_batch_tokens`` bounds ``rows x (longest prompt + max_new_tokens)`` per batch (KV-cache slots);
    on CUDA it defaults to half the free memory, so the whole GSM8K test set of a small model fits in
    one batch.  On CPU ``batch_size`` defaults to 16.  A batch that raises is retried in halves; an
    example that fails alone gets ``GenResult(error=...)``.  ``cuda_graphs`` replays each decode step
    as a recorded CUDA graph (:mod:`step_jepa.evaluation.cuda_graphs`; SDPA models without sliding windows; on
    the CPU the same static-shape loop runs without recording; ``None``: on for a CUDA device only), over
    attention windows rounded up to ``graph_window`` slots. ``stats``: a list that receives one dict per
    decoded batch.
    """
    if not prompts:
        return []
    return generate_ids(
        model,
        tokenizer,
        encode_prompts(tokenizer, prompts),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        progress=progress,
        stop_ids=stop_ids,
        check_every=check_every,
        cuda_graphs=cuda_graphs,
        graph_window=graph_window,
        stats=stats,
    )


def generate_ids(
    model: Any,
    tokenizer: Any,
    seqs: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 512,
    batch_size: int | None = None,
    max_batch_tokens: int | None = None,
    progress: bool = True,
    stop_ids: Sequence[int] | None = None,
    check_every: int = 8,
    cuda_graphs: bool | None = False,
    graph_window: int = 128,
    stats: list[dict] | None = None,
) -> list[GenResult]:
    """:func:`generate` from already tokenized prompts (e.g. lm-eval's plain-text few-shot prompts)."""
    import torch
    from tqdm.auto import tqdm

    if not seqs:
        return []
    seqs = [list(s) for s in seqs]
    stops = list(stop_ids) if stop_ids is not None else stop_token_ids(model, tokenizer)
    pad_id = _pad_id(tokenizer, stops)
    device = next(model.parameters()).device
    max_batch_tokens, batch_size = resolve_budget(model, max_batch_tokens, batch_size)
    cuda_graphs = resolve_cuda_graphs(model, cuda_graphs)
    batches = plan_batches([len(s) for s in seqs], max_new_tokens, max_batch_tokens, batch_size)

    def decode(batch: list[list[int]]) -> list[list[int]]:
        return _decode_batch(
            model,
            batch,
            max_new_tokens,
            stops,
            pad_id,
            check_every=check_every,
            cuda_graphs=cuda_graphs,
            graph_window=graph_window,
            stats=stats,
        )

    results: list[GenResult | None] = [None] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            attention_backends(device),
            tqdm(total=len(seqs), desc="generate", unit="ex", disable=not progress) as bar,
        ):
            for idx in batches:
                for i, toks in zip(idx, _decode_with_fallback(model, [list(seqs[i]) for i in idx], decode)):
                    results[i] = _to_result(tokenizer, toks, set(stops))
                bar.update(len(idx))
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]


def _to_result(tokenizer: Any, toks: list[int] | BaseException, stops: set[int]) -> GenResult:
    if isinstance(toks, BaseException):
        return GenResult(text="", n_tokens=0, error=f"{type(toks).__name__}: {toks}")
    body = toks[:-1] if toks and toks[-1] in stops else toks
    return GenResult(text=tokenizer.decode(body, skip_special_tokens=True), n_tokens=len(toks))


@dataclass
class TimedGeneration:
    """Greedy completions with what the result files record about how they were made."""

    results: list[GenResult]
    seconds: float  # wall time of the generation alone, between CUDA synchronizations
    max_batch_tokens: int | None  # the budget as used (resolved from free memory when not given)
    batch_size: int | None
    cuda_graphs: bool  # asked for (auto resolved); `stats` says whether graphs were recorded
    stats: list[dict]


def timed_generate_ids(
    model: Any,
    tokenizer: Any,
    seqs: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    max_batch_tokens: int | None,
    batch_size: int | None,
    cuda_graphs: bool | None,
    graph_window: int = 128,
    progress: bool = True,
    stop_ids: Sequence[int] | None = None,
) -> TimedGeneration:
    """:func:`generate_ids` with the budget and CUDA-graph choice resolved once, so the protocol
    written beside the predictions names what ran, and timed between synchronizations (CUDA
    kernels run asynchronously: without them the clock would stop before the last batch ends)."""
    import torch

    max_batch_tokens, batch_size = resolve_budget(model, max_batch_tokens, batch_size)
    graphs = resolve_cuda_graphs(model, cuda_graphs)
    stats: list[dict] = []
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    results = generate_ids(
        model,
        tokenizer,
        seqs,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        progress=progress,
        stop_ids=stop_ids,
        cuda_graphs=graphs,
        graph_window=graph_window,
        stats=stats,
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return TimedGeneration(results, time.perf_counter() - t0, max_batch_tokens, batch_size, graphs, stats)
