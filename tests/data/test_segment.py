"""Steps → token spans: char offsets, templates with "\n\n" in headers, merged separators, truncation."""

import pytest
from conftest import record
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from step_jepa.data.segment import IGNORE_INDEX, Segmented, SegmentError, segment, step_char_spans
from step_jepa.models.tiny import CHATML_TEMPLATE

STEPS = ["Tom has 3 apples.", "He buys 4 more, so 3 + 4 = 7.", "The final answer is \\boxed{7}."]


def _decoded_steps(tok, ex):
    return [tok.decode(ex.input_ids[a:b]) for a, b in ex.step_spans]


def test_step_char_spans_blank_lines_and_whitespace():
    text = "a b\n\n\n c\n \nd\n\n   \n\ne"
    assert [text[s:e] for s, e in step_char_spans(text)] == ["a b", "c", "d", "e"]


@pytest.mark.parametrize("fixture", ["tok_chatml", "tok_llama3"])
def test_steps_map_to_their_tokens(fixture, request):
    tok = request.getfixturevalue(fixture)
    ex = segment(record(STEPS), tok)
    assert [s.strip() for s in _decoded_steps(tok, ex)] == STEPS
    assert ex.valid_pairs() == [0, 1]


def test_llama3_header_newlines_are_not_steps(tok_llama3):
    """The Llama-3 headers hold "\n\n": only the assistant content's blank lines delimit steps."""
    ex = segment(record(STEPS), tok_llama3)
    assert len(ex.step_spans) == 3
    assert ex.step_spans[0][0] >= ex.prompt_len


@pytest.mark.parametrize("fixture", ["tok_chatml", "tok_llama3"])
def test_labels_only_on_assistant_turn_and_end_of_turn(fixture, request):
    tok = request.getfixturevalue(fixture)
    ex = segment(record(STEPS), tok)
    labelled = [i for i, y in enumerate(ex.labels) if y != IGNORE_INDEX]
    assert labelled[0] == ex.prompt_len
    text = tok.decode([ex.input_ids[i] for i in labelled])
    assert text.startswith("Tom has 3 apples.")
    assert text.endswith(tok.eos_token)  # the end-of-turn token is learned, so the model stops
    assert "How many apples" not in text and "Solve step by step" not in text
    assert labelled == list(range(labelled[0], labelled[-1] + 1))


def _merging_tokenizer():
    """A BPE without a regex pre-tokenizer, so '.\n\n' and '\n\nT' become single tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["\n\n".join(STEPS)] * 50 + ["apples.\n\nThe end.\n\nHe said"] * 50
    tr = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=tr)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def test_merged_separators():
    tok = _merging_tokenizer()
    ex = segment(record(STEPS), tok)
    pieces = [tok.decode([i]) for i in ex.input_ids]
    assert any("\n\n" in p and p.strip() and p != "\n\n" for p in pieces), "test needs a merged separator"
    decoded = _decoded_steps(tok, ex)
    for want, got in zip(STEPS, decoded):
        assert want in got  # the span covers the step (a merged token may add separator chars)
        others = [s for s in STEPS if s != want]
        assert not any(o in got for o in others)
    # A token holding the end of step i, the separator and the start of step i+1 belongs to both:
    # that pair cannot give an isolated step i+1, so it must be invalid (never silently shifted).
    sharing = [i for i in range(2) if ex.step_spans[i][1] > ex.step_spans[i + 1][0]]
    assert ex.valid_pairs() == [i for i in range(2) if i not in sharing]


def test_truncation_marks_cut_pair_invalid(tok_chatml):
    full = segment(record(STEPS), tok_chatml)
    cut_at = full.step_spans[1][1] - 1  # inside step 2
    ex = segment(record(STEPS), tok_chatml, max_length=cut_at)
    assert ex.truncated and len(ex.input_ids) == cut_at
    assert ex.step_spans[1] is None and ex.valid_pairs() == []
    assert ex.step_spans[0] == full.step_spans[0]


def test_prompt_longer_than_max_length_is_reported(tok_chatml):
    with pytest.raises(SegmentError) as e:
        segment(record(STEPS), tok_chatml, max_length=10)
    assert e.value.reason == "prompt longer than max_length"


def test_single_step_has_no_pair_but_trains_lm(tok_chatml):
    ex = segment(record(["The final answer is \\boxed{7}."]), tok_chatml)
    assert ex.valid_pairs() == []
    assert any(y != IGNORE_INDEX for y in ex.labels)


def test_no_chat_template_uses_plain_fallback():
    from step_jepa.models.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer("none")
    ex = segment(record(STEPS), tok)
    assert [s.strip() for s in _decoded_steps(tok, ex)] == STEPS
    assert tok.decode([ex.input_ids[i] for i, y in enumerate(ex.labels) if y != IGNORE_INDEX]).endswith("<|endoftext|>")


# p0 p1 | a0 a1 (step 1) | s (separator) | b0 b1 (step 2) | r (end of turn)
_LITERAL = Segmented(
    id="x",
    input_ids=list(range(10, 18)),
    labels=[-100, -100] + list(range(12, 18)),
    step_spans=[(2, 4), (5, 7)],
    prompt_len=2,
)


def test_separator_boundary_on_a_literal_example():
    assert _LITERAL.with_boundary("content") is _LITERAL
    sep = _LITERAL.with_boundary("separator")
    assert sep.step_spans == [(2, 5), (5, 8)]  # step 1 takes s; the last step takes r (end of turn)
    assert sep.valid_pairs() == [0] and sep.input_ids == _LITERAL.input_ids and sep.labels == _LITERAL.labels
    # Separator merged into a content token: nothing lies between the steps, the span is unchanged.
    merged = Segmented(
        id="m", input_ids=[1, 2, 3, 4, 5], labels=[-100, 2, 3, 4, 5], step_spans=[(1, 3), (3, 5)], prompt_len=1
    )
    assert merged.with_boundary("separator").step_spans == [(1, 3), None]  # no end-of-turn token after step 2
    assert merged.with_boundary("separator").valid_pairs() == []


def test_separator_boundary_without_a_closing_token_or_after_truncation():
    cut = Segmented(
        id="t",
        input_ids=list(range(10, 17)),
        labels=[-100, -100] + list(range(12, 17)),
        step_spans=[(2, 4), (5, 7)],
        prompt_len=2,
        truncated=True,
    )
    assert cut.with_boundary("separator").step_spans == [(2, 5), None]
    lost = Segmented(
        id="l",
        input_ids=list(range(10, 18)),
        labels=[-100, -100] + list(range(12, 18)),
        step_spans=[(2, 4), None],
        prompt_len=2,
        truncated=True,
    )
    assert lost.with_boundary("separator").step_spans == [None, None]
    with pytest.raises(ValueError, match="unknown view boundary"):
        _LITERAL.with_boundary("newline")


@pytest.mark.parametrize("fixture", ["tok_chatml", "tok_llama3"])
def test_separator_spans_end_with_the_blank_line_and_the_end_of_turn(fixture, request):
    tok = request.getfixturevalue(fixture)
    ex = segment(record(STEPS), tok).with_boundary("separator")
    text = [tok.decode(ex.input_ids[a:b]) for a, b in ex.step_spans]
    assert [t.rstrip("\n") for t in text[:-1]] == STEPS[:-1] and all(t.endswith("\n\n") for t in text[:-1])
    eot = tok.decode(ex.input_ids[ex.step_spans[-1][1] - 1])
    assert text[-1] == STEPS[-1] + eot and eot in ("<|im_end|>", "<|eot_id|>")
    assert ex.valid_pairs() == [0, 1]
