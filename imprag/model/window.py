"""Does the passage offset k * l_max leave room for a prompt and an answer in the model's context window?

With passages the prompt's positions start at k * l_max (imprag/model/imprag.py), so a model whose window
is not larger than that, plus a usable prompt and the answer budget, would read every prompt cut to a few
tokens: retrieval and answers silently break. This is refused at model load (answer budget 0) and again
by every command and call that knows its answer budget.
"""

from __future__ import annotations

from typing import Any

from imprag.errors import UserError

MIN_PROMPT_TOKENS = 8  # a prompt cut shorter than this carries no question: refuse, never just warn


def context_window(lm_config: Any) -> int | None:
    """The model's window in tokens (`max_position_embeddings`), None when it does not say."""
    n = getattr(lm_config, "max_position_embeddings", None)
    return int(n) if n else None


def prompt_budget(
    k: int,
    l_max: int,
    window: int | None,
    answer_tokens: int = 0,
    with_passages: bool = True,
    answer_flag: str = "max_new_tokens",
) -> int:
    """Tokens left for the prompt: window - k * l_max (with passages) - answer_tokens.

    Raises UserError, naming k, l_max, the window and the fix, when fewer than MIN_PROMPT_TOKENS are left.
    """
    if window is None:
        return 1 << 30
    offset = k * l_max if with_passages else 0
    left = window - offset - answer_tokens
    if left >= MIN_PROMPT_TOKENS:
        return left
    answer = f" + {answer_flag} {answer_tokens}" if answer_tokens else ""
    if not with_passages:
        raise UserError(
            f"{answer_flag} {answer_tokens} leaves no room for a prompt (at least {MIN_PROMPT_TOKENS} tokens) "
            f"in the model's {window}-token window (max_position_embeddings); lower {answer_flag} to at most "
            f"{max(0, window - MIN_PROMPT_TOKENS)}"
        )
    fits = window - MIN_PROMPT_TOKENS - answer_tokens  # largest k * l_max that leaves room
    if fits >= 1:
        fix = (
            f"lower k or l_max so that k * l_max <= {fits} (e.g. l_max={max(1, fits // k)} with k={k}, or "
            f"k={max(1, fits // l_max)} with l_max={l_max}): `k`/`l_max` in the model folder's imprag.json "
            "or the train config's --model.k/--model.l_max"
        )
    else:
        fix = f"lower {answer_flag}" if answer_tokens else "use a model with a longer window"
    if answer_tokens and fits >= 1:
        fix += f", or lower {answer_flag}"
    raise UserError(
        f"k={k} passages x l_max={l_max} tokens = offset {offset}{answer} leaves no room for a prompt "
        f"(at least {MIN_PROMPT_TOKENS} tokens) in the model's {window}-token window "
        f"(max_position_embeddings): {fix}"
    )


def check_model_window(model: Any, answer_tokens: int = 0, answer_flag: str = "max_new_tokens") -> int:
    """prompt_budget for a loaded ImpRAG (with passages)."""
    cfg = model.config
    return prompt_budget(cfg.k, cfg.l_max, context_window(model.lm.config), answer_tokens, True, answer_flag)
