"""Input formats: convert one raw line (GSM8K, DeepSeek-style response, chat, prepared record) into
a prepared record (:mod:`step_jepa.data.records`).

:func:`convert_line` is the entry point; a line that cannot be used raises
:class:`~step_jepa.data.records.Skip` with a reason from :data:`~step_jepa.data.records.SKIP_REASONS`.
"""

from __future__ import annotations

import hashlib
import re

from step_jepa.data.answers import answers_match, clean_answer, last_boxed
from step_jepa.data.records import (
    DEFAULT_SYSTEM_PROMPT,
    Skip,
    _chat_turns,
    _convert_prepared,
    _normalize_newlines,
    _require_str,
    _scalar_str,
    clean_step,
    final_answer_step,
    make_record,
    merge_short_steps,
    split_steps,
)

FORMATS = ("auto", "gsm8k", "deepseek", "chat", "prepared")


_ANNOTATION_RE = re.compile(r"<<[^<>]*>>")


_GSM8K_FINAL_RE = re.compile(r"^[ \t]*####[ \t]*(.*)$", re.MULTILINE)


_RULE_RE = re.compile(r"^\s*([-*_=])\1{2,}\s*$")


_STEP_MARKER_RE = re.compile(r"^\s*(?:#{1,6}\s*)?(\*\*|__)?\s*step\s*\d+\s*[:.)\-\u2013\u2014]?\s*", re.IGNORECASE)


_NUMBERED_RE = re.compile(r"^\s*\d{1,2}[.)]\s+")


def detect_format(obj: dict) -> str:
    """Guess the format of one raw object from its keys."""
    if "messages" in obj:
        return "prepared" if "steps" in obj else "chat"
    if "deepseek_response" in obj:
        return "deepseek"
    if "question" in obj and "answer" in obj:
        return "gsm8k"
    raise Skip("unknown format", f"no known format has keys {sorted(obj)[:8]}")


def _gsm8k_parts(answer_text: str, keep_annotations: bool) -> tuple[list[str], str]:
    """Split a GSM8K solution into its reasoning lines and the normalised ``####`` answer."""
    text = _normalize_newlines(answer_text)
    finals = list(_GSM8K_FINAL_RE.finditer(text))
    if not finals:
        raise Skip("no final answer", "GSM8K answer has no '#### <answer>' line")
    final = finals[-1]
    answer = clean_answer(final.group(1))
    if not answer:
        raise Skip("empty answer", "nothing after '####'")
    body = text[: final.start()]
    if not keep_annotations:
        body = _ANNOTATION_RE.sub("", body)
    # GSM8K writes one reasoning step per line.
    steps = [clean_step(line) for line in body.split("\n")]
    return [s for s in steps if s], answer


def _convert_gsm8k(obj: dict, keep_annotations: bool) -> tuple[str, list[str], str]:
    question = _require_str(obj, "question")
    steps, answer = _gsm8k_parts(_require_str(obj, "answer"), keep_annotations)
    return question, steps + [final_answer_step(answer)], answer


def _strip_think(response: str) -> str:
    """Drop a ``<think>`` block when there is an answer after it; if the model put everything
    inside (or was cut off inside it), the thinking *is* the solution."""
    if "</think>" in response:
        before, _, after = response.rpartition("</think>")
        if after.strip():
            return after
        return before.split("<think>", 1)[-1]
    if "<think>" in response:
        return response.split("<think>", 1)[1]
    return response


def _strip_marker(paragraph: str) -> str:
    """Remove a leading ``**Step 2: Title**`` / ``Step 3:`` / ``1.`` marker, keeping any title.

    The markers are formatting the model should not have to learn; the title is content.
    """
    m = _STEP_MARKER_RE.match(paragraph)
    if not m:
        return _NUMBERED_RE.sub("", paragraph, count=1).strip()
    rest = paragraph[m.end() :]
    bold = m.group(1)
    if not bold or bold not in rest:
        return rest.strip()
    title, _, tail = rest.partition(bold)
    title = title.strip().rstrip(":").strip()
    if not title:
        return tail.strip()
    if not tail.strip() or tail.startswith("\n"):
        return f"{title}{tail}".strip()
    sep = " " if title[-1] in ".!?" else ": "
    return f"{title}{sep}{tail.strip()}"


