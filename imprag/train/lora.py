"""LoRA through peft, applied *after* ImpRAG is built: peft injects its adapter layers into the HF model in
place, so `ImpRAG.lm`, its layer list and the q/k projections the retrieval vectors read stay the same
objects (the projections now add their low-rank update). Saving merges W + scale * B A into plain
weights, so a checkpoint is a normal HF folder."""

from __future__ import annotations

import logging

import torch

from imprag.errors import UserError
from imprag.model.imprag import ImpRAG
from imprag.train.config import LoRAConfig

log = logging.getLogger(__name__)

ADAPTER = "default"


def apply_lora(model: ImpRAG, cfg: LoRAConfig) -> None:
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
    # get_peft_model wrapped the very module ImpRAG holds; keep the wrapper alive beside it
    if peft_model.base_model.model is not lm:
        raise RuntimeError("peft replaced the model object; ImpRAG would lose its layers")
    object.__setattr__(model, "_peft", peft_model)
    n_train = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in lm.parameters())
    log.info("LoRA r=%d on %s: %d of %d parameters train", cfg.r, ",".join(targets), n_train, n_all)


def has_lora(model: ImpRAG) -> bool:
    return getattr(model, "_peft", None) is not None


def adapter_state(model: ImpRAG) -> dict[str, torch.Tensor]:
    """The trainable (adapter) tensors, for the trainer state."""
    return {n: p.detach().cpu().clone() for n, p in model.lm.named_parameters() if p.requires_grad}


def load_adapter_state(model: ImpRAG, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.lm.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise UserError(
            f"checkpoint adapters do not fit this model (e.g. {missing[0]}); check --lora.* settings"
        )
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def merged_state_dict(model: ImpRAG) -> dict[str, torch.Tensor]:
    """The HF state dict with every LoRA update merged into its base weight (original key names)."""
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
