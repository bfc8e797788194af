"""Tests for the synthetic word-problem generator: determinism, structure, and that every
arithmetic claim in every step is actually true."""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from fractions import Fraction

import pytest

from step_jepa.data import synthetic as generator
from step_jepa.data.formats import convert_line
from step_jepa.data.records import DEFAULT_SYSTEM_PROMPT
from step_jepa.data.synthetic import generate_problems, make_problem

# "a op b [op c ...] = r" with integers; the left side is evaluated independently of the text.
ARITH_RE = re.compile(r"(\d+(?:\s*[-+*/]\s*\d+)+)\s*=\s*(\d+)")
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(expr: str) -> Fraction:
    """Exact evaluation of + - * / over integers; anything else is a test failure, not eval()."""

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        raise ValueError(f"unexpected syntax in {expr!r}")

    return ev(ast.parse(expr, mode="eval").body)


def test_evaluator_catches_wrong_arithmetic():
    assert evaluate("140 * 20 / 100") == 28
    assert [evaluate(a) == int(b) for a, b in ARITH_RE.findall("3 * 4 = 12 and 7 - 2 = 4")] == [True, False]
    with pytest.raises(ValueError):
        evaluate("__import__('os')")


def test_deterministic_and_prefix_stable():
    a = generate_problems(30, seed=5)
    assert a == generate_problems(30, seed=5)
    assert generate_problems(10, seed=5) == a[:10]  # problem i depends only on (seed, i)
    assert [r["id"] for r in a[:3]] == ["gen-5-0", "gen-5-1", "gen-5-2"]
    assert generate_problems(30, seed=6) != a
    assert generate_problems(0) == []
    with pytest.raises(ValueError):
        generate_problems(-1)


def test_records_are_valid_prepared_records():
    records = generate_problems(50, seed=1, system_prompt="SP")
    for rec in records:
        assert convert_line(rec) == rec  # passes prepared-record validation unchanged
        assert rec["messages"][0]["content"] == "SP"
    assert generate_problems(1)[0]["messages"][0]["content"] == DEFAULT_SYSTEM_PROMPT


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_step_is_correct_arithmetic(seed):
    for i in range(400):
        p = make_problem(seed, i)
        assert 2 <= len(p.steps) <= 6
        assert isinstance(p.answer, int) and p.answer >= 0
        assert p.steps[-1] == f"The final answer is \\boxed{{{p.answer}}}."
        last_result = None
        for step in p.steps[:-1]:
            claims = ARITH_RE.findall(step)
            assert claims, f"step without arithmetic: {step!r}"
            assert "\n" not in step and step.endswith(".")
            for lhs, rhs in claims:
                assert evaluate(lhs) == int(rhs), f"{p.template}: wrong arithmetic in {step!r}"
                last_result = int(rhs)
        # The answer computed by the template equals the last value the solution derives.
        assert last_result == p.answer, (p.template, p.steps)


def test_variety():
    problems = [make_problem(0, i) for i in range(200)]
    templates = Counter(p.template for p in problems)
    assert len(templates) >= 12 and len(generator.TEMPLATES) >= 12
    assert len({p.question for p in problems}) == 200
    assert {len(p.steps) for p in problems} >= {3, 4, 5}
    names = {name for name, _ in generator.PEOPLE if any(name in p.question for p in problems)}
    assert len(names) >= 15
    lengths = Counter(len(p.steps) for i in range(3000) for p in [make_problem(9, i)])
    assert set(lengths) == {2, 3, 4, 5, 6}


@pytest.mark.parametrize("steps,digits", [(1, 1), (4, 3), (6, 4)])
def test_chain_problems_have_true_steps_of_the_asked_size(steps: int, digits: int):
    """One step per operation, each one's arithmetic true, chained (each starts from the last
    result), the boxed answer the final value; sums and differences use numbers of `digits` digits."""
    for rec in generate_problems(60, seed=3, task="chain", chain_steps=steps, chain_digits=digits):
        body = rec["messages"][2]["content"].split("\n\n")
        assert len(body) == steps + 1 and rec["id"].startswith(f"chain{steps}x{digits}-3-")
        value = None
        for step in body[:-1]:
            ((expr, result),) = ARITH_RE.findall(step)
            assert evaluate(expr) == int(result)
            first = int(re.match(r"\d+", expr).group())
            assert value is None or first == value
            a, op, b = re.match(r"(\d+)\s*([-+*/])\s*(\d+)", expr).groups()
            if op == "+":
                assert len(b) == digits
            value = int(result)
        assert body[-1] == f"The final answer is \\boxed{{{value}}}." and rec["answer"] == str(value)
        start = int(re.search(r"starts with (\d+)", rec["messages"][1]["content"]).group(1))
        assert len(str(start)) == digits or (digits == 1 and start >= 2)


def test_chain_problems_are_deterministic_and_extend():
    a = generate_problems(5, seed=1, task="chain", chain_steps=3)
    b = generate_problems(8, seed=1, task="chain", chain_steps=3)
    assert a == b[:5] and a != generate_problems(5, seed=2, task="chain", chain_steps=3)
    assert a != generate_problems(5, seed=1, task="chain", chain_steps=4)


def test_chain_knobs_are_checked():
    with pytest.raises(ValueError, match="digits"):
        generate_problems(1, task="chain", chain_digits=9)
    with pytest.raises(ValueError, match="unknown generator task"):
        generate_problems(1, task="riddles")


def test_prepare_writes_chain_problems(tmp_path, capsys):
    import json

    from step_jepa.cli.main import main

    out = tmp_path / "chain.jsonl"
    assert (
        main(
            [
                "prepare",
                "--generate",
                "12",
                "--task",
                "chain",
                "--chain_steps",
                "3",
                "--chain_digits",
                "2",
                "--seed",
                "4",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 12 and all(r["id"].startswith("chain3x2-4-") and r["total_steps"] == 4 for r in recs)
    report = json.loads((tmp_path / "chain.jsonl.report.json").read_text())
    assert "chain_steps=3" in json.dumps(report)
