"""Evaluate a causal LM on GSM8K-style problems: fast batched greedy decoding, answer extraction, scoring.

Three layers, each usable alone:

* :func:`extract_answer`, :func:`normalize_answer`, :func:`answers_match` turn free text into a comparable
  number.  They are deliberately strict by default (a ``\\boxed{}`` or ``####`` answer is required) because
  the fine-tuned models are trained to end with ``The final answer is \\boxed{N}.``; ``lenient`` adds the
  "last number in the text" fallback for base models that never learned the format.
* :func:`generate` is our own greedy decode loop.  ``model.generate`` runs every batch until its longest
  row finishes and pays per-step overhead for features we do not use; here prompts are length sorted
  into memory-sized batches (the whole GSM8K test set of a small model is one batch on an 80 GB GPU),
  finished rows are dropped from the batch as they accumulate, the decode step skips transformers'
  mask construction (and the host sync inside it), writes the KV cache in place and attends each
  key/value head once (:mod:`step_jepa.decoding`), and the host only synchronises every few steps.  The
  tokens are the same as ``model.generate(do_sample=False)`` (tested on CPU in fp32).
* :func:`evaluate` scores records, writes ``predictions.jsonl`` and ``summary.json``.  Every example is in
  the denominator: no answer and generation errors count as wrong.

:func:`add_cli` registers ``step-jepa eval``.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import platform
import re
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "GenResult",
    "extract_answer",
    "normalize_answer",
    "answers_match",
    "encode_prompts",
    "stop_token_ids",
    "plan_batches",
    "generate",
    "build_prompts",
    "evaluate",
    "add_cli",
]

# --------------------------------------------------------------------------------------------------------
# Answer extraction and normalisation
# --------------------------------------------------------------------------------------------------------

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)")
_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
# A number as people write it: optional sign, thousands groups or plain digits, optional decimals.
_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
_NUM_RE = re.compile(_NUM)
# A number, optionally followed by "/ number" (a plain fraction such as 3/4).
_VALUE_RE = re.compile(rf"(?P<num>{_NUM})(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?")


def _read_braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at ``text[start] == '{'``, nested braces included.

    Returns ``(content, index after the closing brace)``, or None when the group never closes: a
    truncated generation must not count as having answered.
    """
    depth = 0
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None


def _boxed_contents(text: str) -> list[str]:
    """All non-empty ``\\boxed{...}`` (and ``\\boxed 5`` / ``\\fbox{...}``) contents, in order."""
    found: list[str] = []
    for m in _BOXED_RE.finditer(text):
        i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            group = _read_braced(text, i)
            if group is not None and group[0].strip():
                found.append(group[0].strip())
        elif m.end() < len(text) and text[m.end()] == " ":
            # TeX also accepts "\boxed 5": the argument is the next single token.
            arg = re.match(r"[^\s$]+", text[i:])
            if arg:
                found.append(arg.group(0).rstrip(".,;"))
    return found


def extract_answer(text: str, lenient: bool = False) -> str | None:
    """The answer a model committed to, as written (not yet normalised), or None.

    Priority: the LAST non-empty ``\\boxed{...}`` (models often box intermediate values and the final
    one is the answer; empty boxes are ignored), then the text after the last ``####`` (GSM8K's own
    format), then, only when ``lenient``, the last number anywhere in the text.
    """
    if not text:
        return None
    boxed = _boxed_contents(text)
    if boxed:
        return boxed[-1]
    hashes = [m.group(1).strip() for m in _HASH_RE.finditer(text)]
    hashes = [h for h in hashes if h]
    if hashes:
        return hashes[-1]
    if lenient:
        nums = _NUM_RE.findall(text)
        if nums:
            return nums[-1]
    return None


_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_TEXT_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")


def _strip_latex(s: str) -> str:
    """Remove the LaTeX and currency decoration around a number, keep the number's own characters."""
    s = s.replace("\u2212", "-").replace("\u2013", "-")  # unicode minus / en dash written as a sign
    s = _TEXT_RE.sub(r" \1 ", s)
    for old, new in (("\\$", ""), ("$", ""), ("\\%", ""), ("%", ""), ("{,}", ","), ("\\!", ""),
                     ("\\,", ""), ("\\;", " "), ("\\left", ""), ("\\right", ""), ("\\(", ""),
                     ("\\)", ""), ("\\[", ""), ("\\]", ""), ("~", " ")):
        s = s.replace(old, new)
    s = _FRAC_RE.sub(r"(\1)/(\2)", s)
    s = _FRAC_SHORT_RE.sub(r"\1/\2", s)
    # "-(3)/(4)" -> "-3/4": fraction parts are plain numbers after the substitution above.
    s = re.sub(r"\(\s*([-+]?[\d.,]+)\s*\)", r"\1", s)
    return s


