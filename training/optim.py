"""Optimizers and learning-rate schedules of the train section.

Optimizers:
    sgd       torch.optim.SGD: momentum, nesterov, weight_decay (L2 added to the gradient)
    rmsprop   RMSProp below: Keras's update, TF 1's epsilon placement on request, centered
    adam      torch.optim.Adam (weight_decay as L2)
    adamw     torch.optim.AdamW (decoupled weight decay)
Each also takes norm_bias_decay (false: weight_decay skips the parameters whose role, declared by
their op as compiler.ops.core.Param.role, is "bias" or "norm") and bias_lr (the rate of the
"bias" parameters, norm shifts included, is lr * bias_lr at every step, whatever the schedule).
With both at their defaults all parameters form one group, as torch's optimizers make it.

Schedules set the learning rate before every step (`global_step` counts steps from 0; an epoch
has `steps_per_epoch`; `lr` is the optimizer's rate):
    warmup N      the rate is multiplied by (global_step + 1) / (N * steps_per_epoch) for the first
                  N epochs; the schedules' own progress t counts from its end (t in [0, 1] over the
                  remaining steps)
    constant      lr
    step(every, gamma)     lr * gamma ** (epoch // every), epoch = global_step // steps_per_epoch
    exponential(gamma)     lr * gamma ** (global_step / steps_per_epoch): gamma per epoch, smoothly
    cosine(min_lr)         min_lr + (lr - min_lr) * (1 + cos(pi t)) / 2
    onecycle(max_lr, pct_start)  cosine from lr up to max_lr over the first pct_start of t, then
                           cosine down to lr / 10^4 (PyTorch's OneCycleLR, starting at the optimizer's lr)
    linear(max_lr, pct_start, final)  straight from lr up to max_lr over the first pct_start of t,
                           then straight down to `final` at t = 1 (airbench's triangle)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from cnnc.compiler.arguments import Option

ONECYCLE_FINAL_DIVISOR = 1e4


LR_MULTIPLIER = "lr_multiplier"  # a parameter group's rate is the schedule's times this (default 1)


def build_optimizer(named_parameters: Iterable[tuple[str, Tensor]], roles: Mapping[str, str],
                    option: Option) -> torch.optim.Optimizer:
    """The optimizer of the trainable parameters; `roles` maps each parameter's name to its role."""
    params = parameter_groups(named_parameters, roles, option)
    lr, weight_decay = option["lr"], option.get("weight_decay", 0.0)
    if option.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=option["momentum"], nesterov=option["nesterov"],
                               weight_decay=weight_decay)
    if option.name == "rmsprop":
        return RMSProp(params, lr=lr, rho=option["rho"], momentum=option["momentum"], eps=option["eps"],
                       eps_inside_sqrt=option["eps_inside_sqrt"], centered=option["centered"],
                       weight_decay=weight_decay)
    betas = (option["beta1"], option["beta2"])
    if option.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=option["eps"], weight_decay=weight_decay)
    if option.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=option["eps"], weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {option.name}")  # the checker allows no other


def parameter_groups(named_parameters: Iterable[tuple[str, Tensor]], roles: Mapping[str, str],
                     option: Option) -> list[dict]:
    """The parameters grouped by their weight decay and rate multiplier (see the top of the module)."""
    weight_decay = option.get("weight_decay", 0.0)
    decay_all, bias_lr = option.get("norm_bias_decay", True), option.get("bias_lr", 1.0)
    trainable = [(name, parameter) for name, parameter in named_parameters if parameter.requires_grad]
    if decay_all and bias_lr == 1.0:
        return [{"params": [parameter for _, parameter in trainable]}]
    groups: dict[tuple[bool, bool], list[Tensor]] = {}
    for name, parameter in trainable:
        role = roles[name]
        groups.setdefault((decay_all or role == "weight", role == "bias"), []).append(parameter)
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0,
             LR_MULTIPLIER: bias_lr if is_bias else 1.0}
            for (decays, is_bias), params in groups.items()]


