"""LoRA through peft, applied *after* ImpRAG is built: peft injects its adapter layers into the HF model in
place, so `ImpRAG.lm`, its layer list and the q/k projections the retrieval vectors read stay the same
objects (the projections now add their low-rank update). The trainer keeps the PeftModel wrapper that
`apply_lora` returns: peft's adapter state-dict helpers need it. Saving merges W + scale * B A into plain
weights, so a checkpoint is a normal HF folder."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from imprag.errors import UserError
from imprag.model.imprag import ImpRAG
from imprag.train.config import LoRAConfig

if TYPE_CHECKING:
    from peft import PeftModel

log = logging.getLogger(__name__)

ADAPTER = "default"


def apply_lora(model: ImpRAG, cfg: LoRAConfig) -> PeftModel:
    """Freeze the backbone and add LoRA adapters to the named projections of `model.lm` (in place)."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.lm.named_modules()}
    missing = [t for t in cfg.target_modules if t not in names]
    if len(missing) == len(cfg.target_modules):
        raise UserError(
            f"--lora.target_modules {cfg.target_modules}: none of these modules exist in the model"
        )
    if missing:
        log.warning("LoRA: no modules named %s in this model; adapting the others", missing)
    targets = [t for t in cfg.target_modules if t not in missing]
    peft_model = get_peft_model(
        model.lm,
        LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft computes alpha / r: a float works
            lora_dropout=cfg.dropout,
            target_modules=targets,
            bias="none",
        ),
    )
    lm: torch.nn.Module = model.lm
    if peft_model.base_model.model is not lm:  # it must wrap the very module ImpRAG holds
        raise RuntimeError("peft replaced the model object; ImpRAG would lose its layers")
    n_train = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in lm.parameters())
    log.info("LoRA r=%d on %s: %d of %d parameters train", cfg.r, ",".join(targets), n_train, n_all)
    return peft_model


def adapter_state(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter tensors (peft's own selection and names), on CPU, for the trainer state."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model).items()}


def load_adapter_state(peft_model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    fix = "check --lora.* settings against the checkpoint's train_config.json"
    try:
        result: Any = set_peft_model_state_dict(peft_model, state)  # missing_keys, unexpected_keys
    except RuntimeError as e:  # a size mismatch: another r
        raise UserError(
            f"checkpoint adapters do not fit this model ({str(e).splitlines()[0]}); {fix}"
        ) from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        example = (result.unexpected_keys or missing)[0]
        raise UserError(f"checkpoint adapters do not fit this model (e.g. {example}); {fix}")


def merged_state_dict(model: ImpRAG) -> dict[str, torch.Tensor]:
    """The HF state dict with every LoRA update merged into its base weight (original key names).

    A merged copy: peft's merge_adapter / unmerge_adapter would add and subtract the update in place,
    which does not give the trained weights back to the last bit."""
    from peft.tuners.lora import LoraLayer

    deltas: dict[str, torch.Tensor] = {}
    for name, module in model.lm.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in getattr(module, "lora_A", {}):
            deltas[f"{name}.weight"] = module.get_delta_weight(ADAPTER).detach()  # type: ignore[attr-defined]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in model.lm.state_dict().items():
        if "lora_" in key:
            continue
        clean = key.replace(".base_layer.", ".")
        t = tensor.detach()
        if clean in deltas:
            t = (t.float() + deltas[clean].float()).to(t.dtype)
        out[clean] = t.cpu().contiguous()
    return out
