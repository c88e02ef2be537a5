"""The passage offset k * l_max, a usable prompt and the answer budget must fit the model's window:
checked at load (UserError in the API), per answer budget at generation, and unified with `imprag serve`."""

from __future__ import annotations

import pytest

from imprag.errors import UserError
from imprag.model.imprag import ImpRAG
from imprag.model.tiny import build_tokenizer, tiny_model
from imprag.model.window import MIN_PROMPT_TOKENS, prompt_budget


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def model(tok, window: int, **cfg) -> ImpRAG:
    from imprag.model.config import ImpRAGConfig

    lm = tiny_model("llama", tok, max_positions=window)
    return ImpRAG(lm, tok, ImpRAGConfig.default_for(6, **cfg))


@pytest.mark.parametrize(
    "k,l_max,window,answer,with_passages,left",
    [
        (10, 128, 4096, 0, True, 4096 - 1280),
        (10, 128, 4096, 64, True, 4096 - 1280 - 64),
        (10, 128, 1288, 0, True, 8),  # exactly a usable prompt
        (10, 128, 1287, 0, True, None),  # one token short
        (10, 128, 1024, 0, True, None),  # the case: offset 1280 > window
        (10, 128, 1024, 0, False, 1024),  # closed book: no offset
        (10, 128, 1024, 1017, False, None),
        (3, 4, 22, 2, True, 8),
        (3, 4, 22, 64, True, None),
        (3, 4, None, 10**6, True, 1 << 30),  # a model that does not say its window
    ],
)
def test_prompt_budget_arithmetic(k, l_max, window, answer, with_passages, left):
    if left is None:
        with pytest.raises(UserError, match="leaves no room for a prompt"):
            prompt_budget(k, l_max, window, answer, with_passages)
    else:
        assert prompt_budget(k, l_max, window, answer, with_passages) == left


def test_message_names_k_l_max_window_and_a_fix_that_works():
    with pytest.raises(UserError) as e:
        prompt_budget(10, 128, 1024, 0, True)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("k=10", "l_max=128", "1024-token window", "k * l_max <= 1016", "imprag.json"):
        assert part in msg, msg
    # the suggested settings do fit
    assert prompt_budget(10, 101, 1024, 0, True) >= MIN_PROMPT_TOKENS
    assert prompt_budget(7, 128, 1024, 0, True) >= MIN_PROMPT_TOKENS
    assert "l_max=101 with k=10" in msg and "k=7 with l_max=128" in msg
    with pytest.raises(UserError, match="--max-tokens 64"):
        prompt_budget(10, 96, 1024, 64, True, "--max-tokens")


def test_model_that_cannot_fit_the_offset_is_refused_at_load(tok):
    with pytest.raises(UserError, match=r"k=10 .*l_max=128.*1024-token window"):
        model(tok, 1024)
    m = model(tok, 1024, l_max=101)  # the fix from the message
    assert m.prompt_window(True) == 1024 - 1010


def test_prompt_cut_below_a_usable_length_is_an_error_not_a_warning(tok):
    m = model(tok, 64, k=2, l_max=20)  # 64 - 40 = 24 prompt tokens without an answer budget
    assert m.prompt_window(True, 16) == 8
    with pytest.raises(UserError, match="leaves no room for a prompt"):
        m.generate(["Q: where? A:"], passages=[["a", "b"]], max_new_tokens=17)
    assert len(m.generate(["Q: where? A:"], passages=[["a", "b"]], max_new_tokens=16)) == 1
    with pytest.raises(UserError, match="leaves no room"):
        m.encode_prompts(["x"], with_passages=True, max_new_tokens=20)


def test_from_pretrained_refuses_and_accepts_by_the_same_rule(tmp_path, tok):
    from imprag.model.tiny import save_tiny

    d = save_tiny(tmp_path / "short", max_positions=1024)
    with pytest.raises(UserError, match="1024-token window"):
        ImpRAG.from_pretrained(d)
    assert ImpRAG.from_pretrained(d, k=4).config.prompt_offset == 512