def _deepseek_answer(obj: dict, response: str) -> str:
    truth = _scalar_str(obj, "ground_truth")
    if not truth:
        fallback = _scalar_str(obj, "answer") or ""
        # Many synthetic sets copy the GSM8K solution into "answer"; its #### line is the truth.
        if "####" in fallback:
            fallback = _gsm8k_parts(fallback, keep_annotations=False)[1]
        truth = fallback or last_boxed(response) or ""
    if not truth:
        raise Skip("no final answer", "no ground_truth, answer or \\boxed{} in the response")
    return clean_answer(truth)


def _convert_deepseek(obj: dict) -> tuple[str, list[str], str]:
    question = _require_str(obj, "question")
    response = _strip_think(_require_str(obj, "deepseek_response"))
    answer = _deepseek_answer(obj, response)
    if not answer:
        raise Skip("empty answer", "the ground truth is empty")
    paragraphs = (_strip_marker(p) for p in split_steps(response))
    steps = [s for s in (clean_step(p) for p in paragraphs) if s and not _RULE_RE.match(s)]
    boxed = last_boxed(steps[-1]) if steps else None
    # The evaluator's comparison, so prepare never drops a trace that eval would score as correct.
    if boxed is not None and not answers_match(boxed, answer):
        # A solution that ends in a wrong answer would teach wrong reasoning.
        raise Skip("answer mismatch", f"response says {boxed!r}, ground truth is {answer!r}")
    if boxed is None:
        steps.append(final_answer_step(answer))
    return question, steps, answer


def _convert_chat(obj: dict) -> tuple[str | None, str, list[str], str]:
    system, question, assistant = _chat_turns(obj)
    # Chat data need not be math: an assistant turn without \boxed{} is kept with answer "".
    answer = clean_answer(last_boxed(assistant) or "")
    return system, question, split_steps(assistant), answer


def _record_id(obj: dict, fallback: str | None, question: str, steps: list[str]) -> str:
    rid = _scalar_str(obj, "id")
    if rid == "":
        raise Skip("empty field", "field 'id' is empty")
    if rid is not None:
        return rid
    if fallback is not None:
        return fallback
    digest = hashlib.sha1("\n\n".join([question, *steps]).encode("utf-8")).hexdigest()[:12]
    return f"ex-{digest}"


def convert_line(
    obj: dict,
    fmt: str = "auto",
    *,
    keep_annotations: bool = False,
    min_step_chars: int = 1,
    min_steps: int = 2,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    id: str | None = None,
) -> dict:
    """Convert one raw object (any supported format, or a prepared record) to a prepared record.

    ``id`` is used only when the object has no ``"id"`` of its own (then a content hash is the
    last resort). ``system_prompt`` fills in for records without a system message; chat and
    prepared records keep their own. Raises :class:`Skip` when the line cannot be used.
    """
    if not isinstance(obj, dict):
        raise Skip("not a json object", f"got a JSON {type(obj).__name__}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    kind = detect_format(obj) if fmt == "auto" else fmt
    system: str | None = None
    if kind == "gsm8k":
        question, steps, answer = _convert_gsm8k(obj, keep_annotations)
    elif kind == "deepseek":
        question, steps, answer = _convert_deepseek(obj)
    else:
        if "messages" not in obj:
            raise Skip("missing field", "field 'messages' is missing")
        if kind == "prepared" and "steps" not in obj:
            raise Skip("missing field", "field 'steps' is missing")
        convert = _convert_prepared if kind == "prepared" else _convert_chat
        system, question, steps, answer = convert(obj)
    steps = merge_short_steps(steps, min_step_chars)
    if len(steps) < max(1, min_steps):
        raise Skip("fewer than min steps", f"{len(steps)} step(s), need at least {min_steps}")
    rid = _record_id(obj, id, question, steps)
    return make_record(rid, question, steps, answer, system if system is not None else system_prompt)
