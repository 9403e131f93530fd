"""Optimizers: AdamW (the paper's), or Muon for the hidden matrices with AdamW for the rest.

Muon (``torch.optim.Muon``) orthogonalises each hidden weight matrix's momentum update by a few
Newton-Schulz iterations; it applies to 2D hidden-layer matrices only, so embeddings, the LM
head, LayerNorms and biases stay with AdamW. An option for learning efficiency (issue 7), off in
the paper preset.

torch's Muon runs its Newton-Schulz iteration in bf16. Where the device lacks bf16 in hardware
(``model.machine.bf16_native``: an AVX2-only CPU) that iteration is emulated and took 11.6 s of a
16 s ``cpu``-preset step on a 2-core Zen 1 EPYC; there ``Float32Muon`` runs the same iteration in
float32 (BENCHMARKS.md). Elsewhere torch's Muon runs unchanged.

Every parameter group carries an ``lr_scale``: the schedule sets ``lr = lr_at(step) * lr_scale``,
so the Muon groups follow the same warmup and decay at their own peak (``TrainConfig.muon_lr``).
"""

from __future__ import annotations

import torch
import torch.optim._muon as torch_muon

from .config import TrainConfig, lr_at
from .machine import bf16_native


def newton_schulz_float32(update: torch.Tensor, coefficients, steps: int, eps: float) -> torch.Tensor:
    """torch's Muon orthogonalisation (the quintic Newton-Schulz iteration of ``torch.optim.Muon``,
    ``ns_coefficients`` and ``ns_steps``) computed in float32 instead of bf16."""
    a, b, c = coefficients
    wide = update.size(0) <= update.size(1)
    x = update.float() if wide else update.float().T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x if wide else x.T


class Float32Muon(torch.optim.Muon):
    """``torch.optim.Muon`` (same arguments, state and update rule) with its Newton-Schulz
    iteration in float32, for devices that would emulate bf16.

    Its ``step`` is torch's single-tensor Muon step with ``newton_schulz_float32`` in place of
    torch's bf16 iteration. It leaves torch's module as it is, so a ``torch.optim.Muon`` stepping
    in another thread keeps its own bf16 iteration."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            if self._init_group(group, params, grads, bufs):
                raise ValueError("Muon: complex parameters are not supported")
            lr, momentum = group["lr"], group["momentum"]
            for param, grad, buf in zip(params, grads, bufs):
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz_float32(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update, alpha=-torch_muon._adjust_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss


class OptimizerPair:
    """Two optimizers stepped as one (the face ``train`` uses: param_groups, step, zero_grad,
    state_dict, load_state_dict)."""

    def __init__(self, first: torch.optim.Optimizer, second: torch.optim.Optimizer):
        self.parts = (first, second)

    @property
    def param_groups(self) -> list[dict]:
        return [g for part in self.parts for g in part.param_groups]

    def step(self):
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True):
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict):
        if "parts" not in state or len(state["parts"]) != len(self.parts):
            raise ValueError("optimizer state: not a Muon+AdamW state (was the run trained with optimizer='adamw'?)")
        for part, sub in zip(self.parts, state["parts"]):
            part.load_state_dict(sub)


def _is_hidden_matrix(name: str, p: torch.nn.Parameter) -> bool:
    return p.dim() == 2 and name.startswith("blocks.")


def make_optimizer(model, cfg: TrainConfig):
    """AdamW over ``model.param_groups`` or, with ``cfg.optimizer == 'muon'``, Muon for the
    blocks' weight matrices and AdamW for everything else."""
    fused = next(model.parameters()).device.type == "cuda"
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        groups = [dict(g, lr_scale=1.0) for g in model.param_groups(cfg.weight_decay)]
        opt = torch.optim.AdamW(groups, lr=lr_at(cfg, 0), betas=betas, fused=fused)
        set_lr(opt, cfg, 0)
        return opt
    named = list(model.named_parameters())
    hidden = [p for n, p in named if _is_hidden_matrix(n, p)]
    hidden_ids = {id(p) for p in hidden}
    rest = [dict(g, params=[p for p in g["params"] if id(p) not in hidden_ids], lr_scale=1.0)
            for g in model.param_groups(cfg.weight_decay)]
    adamw = torch.optim.AdamW([g for g in rest if g["params"]], lr=lr_at(cfg, 0), betas=betas, fused=fused)
    # torch's Muon decays by lr * weight_decay a step: scaled so the decay per step is AdamW's
    muon_class = torch.optim.Muon if bf16_native(next(model.parameters()).device) else Float32Muon
    muon = muon_class([{"params": hidden, "lr_scale": cfg.muon_lr / cfg.lr}], lr=cfg.muon_lr,
                      weight_decay=cfg.weight_decay * cfg.lr / cfg.muon_lr, momentum=cfg.muon_momentum)
    opt = OptimizerPair(adamw, muon)
    set_lr(opt, cfg, 0)
    return opt


def set_lr(optimizer, cfg: TrainConfig, step: int) -> None:
    """Learning rate of every group for optimizer step ``step``: the schedule times its scale."""
    base = lr_at(cfg, step)
    for group in optimizer.param_groups:
        group["lr"] = base * group.get("lr_scale", 1.0)
