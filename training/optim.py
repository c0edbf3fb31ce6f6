"""Optimizers and learning-rate schedules of the train section.

Optimizers (the classes below; none derives from torch.optim.Optimizer, whose constructor imports
torch._dynamo: 1.6-2 s of every run's start, for a compiler that only --compile uses):
    sgd       SGD: torch.optim.SGD's update: momentum, nesterov, weight_decay (L2 added to the gradient)
    rmsprop   RMSProp: Keras's update, TF 1's epsilon placement on request, centered
    adam      Adam: torch.optim.Adam's update (weight_decay as L2)
    adamw     Adam(decoupled_weight_decay=True): torch.optim.AdamW's update (decoupled weight decay)
SGD and Adam do what torch.optim's multi-tensor implementations (its default on CUDA) do, operation
for operation, which on the CPU gives torch.optim's weights to the bit (tests/test_train_units.py
compares); their state_dict has torch.optim's layout, so checkpoints written with torch.optim resume.
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

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from cnnc.compiler.arguments import Option

ONECYCLE_FINAL_DIVISOR = 1e4


Tensors = list[Tensor] | tuple[Tensor, ...]  # what torch._foreach_* take
Params = Iterable[Tensor] | Iterable[dict[str, Any]]  # the parameters, or groups of them with their own settings
LR_MULTIPLIER = "lr_multiplier"  # a parameter group's rate is the schedule's times this (default 1)


def build_optimizer(named_parameters: Iterable[tuple[str, Tensor]], roles: Mapping[str, str],
                    option: Option) -> Optimizer:
    """The optimizer of the trainable parameters; `roles` maps each parameter's name to its role."""
    params = parameter_groups(named_parameters, roles, option)
    lr, weight_decay = option["lr"], option.get("weight_decay", 0.0)
    if option.name == "sgd":
        return SGD(params, lr=lr, momentum=option["momentum"], nesterov=option["nesterov"], weight_decay=weight_decay)
    if option.name == "rmsprop":
        return RMSProp(params, lr=lr, rho=option["rho"], momentum=option["momentum"], eps=option["eps"],
                       eps_inside_sqrt=option["eps_inside_sqrt"], centered=option["centered"],
                       weight_decay=weight_decay)
    betas = (option["beta1"], option["beta2"])
    if option.name in ("adam", "adamw"):
        return Adam(params, lr=lr, betas=betas, eps=option["eps"], weight_decay=weight_decay,
                    decoupled_weight_decay=option.name == "adamw")
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


class Optimizer:
    """What the trainer needs of an optimizer: param_groups (a list of dicts with "params" and the
    settings, "lr" set before every step), per-parameter state, zero_grad, step, and a state_dict in
    torch.optim's layout: {"state": {index: {...}}, "param_groups": [{settings, "params": [index, ...]}]},
    parameters numbered in group order."""

    def __init__(self, params: Params, defaults: dict[str, Any]) -> None:
        listed: list[Any] = list(params)
        groups = listed if listed and isinstance(listed[0], dict) else [{"params": listed}]
        self.defaults = defaults
        self.param_groups = [{**defaults, **group, "params": list(group["params"])} for group in groups]
        self.state: dict[Tensor, dict[str, Any]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if set_to_none:
                    param.grad = None
                elif param.grad is not None:
                    param.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            grads = [param.grad for param in group["params"] if param.grad is not None]
            if params:
                self._update(group, params, grads, [self.state.setdefault(param, {}) for param in params])

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: Tensors,
                states: list[dict[str, Any]]) -> None:
        """One step of the parameters that have gradients, with their state (empty at first)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        index = {id(param): number for number, param in enumerate(self._params())}
        return {"state": {index[id(param)]: state for param, state in self.state.items()},
                "param_groups": [{**{key: value for key, value in group.items() if key != "params"},
                                  "params": [index[id(param)] for param in group["params"]]}
                                 for group in self.param_groups]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Raises ValueError (or KeyError, TypeError) when the state does not fit these parameters."""
        groups = state_dict["param_groups"]
        if [len(group["params"]) for group in groups] != [len(group["params"]) for group in self.param_groups]:
            raise ValueError("the optimizer state's parameter groups do not match the model's")
        params = self._params()
        state: dict[Tensor, dict[str, Any]] = {}
        for number, saved in state_dict["state"].items():
            param = params[number]
            state[param] = {key: _placed(key, value, param) for key, value in saved.items()}
        for group, saved_group in zip(self.param_groups, groups):
            group.update({key: copy.deepcopy(value) for key, value in saved_group.items() if key != "params"})
        self.state = state

    def _params(self) -> list[Tensor]:
        return [param for group in self.param_groups for param in group["params"]]


