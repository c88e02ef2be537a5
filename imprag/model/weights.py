"""Damaged or partial weights in a model folder -> one UserError naming the file and the fix.

Checked before transformers reads the folder (safetensors headers, the shards a sharded checkpoint's
index lists, the keys each shard holds, integer dtypes in a float model) and after (weights the model
needed but the files lacked: transformers would initialise them at random and only log it).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from imprag.errors import UserError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
FIX = "copy or download the complete checkpoint again (or re-save it with save_pretrained)"


def _header(path: Path) -> dict[str, str]:
    """{tensor name: safetensors dtype} from a file's header; UserError if unreadable or cut short."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_slice(k).get_dtype() for k in f.keys()}
    except (SafetensorError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: damaged or truncated safetensors file ({first}); {FIX}") from None


def _quantized(folder: Path) -> bool:
    try:
        return "quantization_config" in json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # transformers reports a bad config.json itself


def check_weights(folder: str | Path) -> None:
    """Refuse a local model folder whose safetensors weights are damaged, partial or of the wrong kind."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    index_path = folder / INDEX
    expected: dict[str, set[str]] = {}  # shard file -> tensor names the index puts there
    if index_path.exists():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            for name, file in weight_map.items():
                expected.setdefault(str(file), set()).add(str(name))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise UserError(
                f"{index_path}: not a valid sharded-checkpoint index (JSON with a `weight_map`); {FIX}"
            ) from None
        files = [folder / f for f in sorted(expected)]
        for f in files:
            if not f.is_file():
                raise UserError(f"{f}: shard missing (listed in {INDEX}, {len(files)} shards in all); {FIX}")
    elif (folder / SINGLE).exists():
        files = [folder / SINGLE]
    else:
        return  # no safetensors: transformers finds other formats or says what is missing
    check_dtype = not _quantized(folder)
    for f in files:
        header = _header(f)
        want = expected.get(f.name)
        if want is not None and set(header) != want:
            missing = sorted(want - set(header))
            example = missing[0] if missing else sorted(set(header) - want)[0]
            raise UserError(
                f"{f}: holds other tensors than {INDEX} lists for it ({len(missing)} missing, e.g. {example}): "
                f"the file is from another checkpoint; {FIX}"
            )
        if check_dtype:
            bad = sorted(k for k, dt in header.items() if dt not in FLOAT_DTYPES)
            if bad:
                raise UserError(
                    f"{f}: tensor {bad[0]} is stored as {header[bad[0]]}, not floating point, and config.json "
                    f"declares no quantization: a weights file of the wrong kind; {FIX}"
                )


def load_causal_lm(source: str, gguf_file: str | None, dtype: Any) -> tuple[Any, dict[str, Any]]:
    """AutoModelForCausalLM.from_pretrained quietly, with transformers' loading info (missing keys...)."""
    from transformers import AutoModelForCausalLM

    with quiet_load():
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            source, gguf_file=gguf_file, dtype=dtype, attn_implementation="sdpa", output_loading_info=True
        )
    return loaded[0], loaded[1]


def weights_file(folder: str | Path) -> str:
    """The weights file(s) of a folder as a message names them."""
    folder = Path(folder)
    for name in (SINGLE, INDEX, "pytorch_model.bin", "pytorch_model.bin.index.json"):
        if (folder / name).exists():
            return str(folder / name) + (" (and its shards)" if name.endswith("index.json") else "")
    return str(folder)


def check_loading_info(folder: str | Path, info: dict[str, Any]) -> None:
    """Refuse a load in which transformers initialised weights at random because the files lacked them."""
    folder = weights_file(folder)
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing:
        raise UserError(
            f"{folder}: the weights files lack {len(missing)} of the model's tensors (e.g. {missing[0]}), "
            f"so they would start random: the files are partial or from another model; {FIX}"
        )
    if mismatched:
        first = mismatched[0]
        name = first[0] if isinstance(first, list | tuple) else first
        raise UserError(
            f"{folder}: tensor {name} has another shape than config.json describes: the weights are from "
            f"another model; {FIX}"
        )


def load_error(folder: str | Path, error: BaseException) -> BaseException:
    """A UserError for what reading damaged weights raises (size mismatch, bad pickle, cut .bin files);
    anything else, out-of-memory included, comes back unchanged."""
    from safetensors import SafetensorError

    folder = weights_file(folder)
    text = str(error)
    first = (text.strip().splitlines() or [type(error).__name__])[0]
    if "out of memory" in text.lower() or "not enough memory" in text.lower():
        return error
    if isinstance(error, SafetensorError):
        return UserError(f"{folder}: damaged or truncated safetensors weights ({first}); {FIX}")
    torch_signs = ("load key", "weights_only", "PytorchStreamReader", "zip archive")
    if isinstance(error, pickle.UnpicklingError | EOFError) or any(s in text for s in torch_signs):
        return UserError(f"{folder}: damaged or truncated PyTorch weights file; {FIX}")
    if isinstance(error, RuntimeError) and "mismatch" in text.lower():
        return UserError(
            f"{folder}: tensor shapes do not match the architecture in config.json: the weights are from "
            f"another model; {FIX}"
        )
    return error


class quiet_load:
    """Silence transformers' load report and weight-loading bar while a model loads: missing or mismatched
    weights are refused by `check_loading_info` in one line instead of a table on stderr."""

    def __enter__(self) -> quiet_load:
        from transformers.utils import logging as hf_logging

        self._verbosity = hf_logging.get_verbosity()
        self._bar = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        return self

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._verbosity)
        if self._bar:
            hf_logging.enable_progress_bar()