def _to_fraction(s: str) -> Fraction | None:
    """Exact value of the first number (or ``a/b`` fraction) in ``s`` after LaTeX clean-up."""
    s = _strip_latex(s)
    if "=" in s:
        # "x = 5": the value is on the right of the last equals sign.
        s = s.rsplit("=", 1)[1]
    m = _VALUE_RE.search(s)
    if m is None:
        return None
    num = m.group("num").replace(",", "").replace("+", "")
    try:
        value = Fraction(num)
        if m.group("den") is not None:
            den = Fraction(m.group("den"))
            if den == 0:
                return None
            value /= den
    except (ValueError, ZeroDivisionError):
        return None
    return value


def _format_fraction(value: Fraction) -> str:
    """Canonical text of an exact value: integer, terminating decimal, or ``p/q`` when it repeats."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    # Terminating decimal: scale to an integer with enough digits, then trim zeros.
    digits = 0
    scaled = value
    while scaled.denominator != 1:
        scaled *= 10
        digits += 1
    sign = "-" if scaled < 0 else ""
    whole = str(abs(scaled.numerator)).rjust(digits + 1, "0")
    return f"{sign}{whole[:-digits]}.{whole[-digits:]}".rstrip("0").rstrip(".")


def normalize_answer(s: str | None) -> str | None:
    """Canonical numeric string of an answer (``"$1,000.00"`` -> ``"1000"``, ``"\\frac{3}{4}"`` -> ``"0.75"``).

    Units and words around the number are dropped (``"12 dollars"`` -> ``"12"``), a percent sign is
    dropped (``"50%"`` -> ``"50"``: GSM8K golds are written without it), ``x = 5`` keeps the right-hand
    side.  Values are exact (``fractions.Fraction``) so ``0.1 + 0.2``-style float noise cannot creep in;
    non-terminating fractions stay as ``p/q``.  Returns None when there is no number.
    """
    if s is None:
        return None
    value = _to_fraction(str(s))
    return None if value is None else _format_fraction(value)


def answers_match(pred: str | None, gold: str | None) -> bool:
    """True when both answers normalise to the same exact number (``"0.75"`` == ``"\\frac{3}{4}"``)."""
    if pred is None or gold is None:
        return False
    p, g = _to_fraction(str(pred)), _to_fraction(str(gold))
    return p is not None and g is not None and p == g


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
    from .segment import render

    texts = [render(tokenizer, list(p), add_generation_prompt=True) for p in prompts]
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a generation: the tokenizer's eos, the generation config's eos id(s) and the
    end-of-turn markers of known chat templates that exist in this vocabulary."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if eos is not None:
        ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in _END_OF_TURN if t in vocab)
    return sorted(ids)


def _pad_id(tokenizer: Any, stops: Sequence[int]) -> int:
    """Pad token id; falls back to a stop token (any id works: padded positions are masked out)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    return int(stops[0]) if stops else 0


def plan_batches(lengths: Sequence[int], max_new_tokens: int, max_batch_tokens: int | None,
                 batch_size: int | None) -> list[list[int]]:
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
        too_big = max_batch_tokens is not None and (len(current) + 1) * (new_longest + max_new_tokens) > max_batch_tokens
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