def _placed(key: str, value: Any, param: Tensor) -> Any:
    """A saved state entry on its parameter's device and dtype; Adam's step count stays a CPU float."""
    if not isinstance(value, Tensor) or key == "step":
        return value.clone() if isinstance(value, Tensor) else value
    if value.shape != param.shape:
        raise ValueError(f"the optimizer state's {key} has shape {tuple(value.shape)}, its parameter "
                         f"{tuple(param.shape)}")
    return value.to(device=param.device, dtype=param.dtype, copy=True)


class SGD(Optimizer):
    """torch.optim.SGD (dampening 0): g += weight_decay * p;  b = g at the first step, then
    b = momentum * b + g;  p -= lr * (g + momentum * b with nesterov, else b)."""

    def __init__(self, params: Params, *, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=0.0, nesterov=nesterov,
                                      weight_decay=weight_decay))

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: Tensors,
                states: list[dict[str, Any]]) -> None:
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        momentum = group["momentum"]
        if momentum:
            if all("momentum_buffer" in state for state in states):
                buffers = [state["momentum_buffer"] for state in states]
                torch._foreach_mul_(buffers, momentum)
                torch._foreach_add_(buffers, grads, alpha=1 - group["dampening"])
            else:
                buffers = []
                for grad, state in zip(grads, states):
                    if "momentum_buffer" in state:
                        state["momentum_buffer"].mul_(momentum).add_(grad, alpha=1 - group["dampening"])
                    else:
                        state["momentum_buffer"] = grad.detach().clone()
                    buffers.append(state["momentum_buffer"])
            grads = torch._foreach_add(grads, buffers, alpha=momentum) if group["nesterov"] else buffers
        torch._foreach_add_(params, grads, alpha=-group["lr"])


class Adam(Optimizer):
    """torch.optim.Adam, or AdamW with decoupled_weight_decay: at step t (counting from 1),
        p *= 1 - lr * weight_decay (decoupled)  or  g += weight_decay * p
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g^2
        p += -(lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)"""

    def __init__(self, params: Params, *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled_weight_decay: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: Tensors,
                states: list[dict[str, Any]]) -> None:
        for param, state in zip(params, states):
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        steps = [state["step"] for state in states]
        averages, squares = [state["exp_avg"] for state in states], [state["exp_avg_sq"] for state in states]
        (beta1, beta2), lr, weight_decay = group["betas"], group["lr"], group["weight_decay"]
        torch._foreach_add_(steps, 1)
        if weight_decay:
            if group["decoupled_weight_decay"]:
                torch._foreach_mul_(params, 1 - lr * weight_decay)
            else:
                grads = torch._foreach_add(grads, params, alpha=weight_decay)
        torch._foreach_lerp_(averages, grads, 1 - beta1)
        torch._foreach_mul_(squares, beta2)
        torch._foreach_addcmul_(squares, grads, grads, 1 - beta2)
        counts = [step.item() for step in steps]
        step_sizes = [(lr / (1 - beta1 ** count)) * -1 for count in counts]
        denominators = torch._foreach_sqrt(squares)
        torch._foreach_div_(denominators, [(1 - beta2 ** count) ** 0.5 for count in counts])
        torch._foreach_add_(denominators, group["eps"])
        torch._foreach_addcdiv_(params, averages, denominators, step_sizes)


class RMSProp(Optimizer):
    """RMSProp as Keras and TensorFlow define it (PyTorch's differs in where epsilon goes):

        ms  = rho * ms + (1 - rho) * g^2                       (ms starts at 0)
        mg  = rho * mg + (1 - rho) * g;  var = ms - mg^2       (centered; else var = ms)
        den = sqrt(var + eps)  with eps_inside_sqrt (TF 1),  else  sqrt(var) + eps  (Keras, TF 2)
        mom = momentum * mom + lr * g / den;  p -= mom         (with momentum; else p -= lr * g / den)
    """

    def __init__(self, params: Params, *, lr: float, rho: float = 0.9, momentum: float = 0.0,
                 eps: float = 1e-7, eps_inside_sqrt: bool = False, centered: bool = False,
                 weight_decay: float = 0.0) -> None:
        defaults = dict(lr=lr, rho=rho, momentum=momentum, eps=eps, eps_inside_sqrt=eps_inside_sqrt,
                        centered=centered, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: Tensors,
                states: list[dict[str, Any]]) -> None:
        for param, grad, state in zip(params, grads, states):
            if group["weight_decay"]:
                grad = grad.add(param, alpha=group["weight_decay"])
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


def set_learning_rate(optimizer: Optimizer, lr: float) -> None:
    """The schedule's rate, times each group's multiplier."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get(LR_MULTIPLIER, 1.0)
