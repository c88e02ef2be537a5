"""The documented rules that turn chat messages into one prompt."""

from __future__ import annotations

import pytest

from imprag.errors import UserError
from imprag.model.tiny import build_tokenizer
from imprag.serve.prompting import ChatFormatter

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "who wrote Hamlet?"},
    {"role": "assistant", "content": "Shakespeare."},
    {"role": "user", "content": [{"type": "text", "text": "and "}, {"type": "text", "text": "Faust?"}]},
]
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_lines_rule_without_a_tokenizer_template(tok):
    f = ChatFormatter(tok, "auto")
    assert f.rule == "lines"
    assert f(MESSAGES) == (
        "system: Be brief.\nuser: who wrote Hamlet?\nassistant: Shakespeare.\nuser: and Faust?\nassistant:"
    )


def test_tokenizer_template_is_used_when_present_without_a_second_bos(tok):
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = TEMPLATE
    f = ChatFormatter(t, "auto")
    assert f.rule == "tokenizer"
    prompt = f(MESSAGES[:2])
    assert prompt == "<|system|>Be brief.\n<|user|>who wrote Hamlet?\n<|assistant|>"  # the tokenizer adds <s>
    ids = t(prompt, add_special_tokens=True)["input_ids"]
    assert ids.count(t.bos_token_id) == 1
    assert ChatFormatter(t, "lines")(MESSAGES[:1]) == "system: Be brief.\nassistant:"


def test_prompt_placeholder_uses_the_last_user_message(tok):
    assert ChatFormatter(tok, "Q: {prompt} A:")(MESSAGES) == "Q: and Faust? A:"
    with pytest.raises(UserError, match="no.*user|none"):
        ChatFormatter(tok, "Q: {prompt} A:")(MESSAGES[:1])


def test_bad_choices_are_one_line_errors(tok):
    with pytest.raises(UserError, match="--chat-template"):
        ChatFormatter(tok, "chatml")
    with pytest.raises(UserError, match="no chat template"):
        ChatFormatter(tok, "tokenizer")
