"""How chat messages become the one prompt string the model retrieves with and continues.

`--chat-template` (ServeConfig.chat_template) picks the rule:

  auto       the tokenizer's chat template when it has one, else `lines` (the default)
  tokenizer  the tokenizer's chat template with the generation prompt appended (error if it has none)
  lines      one "role: content" line per message, then "assistant:" (no trailing space), e.g.
                 system: Answer briefly.
                 user: who wrote Hamlet?
                 assistant:
  any text containing {prompt}
             the text with {prompt} replaced by the LAST user message; earlier turns and system messages
             are dropped. `'Q: {prompt} A:'` gives the QA template models are trained on here.

The completion endpoint never formats: its prompt is used verbatim. Message content may be a string or a
list of {"type": "text", "text": ...} parts (joined with no separator).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from imprag.errors import UserError

CHOICES = ("auto", "tokenizer", "lines")


def message_text(content: Any) -> str:
    """A message's content (str, list of text parts, or None) -> plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part["text"] if isinstance(part, dict) else part.text for part in content)


class ChatFormatter:
    """Turns [{"role", "content"}, ...] into a prompt by the rule `choice` (see the module docstring)."""

    def __init__(self, tokenizer: Any, choice: str = "auto"):
        self.tokenizer = tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if choice not in CHOICES and "{prompt}" not in choice:
            raise UserError(
                f"--chat-template {choice!r}: use auto, tokenizer, lines, or a text containing {{prompt}} "
                "(e.g. 'Q: {prompt} A:')"
            )
        if choice == "tokenizer" and not has_template:
            raise UserError(
                "--chat-template tokenizer: this model's tokenizer has no chat template; use lines or 'Q: {prompt} A:'"
            )
        self.rule = ("tokenizer" if has_template else "lines") if choice == "auto" else choice

    def __call__(self, messages: Sequence[dict[str, Any]]) -> str:
        msgs = [{"role": m["role"], "content": message_text(m.get("content"))} for m in messages]
        if self.rule == "lines":
            return "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:"
        if self.rule == "tokenizer":
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            return self._without_double_bos(str(text))
        users = [m["content"] for m in msgs if m["role"] == "user"]
        if not users:
            raise UserError("messages: the chat template uses the last user message, but there is none")
        return self.rule.replace("{prompt}", users[-1])

    def _without_double_bos(self, text: str) -> str:
        """Templates that write the BOS token as text would get a second one from the tokenizer."""
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and text.startswith(bos):
            probe = self.tokenizer("x", add_special_tokens=True)["input_ids"]
            if probe and probe[0] == self.tokenizer.bos_token_id:
                return text[len(bos) :]
        return text
