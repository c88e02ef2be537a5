"""Small models built in code: a byte-level BPE tokenizer trained on given text and a random
(or briefly pretrained) decoder of any supported architecture. Used by tests, the demo and benchmarks,
so nothing needs a download."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}

_DEFAULT_TEXT = (
    "The capital of France is Paris. Paris is a city on the Seine. Berlin is the capital of Germany. "
    "Q: Who wrote the book? A: The author. The river flows north through the valley and the mountains. "
    "Is this statement true? True False. Provide the answer corresponding to the relation specified. "
    "0 1 2 3 4 5 6 7 8 9 [SEP] [START] [END] Summarize this article: the quick brown fox jumps."
)


def build_tokenizer(
    texts: Iterable[str] | None = None, vocab_size: int = 512, add_bos: bool = True
) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`; prepends BOS like Llama's tokenizer when `add_bos`."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts) if texts is not None else [_DEFAULT_TEXT] * 4, trainer=trainer)
    if add_bos:
        bos_id = tok.token_to_id(SPECIAL["bos_token"])
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    # Round-trip through disk: AutoTokenizer re-creates the tokenizer with its own pre-tokenizer settings,
    # and the in-memory tokenizer must be exactly the one a saved model folder will load.
    with tempfile.TemporaryDirectory() as tmp:
        fast.save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp)  # type: ignore[return-value]


# Per-architecture extras that make a tiny config exercise what real checkpoints have.
_ARCH_EXTRAS: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},  # q/k/v biases are built in
    "qwen3": {"head_dim": 16},
}


def tiny_config(
    arch: str = "llama",
    vocab_size: int = 512,
    layers: int = 6,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 4096,
    **overrides,
):
    """A GQA config of `arch` (llama, mistral, qwen2, qwen3) small enough to run in milliseconds."""
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    kwargs.update(_ARCH_EXTRAS.get(arch, {}))
    kwargs.update(overrides)
    return AutoConfig.for_model(arch, **kwargs)


def tiny_model(
    arch: str = "llama", tokenizer: PreTrainedTokenizerFast | None = None, seed: int = 0, **config
) -> PreTrainedModel:
    import torch

    tokenizer = tokenizer or build_tokenizer()
    cfg = tiny_config(
        arch,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    return model.float().eval()


def save_tiny(
    out_dir: str | Path, arch: str = "llama", texts: Iterable[str] | None = None, seed: int = 0, **config
) -> Path:
    """Write a tokenizer + random tiny model as a normal Hugging Face folder."""
    out = Path(out_dir)
    tok = build_tokenizer(texts)
    model = tiny_model(arch, tok, seed=seed, **config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