def _decode_batch(model: Any, seqs: Sequence[Sequence[int]], max_new_tokens: int, stops: Sequence[int],
                  pad_id: int, *, check_every: int = 8, compact_fraction: float = 0.25,
                  prefill_tokens: int = 65536) -> list[list[int]]:
    """Greedy-decode one batch; return each row's generated ids (stop token included when hit).

    Mirrors ``model.generate(do_sample=False)``: left padding, position ids from the attention mask's
    cumulative sum, finished rows fed the pad token with mask 1 until they are dropped.  Rows leave
    the batch (cache, mask and state index-selected) once more than ``compact_fraction`` of those still
    in it are done; the "anyone left?" check is the only host sync and runs every ``check_every`` steps.
    """
    import torch

    from .decoding import decode_attention, to_slabs

    device = next(model.parameters()).device
    rows, plen = len(seqs), max(len(s) for s in seqs)
    capacity = plen + max_new_tokens
    input_ids = torch.full((rows, plen), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, capacity), dtype=torch.long)
    for r, s in enumerate(seqs):
        if len(s):
            input_ids[r, plen - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[r, plen - len(s): plen] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    stop_t = torch.tensor(list(stops) or [-1], dtype=torch.long, device=device)
    out = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)

    fwd = _Forward(model)
    as_mask = _decode_mask(model)
    cache, logits = _prefill(fwd, input_ids, mask[:, :plen], prefill_tokens)
    to_slabs(cache, capacity)
    next_tok = logits.argmax(-1)
    out[:, 0] = next_tok
    state = _Rows(mask=mask, last_pos=mask[:, :plen].sum(-1) - 1, next_tok=next_tok,
                  done=torch.isin(next_tok, stop_t), row_ids=torch.arange(rows, device=device))
    with decode_attention(model) if as_mask is _padding_mask_4d else contextlib.nullcontext():
        cur = plen
        for step in range(1, max_new_tokens):
            if (step % check_every == 0 or step == 1) and state.all_done_or_compact(cache, compact_fraction):
                break
            state.mask[:, cur] = 1
            state.last_pos = state.last_pos + 1
            logits = fwd(state.next_tok[:, None], as_mask(state.mask[:, : cur + 1]), state.last_pos[:, None],
                         cache, last_only=False)
            cur += 1
            state.next_tok = torch.where(state.done, pad_id, logits.argmax(-1))
            out[state.row_ids, step] = state.next_tok
            state.done = state.done | torch.isin(state.next_tok, stop_t)
    return _trim(out.cpu().tolist(), set(stops))


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


def _decode_with_fallback(model: Any, seqs: list[list[int]], decode: Callable[[list[list[int]]], list[list[int]]]
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
        return (_decode_with_fallback(model, seqs[:half], decode)
                + _decode_with_fallback(model, seqs[half:], decode))


def generate(model: Any, tokenizer: Any, prompts: Sequence[list[dict]], *, max_new_tokens: int = 512,
             batch_size: int | None = None, max_batch_tokens: int | None = None, progress: bool = True,
             stop_ids: Sequence[int] | None = None, check_every: int = 8) -> list[GenResult]:
    """Greedy completions of chat prompts (system + user messages), in the order given.

    ``max_batch_tokens`` bounds ``rows x (longest prompt + max_new_tokens)`` per batch (KV-cache slots);
    on CUDA it defaults to half the free memory, so the whole GSM8K test set of a small model fits in
    one batch.  On CPU ``batch_size`` defaults to 16.  A batch that raises is retried in halves; an
    example that fails alone gets ``GenResult(error=...)``.
    """
    import torch
    from tqdm.auto import tqdm

    if not prompts:
        return []
    seqs = encode_prompts(tokenizer, prompts)
    stops = list(stop_ids) if stop_ids is not None else stop_token_ids(model, tokenizer)
    pad_id = _pad_id(tokenizer, stops)
    device = next(model.parameters()).device
    if max_batch_tokens is None:
        max_batch_tokens = default_batch_tokens(model)
    if batch_size is None and device.type != "cuda":
        batch_size = 16
    batches = plan_batches([len(s) for s in seqs], max_new_tokens, max_batch_tokens, batch_size)

    def decode(batch: list[list[int]]) -> list[list[int]]:
        return _decode_batch(model, batch, max_new_tokens, stops, pad_id, check_every=check_every)

    results: list[GenResult | None] = [None] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), attention_backends(device), \
                tqdm(total=len(seqs), desc="generate", unit="ex", disable=not progress) as bar:
            for idx in batches:
                for i, toks in zip(idx, _decode_with_fallback(model, [seqs[i] for i in idx], decode)):
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


# --------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------


def _question(record: dict) -> str:
    for m in record.get("messages", []):
        if m.get("role") == "user":
            return m["content"]
    return str(record.get("question", ""))


def build_prompts(records: Iterable[dict], system_prompt: str | None = None) -> list[list[dict]]:
    """Chat prompts (system + user) for records.

    ``system_prompt=None`` keeps each record's own system message: it is the prompt the model was
    trained with, and changing it measurably moves accuracy.  A string replaces it; ``""`` drops it
    (for templates or models that reject a system turn).
    """
    prompts = []
    for rec in records:
        own = [m for m in rec.get("messages", []) if m.get("role") == "system"]
        if system_prompt is None:
            system = own[0]["content"] if own else None
        else:
            system = system_prompt or None
        msgs = [{"role": "system", "content": system}] if system is not None else []
        msgs.append({"role": "user", "content": _question(rec)})
        prompts.append(msgs)
    return prompts


def _versions() -> dict[str, str]:
    import torch
    import transformers

    from . import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "step_jepa": __version__}


