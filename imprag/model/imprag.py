"""ImpRAG over an untouched Hugging Face decoder: the layer-group loop, retrieval vectors and the reader.

Layers 0..b-1 are plain causal self-attention; layer b's query state (prompt's last token, averaged over
each GQA group) and key state (passage's last token) are the retrieval vectors; layers b..t also attend to
the passages' key/value; layers t+1..N-1 see only the prompt/response. Shapes: B batch, T tokens,
H hidden size, h_q/h_k query/key heads, d head size, V vocabulary.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from imprag.errors import UserError
from imprag.model.arch import ArchSpec, get, rotary_fn, spec_for
from imprag.model.calibration import Calibration, calibration_prompts, content_flags, template_key
from imprag.model.config import PAPER_RETRIEVAL, ImpRAGConfig
from imprag.model.layer_groups import LayerKV, attention_mask_4d, last_token_index, positions_from_mask
from imprag.model.passage_cache import KV, PassageKVCache, weights_version
from imprag.model.tokens import kept_positions, pad, pad_token_id
from imprag.model.weights import check_loading_info, check_weights, load_causal_lm, load_error
from imprag.model.window import check_model_window, context_window, prompt_budget

log = logging.getLogger(__name__)


@dataclass
class PassageInputs:
    """Token ids of the passages read with a batch of prompts.

    concat:      input_ids (B, L), row i = prompt i's passages one after another (right-padded).
    independent: input_ids (B * n, l), row i*n + j = passage j of prompt i (empty rows are all padding).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mode: str
    per_prompt: int  # n: passage slots per prompt (independent mode)

    def to(self, device) -> PassageInputs:
        return PassageInputs(
            self.input_ids.to(device), self.attention_mask.to(device), self.mode, self.per_prompt
        )


@dataclass
class ImpRAGOutput:
    logits: torch.Tensor  # (B, T, V)
    query_vectors: torch.Tensor | None  # (B, h_k * d) when query_positions were given


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" | "length" | None while running
    prompt_tokens: int


def _drop_gguf_quantizer(lm) -> None:
    """A GGUF checkpoint is dequantised to plain nn.Linear weights on load (no ggml kernels here); forget the
    quantizer so the model can be trained and saved as ordinary safetensors."""
    quantizer = getattr(lm, "hf_quantizer", None)
    if quantizer is None:
        return
    plain = all(type(m).__name__ == "Linear" for m in lm.modules() if "Linear" in type(m).__name__)
    if not plain:
        raise UserError(
            "this GGUF loaded as packed quantized layers; uninstall `kernels` to load it dequantised"
        )
    quantizer.remove_quantization_config(lm)


