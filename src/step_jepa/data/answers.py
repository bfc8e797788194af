"""Answer extraction, normalisation and matching: the one definition of "the same answer".

* :func:`clean_answer` and :func:`last_boxed` are what ``prepare`` uses to read a gold answer out of
  raw data.
* :func:`extract_answer`, :func:`normalize_answer`, :func:`answers_match` turn free text into a
  comparable number.  They are deliberately strict by default (a ``\\boxed{}`` or ``####`` answer is
  required) because the fine-tuned models are trained to end with ``The final answer is \\boxed{N}.``;
  ``lenient`` adds the "last number in the text" fallback for base models that never learned the
  format.  ``prepare`` compares with :func:`answers_match` too, so it never drops a trace that eval
  would score as correct.

Standard library only; imports nothing from the package.
"""

from __future__ import annotations

import re
from fractions import Fraction

_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d)")


def clean_answer(answer: str) -> str:
    """Strip and drop thousands separators (``1,000`` -> ``1000``) so answers compare exactly."""
    return _THOUSANDS_RE.sub("", answer.strip())


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces (``\\boxed{\\frac{1}{2}}``)."""
    start = text.rfind("\\boxed{")
    while start != -1:
        depth = 0
        for i in range(start + len("\\boxed"), len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start + len("\\boxed{") : i].strip()
        # Unbalanced (truncated generation): try an earlier, complete one.
        start = text.rfind("\\boxed{", 0, start)
    return None


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
    for old, new in (
        ("\\$", ""),
        ("$", ""),
        ("\\%", ""),
        ("%", ""),
        ("{,}", ","),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", " "),
        ("\\left", ""),
        ("\\right", ""),
        ("\\(", ""),
        ("\\)", ""),
        ("\\[", ""),
        ("\\]", ""),
        ("~", " "),
    ):
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