def evaluate(model: Any, tokenizer: Any, records: Sequence[dict], *, out_dir: str | Path,
             max_new_tokens: int = 512, batch_size: int | None = None, max_batch_tokens: int | None = None,
             system_prompt: str | None = None, lenient: bool = False, progress: bool = True,
             model_name: str | None = None) -> dict:
    """Generate for every record, score against ``record["answer"]``, write predictions and summary.

    Denominator policy: accuracy = correct / len(records).  An output without an extractable answer
    and an example whose generation raised are both wrong, never skipped, so a model cannot look
    better by failing more.
    """
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = build_prompts(records, system_prompt)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                    max_batch_tokens=max_batch_tokens, progress=progress)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0

    rows = [_score(rec, gen, lenient) for rec, gen in zip(records, gens)]
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = _summarize(rows, seconds, model, max_new_tokens, lenient, model_name, batch_size, system_prompt)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _score(record: dict, gen: GenResult, lenient: bool) -> dict:
    extracted = None if gen.error else extract_answer(gen.text, lenient=lenient)
    gold = str(record.get("answer", ""))
    return {"id": record.get("id"), "question": _question(record), "output": gen.text, "extracted": extracted,
            "gold": gold, "correct": bool(gen.error is None and answers_match(extracted, gold)),
            "tokens": gen.n_tokens, "error": gen.error}


