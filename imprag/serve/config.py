"""ServeConfig: every `imprag serve` setting (limits, batching, prompt formatting) in one dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from imprag.errors import UserError


@dataclass
class ServeConfig:
    """Settings of the HTTP server; the CLI flags of `imprag serve` map one to one onto these fields.

    Limits (each answered by a 4xx JSON error in the OpenAI shape, never a 500):
      max_prompt_tokens  prompt tokens per request (400, code context_length_exceeded); clamped at start to
                         what the model's window leaves after the passage offset and max_tokens_cap
      max_tokens_cap     the largest max_tokens a request may ask for (400)
      max_body_bytes     request body size (413)
      max_concurrent     requests queued or running at once, each prompt of a list counting as one (429)
      max_prompts        prompts in one /v1/completions or /v1/retrieve request (400)
    Batching: the worker thread takes up to `max_batch_size` compatible queued requests, waiting at most
    `max_wait_ms` after the oldest one arrived for the batch to fill.
    """

    model_name: str = "imprag"
    api_key: str | None = None
    k: int | None = None  # passages per prompt when a request gives none (default: the model's k)
    max_batch_size: int = 16
    max_wait_ms: float = 10.0
    max_concurrent: int = 128
    max_prompt_tokens: int = 2048
    max_tokens_cap: int = 512
    max_body_bytes: int = 1 << 20
    max_prompts: int = 32
    completion_max_tokens: int = 16  # a /v1/completions request without max_tokens (OpenAI's default)
    chat_max_tokens: int | None = None  # a chat request without max_tokens (None: max_tokens_cap)
    chat_template: str = "auto"  # see imprag/serve/prompting.py
    seed: int | None = None  # seeds the worker's sampling generator (requests with "seed" run alone)

    def validate(self) -> ServeConfig:
        checks = [
            ("--max-batch-size", self.max_batch_size >= 1),
            ("--max-wait-ms", self.max_wait_ms >= 0),
            ("--max-concurrent", self.max_concurrent >= 1),
            ("--max-prompt-tokens", self.max_prompt_tokens >= 1),
            ("--max-tokens-cap", self.max_tokens_cap >= 1),
            ("--max-body-bytes", self.max_body_bytes >= 1024),
            ("--max-prompts", self.max_prompts >= 1),
            ("--completion-max-tokens", 1 <= self.completion_max_tokens <= self.max_tokens_cap),
            (
                "--chat-max-tokens",
                self.chat_max_tokens is None or 1 <= self.chat_max_tokens <= self.max_tokens_cap,
            ),
            ("-k", self.k is None or self.k >= 0),
        ]
        for flag, ok in checks:
            if not ok:
                value = getattr(self, flag.lstrip("-").replace("-", "_"), None)
                hint = " (and at most --max-tokens-cap)" if flag.endswith("max-tokens") else ""
                raise UserError(f"{flag} {value}: out of range{hint}; see `imprag serve --help`")
        if self.api_key == "":
            raise UserError("--api-key is empty: give a key, or leave the flag and IMPRAG_API_KEY unset")
        return self
