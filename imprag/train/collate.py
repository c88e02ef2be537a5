"""Token tensors for training: prompt + response sequences with response-only labels, prompt-only
sequences for query vectors, and passages one per row for passage vectors.

Shapes: B rows, T tokens. Sequences are right-padded; positions count only real tokens, so the padding
side does not change any state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imprag.model.tokens import kept_positions, pad, pad_token_id
from imprag.train.losses import IGNORE


@dataclass
class SeqBatch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T): response token ids, IGNORE on prompt and padding
    query_index: torch.Tensor  # (B,): each row's last prompt token (its layer-b query state is the query)
    query_content: torch.Tensor | None = None  # (B, T) bool: the prompt's content tokens ("content" pooling)

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


class Collator:
    def __init__(self, tokenizer, max_prompt_tokens: int, max_response_tokens: int, max_text_tokens: int):
        self.tok = tokenizer
        self.max_prompt = max_prompt_tokens
        self.max_response = max_response_tokens
        self.max_text = max_text_tokens
        self.pad_id = pad_token_id(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        self.prefix = list(tokenizer("", add_special_tokens=True)["input_ids"])  # the tokenizer's BOS policy

    def prompt_ids(self, prompts: list[str]) -> list[list[int]]:
        """With the tokenizer's special tokens; a long prompt keeps its first special token and its end."""
        return self._prompt_rows(prompts)[0]

    def _prompt_rows(self, prompts: list[str]) -> tuple[list[list[int]], list[list[bool]] | None]:
        """Prompt ids and, cut the same way, their content-token flags (`calibration.content_flags`)."""
        from imprag.model.calibration import content_flags

        out: list[list[int]] = []
        flags = content_flags(self.tok, prompts) if prompts else None
        cut_flags: list[list[bool]] = []
        for n, ids in enumerate(self._ids(prompts, True)):
            ids = list(ids) or list(self.prefix) or [self.pad_id]
            keep = kept_positions(ids, self.max_prompt, self.tok.bos_token_id)
            out.append([ids[i] for i in keep])
            if flags is not None:
                f = flags[n]
                cut_flags.append([f[i] for i in keep] if len(f) == len(ids) else [True] * len(keep))
        return out, cut_flags if flags is not None else None

    def response_ids(self, responses: list[str], prompts: list[str]) -> list[list[int]]:
        """Answer tokens + EOS (the decoder stops there); a space joins it to a prompt ending in ':'."""
        texts = [
            (" " + r if p and not p[-1].isspace() and not r[:1].isspace() else r)
            for r, p in zip(responses, prompts)
        ]
        out: list[list[int]] = []
        for ids in self._ids(texts, False):
            ids = list(ids)[: self.max_response]
            if self.eos_id is not None:
                ids.append(self.eos_id)
            out.append(ids)
        return out

    def text_ids(self, texts: list[str]) -> list[list[int]]:
        return [list(ids)[: self.max_text] for ids in self._ids(texts, False)]

    def _ids(self, texts: list[str], special: bool) -> list[list[int]]:
        if not texts:
            return []
        return [list(x) for x in self.tok(list(texts), add_special_tokens=special)["input_ids"]]

    def sequences(
        self, prompts: list[str], responses: list[str], plain: list[bool] | None = None
    ) -> SeqBatch:
        """prompt + response rows; `plain[i]` marks plain text (empty prompt: every token after the
        tokenizer's prefix is a target)."""
        plain = plain or [False] * len(prompts)
        qa_prompts, qa_flags = self._prompt_rows([p for p, f in zip(prompts, plain) if not f])
        p_flags = (
            [[False] * len(self.prefix) if f else qa_flags.pop(0) for f in plain]
            if qa_flags is not None
            else []
        )
        p_ids = [list(self.prefix) if f else qa_prompts.pop(0) for f in plain]
        r_ids: list[list[int]] = []
        text_rows = self.text_ids([r for r, f in zip(responses, plain) if f])
        qa_rows = self.response_ids(
            [r for r, f in zip(responses, plain) if not f], [p for p, f in zip(prompts, plain) if not f]
        )
        ti = qi = 0
        for f in plain:
            if f:
                r_ids.append(text_rows[ti])
                ti += 1
            else:
                r_ids.append(qa_rows[qi])
                qi += 1
        ids, mask = pad([p + r for p, r in zip(p_ids, r_ids)], self.pad_id)
        labels, _ = pad([[IGNORE] * len(p) + r for p, r in zip(p_ids, r_ids)], IGNORE)
        qidx = torch.tensor([max(len(p) - 1, 0) for p in p_ids], dtype=torch.long)
        content = None
        if qa_flags is not None:  # (B, T): the prompt's content tokens, none of the response
            content = pad([[int(x) for x in f] + [0] * len(r) for f, r in zip(p_flags, r_ids)], 0)[0].bool()
        return SeqBatch(ids, mask, labels, qidx, content)

    def prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Prompt-only rows (B, T) right-padded, for query vectors, and their content tokens (B, T)."""
        rows, flags = self._prompt_rows(prompts)
        ids, mask = pad(rows, self.pad_id)
        content = pad([[int(x) for x in f] for f in flags], 0)[0].bool() if flags is not None else None
        return ids, mask, content