class ImpRAG(torch.nn.Module):
    """The HF causal LM (`lm`, the one registered child: every parameter is the LM's) cut into layer groups."""

    def __init__(self, lm, tokenizer, config: ImpRAGConfig):
        super().__init__()
        impl = lm.config._attn_implementation
        if impl not in ("sdpa", "eager"):
            lm.set_attn_implementation("sdpa")  # the layer loop passes 4-D masks, which flash kernels refuse
        self.lm = lm
        self.tokenizer = tokenizer
        self.spec: ArchSpec = spec_for(lm.config.model_type)
        self.config = config.validate(len(self.layers))
        check_model_window(self)  # k * l_max plus a usable prompt must fit the window
        self.gradient_checkpointing = False
        self._apply_rotary = rotary_fn(lm)
        c = lm.config
        self.num_heads = c.num_attention_heads
        self.num_kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self._warned: set[str] = set()
        self.calibration: Calibration | None = None  # the means `config.calibration` subtracts
        # "bf16": decoding runs under bf16 autocast (about 1.8x faster on CPUs with AVX512-BF16 / AMX);
        # retrieval vectors and training are unaffected
        self.decode_precision = "fp32"
        # set to a PassageKVCache to run each independently read passage through layers 0..t once across
        # generate calls (evaluation: questions and methods share passages)
        self.passage_cache: PassageKVCache | None = None

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        b: int | None = None,
        t: int | None = None,
        k: int | None = None,
        l_max: int | None = None,
        state: str | None = None,
        reader: str | None = None,
        pooling: str | None = None,
        similarity: str | None = None,
        temperature: float | None = None,
        calibration: str | None = None,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        gguf_file: str | None = None,
    ) -> ImpRAG:
        """Any HF folder or hub id, or a `.gguf` file; an `imprag.json` in the folder restores b, t, k, ..."""
        from transformers import AutoTokenizer

        path = Path(path)
        source = str(path)
        if path.suffix == ".gguf":
            if not path.exists():
                raise UserError(f"{path}: GGUF file not found")
            source, gguf_file = str(path.parent), path.name
        elif not path.exists() and (
            str(path).startswith((".", "/")) or path.parent.exists() and path.parent != Path(".")
        ):
            raise UserError(
                f"{path}: model folder not found (build one with `imprag pull smollm2 --out DIR`)"
            )
        if isinstance(dtype, str):
            dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        check_weights(path)  # damaged or partial weights: one line naming the file
        try:
            lm, info = load_causal_lm(source, gguf_file, dtype or torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{source}: cannot load a Hugging Face causal LM ({first})") from None
        except Exception as e:  # damaged weights -> UserError; anything else unchanged
            raise load_error(source, e) from None
        if gguf_file is None:
            check_loading_info(source, info)
        spec_for(lm.config.model_type)  # refuse unsupported architectures before anything else
        if gguf_file is not None:
            _drop_gguf_quantizer(lm)
        if device is not None:
            lm.to(device)  # type: ignore[arg-type]
        lm.eval()
        saved = ImpRAGConfig.load(path) if path.is_dir() else None
        overrides: dict[str, Any] = {"b": b, "t": t, "k": k, "l_max": l_max, "state": state, "reader": reader}
        overrides.update(
            {
                "pooling": pooling,
                "similarity": similarity,
                "temperature": temperature,
                "calibration": calibration,
            }
        )
        if saved is not None:
            for name, value in overrides.items():
                if value is not None:
                    setattr(saved, name, value)
            config = saved
        else:
            config = ImpRAGConfig.default_for(lm.config.num_hidden_layers, **overrides)
        model = cls(lm, tokenizer, config)
        if path.is_dir():
            model.calibration = Calibration.load(path)
        return model

    def save_pretrained(
        self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None
    ) -> None:
        """The HF folder plus imprag.json and the calibration; `state_dict` replaces the LM's weights
        (a gathered FSDP state, merged LoRA weights)."""
        directory = Path(directory)
        self.lm.save_pretrained(directory, state_dict=state_dict)
        self.tokenizer.save_pretrained(directory)
        self.config.save(directory)
        if self.calibration is not None:
            self.calibration.save(directory)

    # ------------------------------------------------------------------ properties
    @property
    def layers(self) -> torch.nn.ModuleList:
        """The LM's decoder layers (a property, not a second registration of the same modules)."""
        return get(self.lm, self.spec.layers)

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.lm.parameters()).dtype

    @property
    def dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def retrieval_modules(self, query: bool = True) -> list[torch.nn.Module]:
        """The modules whose weights make the retrieval vectors: embeddings, layers 0..b-1, layer b's input
        norm and key projection (the passage side), and with `query` its query projection too."""
        layer_b = self.layers[self.config.b]
        attn = get(layer_b, self.spec.attn)
        names = [self.spec.k_proj, self.spec.k_norm] + ([self.spec.q_proj, self.spec.q_norm] if query else [])
        return [
            get(self.lm, self.spec.embed),
            *self.layers[: self.config.b],
            get(layer_b, self.spec.input_norm),
            *(get(attn, n) for n in names if n),
        ]

    def fingerprint(self) -> str:
        """sha256 of everything that produces passage vectors: embeddings, layers 0..b-1, layer b's input
        norm and key projection, plus b and the state choice. Computed in fp32, so dtype casts that keep the
        weights exact (bf16 -> fp32) keep the fingerprint."""
        h = hashlib.sha256()
        cfg = self.config
        h.update(f"{self.lm.config.model_type}|b={cfg.b}|state={cfg.state}|l_max={cfg.l_max}".encode())
        if any(getattr(cfg, k) != v for k, v in PAPER_RETRIEVAL.items()):  # paper-setting prints unchanged
            h.update(f"|pooling={cfg.pooling}|similarity={cfg.similarity}|cal={cfg.calibration}".encode())
            if cfg.calibration != "none":
                h.update(self._calibration().passage.float().numpy().tobytes())
        if cfg.state == "post_rope":
            h.update(repr(getattr(self.lm.config, "rope_parameters", None)).encode())
        for module in self.retrieval_modules(query=False):
            for name, tensor in module.state_dict().items():
                h.update(name.encode())
                h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ tokenization
    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids with the tokenizer's own defaults (its BOS policy). Empty text -> [BOS or EOS]."""
        ids = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        fallback = (
            self.tokenizer.bos_token_id
            if self.tokenizer.bos_token_id is not None
            else self.tokenizer.eos_token_id
        )
        return [list(x) if len(x) else [fallback] for x in ids]

    def _warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _truncate_passage(self, ids: list[int], limit: int) -> list[int]:
        if len(ids) > limit:
            self._warn_once(
                "l_max", "passages longer than l_max=%d tokens are truncated to their first tokens", limit
            )
            return ids[:limit]
        return ids

    def _truncate_prompt(self, ids: list[int], limit: int) -> list[int]:
        """Keep the prompt's end (instruction end + last token) and its first special token, drop the middle."""
        if len(ids) <= limit:
            return ids
        self._warn_once(
            "prompt",
            "a prompt of %d tokens exceeds the %d-token window; its start was truncated",
            len(ids),
            limit,
        )
        return [ids[i] for i in kept_positions(ids, limit, self.tokenizer.bos_token_id)]

    def encode_queries(
        self, prompts: list[str], max_new_tokens: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Prompts as queries: left-padded ids and mask (B, T) placed after the passages, and (B, T) bool
        marking each prompt's content tokens (`calibration.content_flags`; None unless pooling "content")."""
        limit = self.prompt_window(True, max_new_tokens)
        rows = self._tokenize(prompts)
        flags = content_flags(self.tokenizer, prompts) if self.config.pooling == "content" else None
        ids, mask = self._pad([self._truncate_prompt(r, limit) for r in rows], "left")
        if flags is None or any(len(f) != len(r) for f, r in zip(flags, rows)):
            return ids, mask, None
        kept = [
            kept_positions(r, limit, self.tokenizer.bos_token_id) for r in rows
        ]  # the same cut for the flags
        content, _ = self._pad([[int(f[i]) for i in k] for f, k in zip(flags, kept)], "left")
        return ids, mask, content.bool() & mask.bool()

    def _pad(self, seqs: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = pad(seqs, pad_token_id(self.tokenizer), side)
        return ids.to(self.device), mask.to(self.device)

    def prompt_window(self, with_passages: bool, max_new_tokens: int = 0) -> int:
        """Tokens a prompt may have: the context window minus the passage offset and the answer budget
        (UserError when fewer than a usable prompt's few tokens are left)."""
        c = self.config
        return prompt_budget(c.k, c.l_max, context_window(self.lm.config), max_new_tokens, with_passages)

    def encode_prompts(
        self, prompts: list[str], side: str = "left", with_passages: bool = False, max_new_tokens: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        limit = self.prompt_window(with_passages, max_new_tokens)
        return self._pad([self._truncate_prompt(x, limit) for x in self._tokenize(prompts)], side)

    def tokenize_passages(self, passages: list[list[str]], mode: str | None = None) -> PassageInputs:
        """Passages per prompt (each at most k, each cut to l_max tokens) -> PassageInputs."""
        mode = mode or self.config.reader
        cfg = self.config
        if any(len(p) > cfg.k for p in passages):
            n = max(len(p) for p in passages)
            raise UserError(
                f"{n} passages given for one prompt but the model reads at most k={cfg.k} (pass -k {n} or fewer passages)"
            )
        per_prompt = [
            [self._truncate_passage(ids, cfg.l_max) for ids in self._tokenize(p)] if p else []
            for p in passages
        ]
        if mode == "concat":
            ids, mask = self._pad([[tok for ids in p for tok in ids] for p in per_prompt], "right")
            return PassageInputs(ids, mask, "concat", max((len(p) for p in per_prompt), default=0))
        n = max(1, max((len(p) for p in per_prompt), default=1))
        rows = [p[j] if j < len(p) else [] for p in per_prompt for j in range(n)]
        ids, mask = self._pad(rows, "right")
        return PassageInputs(ids, mask, "independent", n)

    # ------------------------------------------------------------------ the layer loop
    def _run_layer(self, i: int, hidden, mask, position_embeddings, cache: LayerKV | None):
        layer = self.layers[i]
        kwargs = {
            "attention_mask": mask,
            "position_embeddings": position_embeddings,
            "cache": cache,
            "use_cache": cache is not None,
        }
        if self.gradient_checkpointing and torch.is_grad_enabled() and self.lm.training:
            return checkpoint(lambda h: layer(h, **kwargs), hidden, use_reentrant=False)
        return layer(hidden, **kwargs)

    def _rope(self, hidden, position_ids):
        return get(self.lm, self.spec.rotary)(hidden, position_ids)

    def _retrieval_state(self, hidden_b, positions, pool, kind: str) -> torch.Tensor:
        """Layer b's query ("q") or key ("k") state pooled over the tokens `pool` marks (before calibration).

        hidden_b (B, T, H): the input to layer b; positions (B, T): position ids; pool (B, T) bool.
        Per token: keys as they are, queries averaged over each GQA group (query head j belongs to key head
        j // g, as in HF's repeat_kv). Returns (B, h_k * d): the mean over the pooled tokens.
        """
        if self.config.pooling == "last":  # one token per row: project only that token
            rows = torch.arange(hidden_b.shape[0], device=hidden_b.device)
            idx = pool.long().argmax(-1)
            hidden_b, positions = hidden_b[rows, idx][:, None], positions[rows, idx][:, None]
            pool = torch.ones_like(positions, dtype=torch.bool)
        B, T = positions.shape
        layer = self.layers[self.config.b]
        attn = get(layer, self.spec.attn)
        x = get(layer, self.spec.input_norm)(hidden_b)
        heads = self.num_heads if kind == "q" else self.num_kv_heads
        proj = get(attn, self.spec.q_proj if kind == "q" else self.spec.k_proj)
        s = proj(x).view(B, T, heads, self.head_dim)  # (B, T, heads, d)
        norm_name = self.spec.q_norm if kind == "q" else self.spec.k_norm
        if norm_name:
            s = get(attn, norm_name)(s)
        if self.config.state == "post_rope":
            cos, sin = self._rope(x, positions)  # (B, T, d)
            s4 = s.transpose(1, 2)  # (B, heads, T, d)
            s = self._apply_rotary(s4, s4, cos, sin)[0].transpose(1, 2)
        if kind == "q":
            g = self.num_heads // self.num_kv_heads
            s = s.view(B, T, self.num_kv_heads, g, self.head_dim).mean(3)
        s = s.reshape(B, T, -1)
        w = pool.to(s.dtype)[..., None]  # (B, T, 1)
        return (s * w).sum(1) / w.sum(1).clamp(min=1)

    def _pool_mask(self, attention_mask, last=None, content=None) -> torch.Tensor:
        """(B, T) bool: the tokens whose states are pooled: the last real token (or `last` (B,)) for "last";
        else every real token up to it except the sequence's first (an attention sink / BOS), unless that
        is the only one; with "content" pooling and a `content` mask (B, T), the content tokens up to it
        (a row without any keeps the rule before)."""
        valid = attention_mask.bool()
        last = last_token_index(attention_mask) if last is None else last
        idx = torch.arange(valid.shape[1], device=valid.device)[None]  # (1, T)
        if self.config.pooling == "last":
            return idx == last[:, None]
        keep = valid & (idx <= last[:, None])
        first = valid.long().argmax(-1)[:, None]  # (B, 1): first real token
        keep = keep & ~((idx == first) & (keep.sum(-1, keepdim=True) > 1))
        if self.config.pooling == "content" and content is not None:
            own = content.bool() & valid & (idx <= last[:, None])
            keep = torch.where(own.any(-1, keepdim=True), own, keep)
        return keep

    def _calibration(self) -> Calibration:
        if self.calibration is None:
            raise UserError(
                f"this model's retrieval needs calibration means (calibration={self.config.calibration!r}) and "
                "has none: run `imprag calibrate --model DIR --passages FILE` (or pass --calibration none)"
            )
        return self.calibration

    def finish_vectors(self, raw: torch.Tensor, kind: str, keys: list[str] | None = None) -> torch.Tensor:
        """Raw pooled states (B, D) -> search vectors: subtract the calibration mean (queries: their
        format's, from `keys`), then for cosine scale to unit length (queries to 1 / temperature), so that
        a plain inner product is the model's score."""
        cfg = self.config
        if cfg.calibration != "none":
            cal = self._calibration()
            if kind == "k":
                mean = cal.passage.to(raw)[None]
            else:
                mean = cal.query_means(keys or ["free"] * raw.shape[0], cfg.calibration).to(raw)
            raw = raw - mean
        if cfg.similarity == "cosine":
            raw = torch.nn.functional.normalize(raw.float(), dim=-1).to(raw.dtype)
            if kind == "q":
                raw = raw / cfg.temperature
        return raw

    def _self_attention_mask(self, attention_mask, dtype):
        """The 4-D mask of sequences that attend only to themselves, or None (SDPA's causal kernel, ~10%
        faster on the CPU) when every row is right-padded: a real token then never sees padding."""
        right_padded = bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
        if right_padded and self.lm.config._attn_implementation == "sdpa":
            return None
        return attention_mask_4d(attention_mask.bool(), attention_mask.shape[1], None, dtype)

    def _bottom(self, input_ids, attention_mask, offset: int):
        """Layers 0..b-1 over whole sequences (no cache). Returns (hidden at layer b's input (B,T,H), positions)."""
        positions = positions_from_mask(attention_mask, offset)
        hidden = get(self.lm, self.spec.embed)(input_ids)
        pe = self._rope(hidden, positions)
        mask = self._self_attention_mask(attention_mask, hidden.dtype)
        for i in range(self.config.b):
            hidden = self._run_layer(i, hidden, mask, pe, None)
        return hidden, positions

    def query_states(self, input_ids, attention_mask, token_index=None, content=None) -> torch.Tensor:
        """(B, h_k*d) with autograd: layer b's pooled query state, uncalibrated; `token_index` (B,) is each
        row's last prompt token (default: its last real token); `content` (B, T) its content tokens."""
        offset = self.config.prompt_offset if self.config.state == "post_rope" else 0
        hidden, positions = self._bottom(input_ids, attention_mask, offset)
        pool = self._pool_mask(attention_mask, token_index, content)
        return self._retrieval_state(hidden, positions, pool, "q")

    def passage_states(self, input_ids, attention_mask) -> torch.Tensor:
        """(B, h_k*d) with autograd: layer b's pooled key state of each passage, uncalibrated."""
        hidden, positions = self._bottom(input_ids, attention_mask, 0)
        return self._retrieval_state(hidden, positions, self._pool_mask(attention_mask), "k")

    def query_vectors(
        self, input_ids, attention_mask, token_index=None, keys=None, content=None
    ) -> torch.Tensor:
        """(B, h_k*d) with autograd: the search vectors of prompts (`keys`: their calibration keys)."""
        states = self.query_states(input_ids, attention_mask, token_index, content)
        return self.finish_vectors(states, "q", keys)

    def passage_vectors(self, input_ids, attention_mask) -> torch.Tensor:
        """(B, h_k*d) with autograd: the index vectors of passages."""
        return self.finish_vectors(self.passage_states(input_ids, attention_mask), "k")

    def encode_passages(self, passages: PassageInputs):
        """Run passages through layers 0..t. Returns ({layer: (K, V) (B, h_k, P, d)} for b..t, valid (B, P))."""
        ids, mask = passages.input_ids, passages.attention_mask
        positions = positions_from_mask(mask)
        hidden = get(self.lm, self.spec.embed)(ids)
        pe = self._rope(hidden, positions)
        attn_mask = self._self_attention_mask(mask, hidden.dtype)
        recorder = LayerKV(mode="record")
        for i in range(self.config.t + 1):
            hidden = self._run_layer(i, hidden, attn_mask, pe, recorder)
        prefix = {i: recorder.kv[i] for i in range(self.config.b, self.config.t + 1)}
        if passages.mode == "independent":
            return _join_independent(prefix, mask, passages.per_prompt)
        return prefix, mask.bool()

    def _encode_read_passages(self, read: PassageInputs):
        """encode_passages, taking independently read passages from `passage_cache` when it is set."""
        cache = self.passage_cache
        lengths = read.attention_mask.sum(-1).tolist()  # right-padded rows: a passage is ids[j, :n]
        if cache is None or read.mode != "independent" or not any(lengths):
            return self.encode_passages(read)
        version = (weights_version(self.lm), self.decode_precision)
        keys = {j: (*version, tuple(read.input_ids[j, :n].tolist())) for j, n in enumerate(lengths) if n}
        unique = dict.fromkeys(keys.values())
        found: dict[tuple, KV] = {key: kv for key in unique if (kv := cache.get(key)) is not None}
        missing = [key for key in unique if key not in found]
        if missing:  # run the new passages once, as a batch of their own
            ids, mask = self._pad([list(key[-1]) for key in missing], "right")
            prefix, _ = self.encode_passages(PassageInputs(ids, mask, "independent", 1))
            for r, key in enumerate(missing):
                n = len(key[-1])
                found[key] = {i: (k[r, :, :n].clone(), v[r, :, :n].clone()) for i, (k, v) in prefix.items()}
                cache.put(key, found[key])
        some = found[next(iter(keys.values()))]
        width = read.input_ids.shape[1]
        prefix = {}
        for i, (k0, _) in some.items():  # (B*n, h_k, l, d), padding slots zero (masked)
            K = k0.new_zeros(len(lengths), k0.shape[0], width, k0.shape[-1])
            V = torch.zeros_like(K)
            for j, key in keys.items():
                K[j, :, : lengths[j]], V[j, :, : lengths[j]] = found[key][i]
            prefix[i] = (K, V)
        return _join_independent(prefix, read.attention_mask, read.per_prompt)

    def _prompt_layers(
        self,
        hidden,
        key_valid,
        position_ids,
        cache: LayerKV,
        prefix_valid,
        query_index=None,
        query_keys=None,
        query_content=None,
    ):
        """All N layers over new prompt tokens. Middle layers b..t see the passage prefix held in `cache`.

        hidden (B, T, H); key_valid (B, S) for the S sequence keys incl. these T; position_ids (B, T).
        Returns (final hidden (B, T, H), query vectors (B, h_k*d) if query_index is given).
        """
        T = hidden.shape[1]
        pe = self._rope(hidden, position_ids)
        self_mask = attention_mask_4d(key_valid, T, None, hidden.dtype)
        mid_mask = (
            self_mask if prefix_valid is None else attention_mask_4d(key_valid, T, prefix_valid, hidden.dtype)
        )
        b, t = self.config.b, self.config.t
        qvec = None
        for i in range(self.num_layers):
            if i == b and query_index is not None:
                pool = self._pool_mask(key_valid[:, -T:], query_index, query_content)
                qvec = self.finish_vectors(
                    self._retrieval_state(hidden, position_ids, pool, "q"), "q", query_keys
                )
            hidden = self._run_layer(i, hidden, mid_mask if b <= i <= t else self_mask, pe, cache)
        return get(self.lm, self.spec.final_norm)(hidden), qvec

    def forward(
        self,
        input_ids,
        attention_mask,
        passages: PassageInputs | None = None,
        query_index=None,
        query_keys: list[str] | None = None,
        query_content: torch.Tensor | None = None,
        passage_grad: bool = True,
    ) -> ImpRAGOutput:
        """Training/scoring forward over prompt(+response) tokens (B, T) with optional passages.

        With passages the sequence's positions start at k * l_max; `query_index` (B,) picks the token whose
        layer-b query state is returned (the prompt's last token; pooling averages up to it), `query_keys`
        are the prompts' calibration keys (`calibration.template_key`) and `query_content` (B, T) their
        content tokens ("content" pooling). `passage_grad=False` computes the passages' key/value without
        autograd: gradients then reach the weights only through the prompt's side, at the cost of a plain
        forward over the passages (they are most of the tokens a reader reads).
        """
        prefix, prefix_valid, offset = {}, None, 0
        if passages is not None:
            with nullcontext() if passage_grad else torch.no_grad():
                prefix, prefix_valid = self.encode_passages(passages)
            offset = self.config.prompt_offset
        position_ids = positions_from_mask(attention_mask, offset)
        hidden = get(self.lm, self.spec.embed)(input_ids)
        hidden, qvec = self._prompt_layers(
            hidden,
            attention_mask.bool(),
            position_ids,
            LayerKV(prefix, "read"),
            prefix_valid,
            query_index,
            query_keys,
            query_content,
        )
        return ImpRAGOutput(get(self.lm, self.spec.head)(hidden), qvec)

    # ------------------------------------------------------------------ inference API
    @torch.no_grad()
    def embed_queries(self, prompts: list[str], batch_size: int = 32) -> torch.Tensor:
        """(B, h_k*d) float32 on CPU: the implicit query of each prompt."""
        raw = self._embed_query_states(prompts, batch_size)
        return self.finish_vectors(raw, "q", [template_key(p) for p in prompts])

    def _embed_query_states(self, prompts: list[str], batch_size: int = 32) -> torch.Tensor:
        """(B, h_k*d) float32 on CPU: the pooled query states of prompts, before calibration."""
        out = []
        for s in range(0, len(prompts), batch_size):
            ids, mask, content = self.encode_queries(prompts[s : s + batch_size])
            out.append(self.query_states(ids, mask, content=content).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    @torch.no_grad()
    def embed_passages(
        self, texts: list[str], batch_size: int = 32, max_length: int | None = None
    ) -> torch.Tensor:
        """(B, h_k*d) float32 on CPU: layer b's key state of each passage (first l_max tokens), pooled and
        calibrated. Runs only layers 0..b-1 plus layer b's input norm and key projection."""
        raw = self._embed_passage_states(texts, batch_size, max_length)
        return self.finish_vectors(raw, "k")

    def _embed_passage_states(self, texts, batch_size: int = 32, max_length: int | None = None):
        limit = max_length or self.config.l_max
        out = []
        for s in range(0, len(texts), batch_size):
            seqs = [self._truncate_passage(x, limit) for x in self._tokenize(texts[s : s + batch_size])]
            ids, mask = self._pad(seqs, "right")
            out.append(self.passage_states(ids, mask).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    @torch.no_grad()
    def calibrate_queries(self, prompts: list[str], min_prompts: int = 16, batch_size: int = 32) -> list[str]:
        """Re-estimate the query mean of each prompt format from these prompts themselves (label-free; e.g.
        an evaluation set): formats with at least `min_prompts` prompts get the mean of their states.
        Returns the formats it set. Query vectors only: passage vectors and the index stay valid."""
        if self.config.calibration != "template" or not prompts:
            return []
        cal = self._calibration()
        groups: dict[str, list[str]] = {}
        for p in prompts:
            groups.setdefault(template_key(p), []).append(p)
        done = []
        for key, rows in groups.items():
            if len(rows) < min_prompts:
                continue
            cal.query[key] = self._embed_query_states(rows, batch_size).mean(0)
            done.append(key)
        return done

    @torch.no_grad()
    def calibrate(
        self,
        passages: list[str],
        prompts: dict[str, list[str]] | None = None,
        max_passages: int = 2048,
        batch_size: int = 32,
        seed: int = 0,
    ) -> Calibration:
        """Set (and return) the calibration means: the passage mean over up to `max_passages` of `passages`,
        and per prompt format the mean query state of `prompts` (default: `calibration_prompts`, slots filled
        from the passages; every known format and FREE). Needs no labels."""
        import random

        sample = list(passages)
        if len(sample) > max_passages:
            sample = random.Random(seed).sample(sample, max_passages)
        prompts = dict(calibration_prompts(sample, seed=seed), **(prompts or {}))
        p_mean = self._embed_passage_states(sample, batch_size).mean(0)
        q_means = {key: self._embed_query_states(rows, batch_size).mean(0) for key, rows in prompts.items()}
        self.calibration = Calibration(p_mean, q_means)
        return self.calibration

    def generate(
        self, prompts: list[str], passages: list[list[str]] | None = None, **kwargs
    ) -> list[Generation]:
        states: list[Generation] = []
        for states in self.generate_stream(prompts, passages, **kwargs):  # noqa: B007 (keep the last state)
            pass
        return states

    @torch.no_grad()
    def generate_stream(
        self,
        prompts: list[str],
        passages: list[list[str]] | None = None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        generator: torch.Generator | None = None,
        choices: list[int] | None = None,
    ) -> Iterator[list[Generation]]:
        """Batched decoding (left padding) with the passage key/value cached in layers b..t only.

        Yields every row's state after each step; `passages=None` behaves like the plain model; `choices`:
        token ids every new token is chosen among.
        """
        from imprag.model.decoding import Decoder

        if not prompts:
            return
        if passages is not None and len(passages) != len(prompts):
            raise UserError(
                f"{len(passages)} passage lists for {len(prompts)} prompts: give one list per prompt"
            )
        with_passages = passages is not None
        read = self.tokenize_passages(passages) if passages is not None else None  # bad k: refused first
        ids, mask = self.encode_prompts(prompts, "left", with_passages, max_new_tokens)
        with self._decode_autocast():  # entered per step, never held across a yield
            hidden, cache, prefix_valid, position_ids = self._prefill(ids, mask, read, "append")
            logits = get(self.lm, self.spec.head)(hidden[:, -1]).float()  # (B, V)
        lengths = mask.sum(-1).tolist()
        decoder = Decoder(
            self, lengths, max_new_tokens, do_sample, temperature, top_p, stop, generator, choices
        )
        key_valid, last_pos = mask.bool(), position_ids[:, -1]
        while True:
            next_ids = decoder.step(logits)
            yield decoder.results()
            if decoder.done:
                return
            key_valid = torch.cat([key_valid, torch.ones_like(key_valid[:, :1])], dim=1)
            last_pos = last_pos + 1
            with self._decode_autocast():
                hidden = get(self.lm, self.spec.embed)(next_ids[:, None])
                hidden, _ = self._prompt_layers(hidden, key_valid, last_pos[:, None], cache, prefix_valid)
                logits = get(self.lm, self.spec.head)(hidden[:, -1]).float()

    @torch.no_grad()
    def continuation_logprob(
        self, prompts: list[str], continuations: list[str], passages: list[list[str]] | None = None
    ) -> torch.Tensor:
        """(B,) float32 on CPU: log p(continuation | passages, prompt), summed over the continuation's
        tokens, teacher-forced and read as decoding reads (passage cache, decode precision). Each
        continuation is tokenized on its own after its prompt, as training joins prompt and answer."""
        read = self.tokenize_passages(passages) if passages is not None else None  # bad k: refused first
        tails = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        limit = self.prompt_window(read is not None)
        seqs = [self._truncate_prompt(h + t, limit) for h, t in zip(self._tokenize(prompts), tails)]
        ids, mask = self._pad(seqs, "right")
        scores = []
        with self._decode_autocast():
            hidden, *_ = self._prefill(ids, mask, read, "read")
            for j, (seq, tail) in enumerate(zip(seqs, tails)):
                end, n = len(seq), min(len(tail), len(seq) - 1)  # token i is scored from position i - 1
                logits = get(self.lm, self.spec.head)(hidden[j, end - 1 - n : end - 1]).float()  # (n, V)
                scores.append(logits.log_softmax(-1).gather(-1, ids[j, end - n : end, None]).sum())
        return torch.stack(scores).cpu() if scores else torch.zeros(0)

    def _prefill(self, ids, mask, read: PassageInputs | None, mode: str):
        """All layers over prompts (B, T) as decoding reads them: the passages in `read` (from the passage
        cache) seen by layers b..t, in a LayerKV of `mode`. Returns (final hidden (B, T, H), that LayerKV,
        the passages' valid mask (B, P) or None, position_ids (B, T))."""
        prefix, prefix_valid, offset = {}, None, 0
        if read is not None:
            prefix, prefix_valid = self._encode_read_passages(read)
            offset = self.config.prompt_offset
        cache = LayerKV(prefix, mode)
        position_ids = positions_from_mask(mask, offset)
        hidden = get(self.lm, self.spec.embed)(ids)
        hidden, _ = self._prompt_layers(hidden, mask.bool(), position_ids, cache, prefix_valid)
        return hidden, cache, prefix_valid, position_ids

    def _decode_autocast(self):
        if self.decode_precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()


def _join_independent(prefix: dict, mask: torch.Tensor, n: int):
    """Independently read passages' (K, V) (B*n, h_k, l, d) -> the prompt's prefix (B, h_k, n*l, d), and
    which prefix slots are real tokens (B, n*l) from their mask (B*n, l)."""
    rows, length = mask.shape
    B = rows // n

    def join(x):
        h, d = x.shape[1], x.shape[-1]
        return x.view(B, n, h, length, d).transpose(1, 2).reshape(B, h, n * length, d)

    return {i: (join(k), join(v)) for i, (k, v) in prefix.items()}, mask.bool().view(B, n * length)
