"""Token choice and stopping for batched decoding: greedy or temperature/top-p sampling, EOS and stop strings."""

from __future__ import annotations

import torch

from imprag.errors import UserError


def sample_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """logits (B, V) -> (B,) sampled ids: temperature first, then the smallest top-p nucleus."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass strictly before each token
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)  # the first token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


class Decoder:
    """Tracks each row's generated tokens and why it stopped."""

    def __init__(
        self,
        model,
        prompt_tokens,
        max_new_tokens,
        do_sample,
        temperature,
        top_p,
        stop,
        generator,
        choices=None,
    ):
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
        if do_sample and (temperature <= 0 or not 0 < top_p <= 1):
            raise UserError(f"sampling needs temperature > 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")
        from imprag.model.imprag import Generation

        self.tokenizer = model.tokenizer
        eos = model.lm.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos = {e for e in [*eos, model.tokenizer.eos_token_id] if e is not None}
        pad = model.tokenizer.pad_token_id
        self.pad = pad if pad is not None else next(iter(self.eos), 0)
        self.max_new_tokens = max_new_tokens
        self.do_sample, self.temperature, self.top_p = do_sample, temperature, top_p
        self.stop = [s for s in (stop or []) if s]
        self.generator = generator
        self.choices = choices  # token ids the next token is chosen among (None: the whole vocabulary)
        self.rows = [Generation("", [], None, int(n)) for n in prompt_tokens]

    @property
    def done(self) -> bool:
        return all(r.finish_reason is not None for r in self.rows)

    def step(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, V) of the last position -> next ids (B,); finished rows get padding."""
        if self.choices is not None:
            allowed = torch.full_like(logits, float("-inf"))
            allowed[:, self.choices] = logits[:, self.choices]
            logits = allowed
        if self.do_sample:
            ids = sample_token(logits, self.temperature, self.top_p, self.generator)
        else:
            ids = logits.argmax(-1)
        for row, tok in zip(self.rows, ids.tolist()):
            if row.finish_reason is not None:
                continue
            if tok in self.eos:
                row.finish_reason = "stop"
                continue
            row.token_ids.append(tok)
            row.text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
            cut = min((row.text.find(s) for s in self.stop if s in row.text), default=-1)
            if cut >= 0:
                row.text, row.finish_reason = row.text[:cut], "stop"
            elif len(row.token_ids) >= self.max_new_tokens:
                row.finish_reason = "length"
        finished = torch.tensor([r.finish_reason is not None for r in self.rows], device=ids.device)
        return ids.masked_fill(finished, self.pad)

    def results(self):
        return self.rows