class RMSProp(torch.optim.Optimizer):
    """RMSProp as Keras and TensorFlow define it (PyTorch's differs in where epsilon goes):

        ms  = rho * ms + (1 - rho) * g^2                       (ms starts at 0)
        mg  = rho * mg + (1 - rho) * g;  var = ms - mg^2       (centered; else var = ms)
        den = sqrt(var + eps)  with eps_inside_sqrt (TF 1),  else  sqrt(var) + eps  (Keras, TF 2)
        mom = momentum * mom + lr * g / den;  p -= mom         (with momentum; else p -= lr * g / den)
    """

    def __init__(self, params: ParamsT, *, lr: float, rho: float = 0.9, momentum: float = 0.0,
                 eps: float = 1e-7, eps_inside_sqrt: bool = False, centered: bool = False,
                 weight_decay: float = 0.0) -> None:
        defaults = dict(lr=lr, rho=rho, momentum=momentum, eps=eps, eps_inside_sqrt=eps_inside_sqrt,
                        centered=centered, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return None

    def _update(self, param: Tensor, group: dict) -> None:
        grad = param.grad
        assert grad is not None  # the caller skips parameters without one
        if group["weight_decay"]:
            grad = grad.add(param, alpha=group["weight_decay"])
        state = self.state[param]
        if not state:
            state["square_avg"] = torch.zeros_like(param)
            if group["centered"]:
                state["grad_avg"] = torch.zeros_like(param)
            if group["momentum"]:
                state["momentum_buffer"] = torch.zeros_like(param)
        rho = group["rho"]
        variance = state["square_avg"].mul_(rho).addcmul_(grad, grad, value=1 - rho)
        if group["centered"]:
            mean = state["grad_avg"].mul_(rho).add_(grad, alpha=1 - rho)
            variance = variance.addcmul(mean, mean, value=-1)
        if group["eps_inside_sqrt"]:
            denominator = variance.add(group["eps"]).sqrt_()
        else:
            denominator = variance.sqrt().add_(group["eps"])
        if group["momentum"]:
            buffer = state["momentum_buffer"].mul_(group["momentum"])
            buffer.addcdiv_(grad, denominator, value=group["lr"])
            param.sub_(buffer)
        else:
            param.addcdiv_(grad, denominator, value=-group["lr"])


@dataclass(frozen=True)
class LearningRateSchedule:
    """The learning rate of every step, as documented at the top of this module."""

    lr: float
    schedule: Option
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int = 0

    def at(self, global_step: int) -> float:
        warm = min(1.0, (global_step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return warm * self._scheduled(global_step)

    def _progress(self, global_step: int) -> float:
        remaining = max(self.total_steps - self.warmup_steps, 1)
        return min(max(global_step - self.warmup_steps, 0) / remaining, 1.0)

    def _scheduled(self, global_step: int) -> float:
        name, lr = self.schedule.name, self.lr
        if name == "constant":
            return lr
        if name == "step":
            return lr * self.schedule["gamma"] ** (global_step // self.steps_per_epoch // self.schedule["every"])
        if name == "exponential":
            return lr * self.schedule["gamma"] ** (global_step / self.steps_per_epoch)
        t = self._progress(global_step)
        if name == "cosine":
            return _cosine(lr, self.schedule["min_lr"], t)
        if name == "linear":
            peak, rise, final = self.schedule["max_lr"], self.schedule["pct_start"], self.schedule["final"]
            if t < rise:
                return lr + (peak - lr) * t / rise
            return peak + (final - peak) * (t - rise) / max(1 - rise, 1e-12)
        if name == "onecycle":
            peak, rise = self.schedule["max_lr"], self.schedule["pct_start"]
            if t < rise:
                return _cosine(lr, peak, t / rise)
            return _cosine(peak, lr / ONECYCLE_FINAL_DIVISOR, (t - rise) / max(1 - rise, 1e-12))
        raise ValueError(f"unknown schedule {name}")  # the checker allows no other


def _cosine(start: float, end: float, t: float) -> float:
    """From `start` at t = 0 to `end` at t = 1 along half a cosine."""
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's rate, times each group's multiplier."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get(LR_MULTIPLIER, 1.0)
