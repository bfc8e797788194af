"""Steps → token spans.

A record is rendered with the tokenizer's own chat template, the assistant content and each of
its steps are located as *character* spans of the rendered text, and those are mapped to token
spans with the fast tokenizer's offsets. Searching for the token ids of "\\n\\n" would be wrong
twice over: Llama-3-style templates put "\\n\\n" in their headers, and byte-level BPE merges
"\\n\\n" with its neighbours (".\\n\\n", "\\n\\n\\n"), so the separator has no fixed token id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

IGNORE_INDEX = -100
STEP_SEPARATOR = "\n\n"

# Used when a tokenizer has no chat template: plain role headers, end of turn = the EOS token.
_PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


class SegmentError(ValueError):
    """A record that cannot be turned into training tokens (reported and skipped by the caller)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Segmented:
    """One training example as tokens, with the token span of every reasoning step.

    `step_spans[i]` is the half-open token range of step i, or None when truncation cut into it.
    A JEPA pair (i, i+1) is usable only when both spans are intact and do not share a token.
    """

    id: str
    input_ids: list[int]
    labels: list[int]
    step_spans: list[tuple[int, int] | None]
    prompt_len: int
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def valid_pairs(self) -> list[int]:
        """Indices i of the consecutive step pairs (i, i+1) that can be used for the JEPA term."""
        out = []
        for i in range(len(self.step_spans) - 1):
            a, b = self.step_spans[i], self.step_spans[i + 1]
            if a is None or b is None:
                continue
            if a[1] > a[0] and b[1] > b[0] and a[1] <= b[0]:
                out.append(i)
        return out

    def with_boundary(self, boundary: str) -> Segmented:
        """This example with its step spans ending where `boundary` (--view_boundary) says.

        'content' (the default): spans as segmented, each ending at the step's last content
        token. 'separator' (the seed's two-pass convention): each step also takes the tokens up
        to the next step's first token, so it ends with its blank-line separator (where the
        tokenizer merged the separator into a content token, that token ends it). The last step
        has no separator: it takes the tokens up to and including the last labelled one, the
        end-of-turn token, so the pair into it reads view 2 where the answer closes. It has no
        such span (its pairs are invalid) when truncation cut the example or no labelled token
        follows it (a template without an end-of-turn token); nor has a step whose next step was
        cut, since where its separator ends is unknown.
        """
        if boundary == "content":
            return self
        if boundary != "separator":
            raise ValueError(f"unknown view boundary {boundary!r} (content|separator)")
        spans = self.step_spans
        last_label = max((t for t, lab in enumerate(self.labels) if lab != IGNORE_INDEX), default=-1)
        out: list[tuple[int, int] | None] = []
        for i, span in enumerate(spans):
            if span is None:
                out.append(None)
            elif i + 1 < len(spans):
                nxt = spans[i + 1]
                out.append(None if nxt is None else (span[0], max(span[1], nxt[0])))
            else:
                out.append(None if self.truncated or last_label < span[1] else (span[0], last_label + 1))
        return replace(self, step_spans=out)


def chat_template_of(tokenizer) -> str:
    """The tokenizer's template, or a plain 'Role: text<eos>' fallback for base models."""
    return tokenizer.chat_template or _PLAIN_TEMPLATE


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """Render chat messages to text with the tokenizer's template (or the plain fallback)."""
    return tokenizer.apply_chat_template(
        messages,
        chat_template=chat_template_of(tokenizer),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def step_char_spans(content: str) -> list[tuple[int, int]]:
    """Character spans of the steps of an assistant text: blocks between blank lines, stripped.

    Runs of more than two newlines count as one separator; whitespace-only blocks are not steps.
    """
    spans = []
    for m in re.finditer(r"(?:(?!\n\s*\n).)+", content, flags=re.DOTALL):
        text = m.group(0)
        if not text.strip():
            continue
        start = m.start() + (len(text) - len(text.lstrip()))
        end = m.end() - (len(text) - len(text.rstrip()))
        spans.append((start, end))
    return spans


def _tokens_overlapping(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """Half-open token range of the tokens whose characters overlap [start, end)."""
    idx = [t for t, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
    return (idx[0], idx[-1] + 1) if idx else None


def _assistant_char_span(text: str, content: str) -> tuple[int, int]:
    """Where the (last) assistant content sits in the rendered text."""
    pos = text.rfind(content)
    if pos < 0 or not content:
        raise SegmentError("template mangles content", "assistant text not found verbatim in the rendered chat")
    return pos, pos + len(content)


def _end_of_turn_token(tokenizer, input_ids: list[int], offsets, content_end: int) -> int | None:
    """Index of the special token that closes the assistant turn, so the model learns to stop."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}).keys())
    for t, (s, e) in enumerate(offsets):
        if s >= content_end and (e > s or input_ids[t] in special):
            return t if input_ids[t] in special else None
    return None


def segment(record: dict, tokenizer, max_length: int | None = None) -> Segmented:
    """Tokenize a prepared record and locate its steps as token spans.

    Labels cover the assistant content and the end-of-turn token. Truncation keeps the prompt
    and cuts the answer from the end; a step that is cut loses its span (so its pairs become
    invalid) rather than being silently shortened. A prompt that alone exceeds `max_length`
    raises SegmentError so the caller can count and report it.
    """
    messages = record["messages"]
    assistant = [m for m in messages if m["role"] == "assistant"]
    if not assistant:
        raise SegmentError("no assistant turn")
    content = assistant[-1]["content"]
    text = render(tokenizer, messages)
    c_start, c_end = _assistant_char_span(text, content)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]

    answer_tokens = _tokens_overlapping(offsets, c_start, c_end)
    if answer_tokens is None:
        raise SegmentError("empty answer")
    prompt_len = answer_tokens[0]
    labels = [IGNORE_INDEX] * len(ids)
    for t in range(answer_tokens[0], answer_tokens[1]):
        labels[t] = ids[t]
    eot = _end_of_turn_token(tokenizer, ids, offsets, c_end)
    if eot is not None:
        labels[eot] = ids[eot]

    spans: list[tuple[int, int] | None] = [
        _tokens_overlapping(offsets, c_start + a, c_start + b) for a, b in step_char_spans(content)
    ]
    truncated = False
    if max_length is not None and len(ids) > max_length:
        if prompt_len >= max_length:
            raise SegmentError("prompt longer than max_length", f"{prompt_len} prompt tokens > {max_length}")
        truncated = True
        ids, labels = ids[:max_length], labels[:max_length]
        spans = [s if s is not None and s[1] <= max_length else None for s in spans]
    return Segmented(
        id=str(record.get("id", "")),
        input_ids=ids,
        labels=labels,
        step_spans=spans,
        prompt_len=prompt_len,
        truncated=truncated,
    )