def _summarize(rows: list[dict], seconds: float, model: Any, max_new_tokens: int, lenient: bool,
               model_name: str | None, batch_size: int | None, system_prompt: str | None) -> dict:
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    no_answer = sum(r["extracted"] is None and r["error"] is None for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    param = next(model.parameters())
    return {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "correct": correct,
        "no_answer": no_answer,
        "no_answer_rate": no_answer / n if n else 0.0,
        "errors": sum(r["error"] is not None for r in rows),
        "mean_output_tokens": tokens / n if n else 0.0,
        "generation_seconds": round(seconds, 3),
        "generated_tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "lenient": lenient,
        "system_prompt": "record" if system_prompt is None else system_prompt,
        "model": model_name or getattr(model.config, "_name_or_path", None) or type(model).__name__,
        "device": str(param.device),
        "dtype": str(param.dtype).replace("torch.", ""),
        "versions": _versions(),
    }


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------

_DTYPES = {"auto": None, "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def add_cli(subparsers: Any) -> None:
    """Register ``step-jepa eval`` on an ``argparse`` subparsers object."""
    from .cli import DefaultsFormatter

    p = subparsers.add_parser("eval", help="greedy-decode a model on GSM8K-style problems and score it",
                              description="Evaluate a model (HF id, merged dir or LoRA adapter dir) on GSM8K-style "
                                          "problems with fast batched greedy decoding.",
                              formatter_class=DefaultsFormatter)
    p.add_argument("--model", required=True, help="model id or directory (LoRA adapter dirs are merged)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--test_file", help="prepared JSONL or raw GSM8K {question, answer} lines")
    src.add_argument("--dataset", help="Hugging Face dataset name, e.g. openai/gsm8k (needs `datasets`)")
    src.add_argument("--generate", type=int, metavar="N", help="evaluate on N synthetic problems")
    p.add_argument("--split", default="test", help="dataset split (with --dataset)")
    p.add_argument("--dataset_config", default="main", help="dataset config name (with --dataset)")
    p.add_argument("--seed", type=int, default=1000,
                   help="seed for --generate (default 1000: training on generated problems uses the run seed, 0 by default)")
    p.add_argument("--max_new_tokens", type=int, default=512, help="generation limit per problem, in tokens")
    p.add_argument("--batch_size", type=int, default=None, help="max rows per batch (default: by memory)")
    p.add_argument("--max_batch_tokens", type=int, default=None,
                   help="max rows x (prompt + max_new_tokens) per batch (default: half the free GPU memory)")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples (default: all)")
    p.add_argument("--system_prompt", default=None,
                   help="replace each record's system prompt ('' drops it; default: each record's own)")
    p.add_argument("--lenient", action="store_true", help="fall back to the last number in the output")
    p.add_argument("--output_dir", default=None,
                   help="where predictions.jsonl and summary.json go (default: RUN/eval-<source> for a run's "
                        "final/ dir, RUN/eval-<dir>-<source> for its checkpoint-N/ or merged/, else "
                        "./eval/<model name>-<source>; never inside the model dir)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="auto",
                   help="auto: bf16 on a CUDA GPU, the checkpoint dtype on CPU")
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_cli)


def _load_model(name: str, dtype: str, device: str | None):
    """Load through ``step_jepa.modeling.load_for_inference`` (adapters, merged dirs, offline default)."""
    import torch

    torch_dtype = getattr(torch, _DTYPES[dtype]) if _DTYPES[dtype] else None
    from .modeling import load_for_inference

    return load_for_inference(name, dtype=torch_dtype, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _dataset_records(name: str, config: str | None, split: str) -> list[dict]:
    """Rows of a Hugging Face dataset, converted like a raw GSM8K JSONL file by ``step_jepa.data``."""
    import tempfile

    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise SystemExit("--dataset needs the `datasets` package: pip install 'step-jepa[datasets]'") from exc
    try:
        ds = load_dataset(name, config, split=split) if config else load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - network, auth and name errors all end the same way
        raise SystemExit(f"could not load dataset {name!r} ({config}, {split}): {exc}\n"
                         "Offline? Save the split as JSONL and pass --test_file.") from exc
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for row in ds:
                f.write(json.dumps({"question": row["question"], "answer": row["answer"]}) + "\n")
        return _load_file(path)


def _load_file(path: str | Path) -> list[dict]:
    from .data import load_records

    records, _report = load_records(str(path), purpose="test")
    return list(records)


def _records_from_args(args: argparse.Namespace) -> tuple[list[dict], str]:
    if args.test_file:
        records, source = _load_file(args.test_file), Path(args.test_file).stem
    elif args.dataset:
        records, source = _dataset_records(args.dataset, args.dataset_config, args.split), \
            f"{args.dataset.split('/')[-1]}-{args.split}"
    else:
        from .generator import generate_problems

        records, source = generate_problems(args.generate, seed=args.seed), f"generated{args.generate}-s{args.seed}"
    if args.limit is not None:
        records = records[: args.limit]
    return records, source


def check_args(args: argparse.Namespace) -> None:
    """Refuse out-of-range values before any data or model is loaded.

    Without this, ``--limit -3`` slices off the last 3 examples and evaluates the rest, and
    ``--max_new_tokens 0`` "succeeds" with an error recorded for every example.
    """
    checks = [
        (args.limit is None or args.limit >= 1, f"--limit must be >= 1, got {args.limit}"),
        (args.max_new_tokens >= 1, f"--max_new_tokens must be >= 1, got {args.max_new_tokens}"),
        (args.batch_size is None or args.batch_size >= 1, f"--batch_size must be >= 1, got {args.batch_size}"),
        (args.max_batch_tokens is None or args.max_batch_tokens >= 1,
         f"--max_batch_tokens must be >= 1, got {args.max_batch_tokens}"),
        (args.generate is None or args.generate >= 1, f"--generate must be >= 1, got {args.generate}"),
    ]
    problems = [msg for ok, msg in checks if not ok]
    if problems:
        raise ValueError("; ".join(problems))


def default_output_dir(model: str, source: str) -> Path:
    """Where results go without --output_dir: next to the model, never inside it.

    A run's final/ (or checkpoint-N/, merged/) is what gets loaded, copied and uploaded as the
    model; eval files written into it would travel with the weights, and a second eval of the
    same run would be hidden inside the model dir. So a model dir of a training run (named
    final, or whose parent holds step_jepa_config.yaml) writes into the run dir; any other
    model writes under ./eval, named after the model's last path component.
    """
    path = Path(model)
    if path.is_dir() and (path.name == "final" or (path.parent / "step_jepa_config.yaml").exists()):
        tag = "" if path.name == "final" else f"{path.name}-"
        return path.parent / f"eval-{tag}{source}"
    name = path.resolve().name if path.is_dir() else model.rstrip("/").split("/")[-1]
    return Path("eval") / f"{name}-{source}"


def run_cli(args: argparse.Namespace) -> int:
    """``step-jepa eval``: load, evaluate, print the summary. Returns the process exit code."""
    check_args(args)
    records, source = _records_from_args(args)
    if not records:
        print("no examples to evaluate")
        return 1
    out_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args.model, source)
    model, tokenizer = _load_model(args.model, args.dtype, args.device)
    summary = evaluate(model, tokenizer, records, out_dir=out_dir, max_new_tokens=args.max_new_tokens,
                       batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                       system_prompt=args.system_prompt, lenient=args.lenient,
                       progress=not args.no_progress, model_name=args.model)
    print(f"accuracy {summary['accuracy']:.4f} ({summary['correct']}/{summary['n']}), "
          f"no answer {summary['no_answer']}, errors {summary['errors']}, "
          f"{summary['generation_seconds']:.1f} s, {summary['generated_tokens_per_s']} tok/s -> {out_dir}")
    return 0
