"""Averages of the weights, the train section's `ema` and `lookahead`: the weights that evaluation uses.

    ema(decay, start, every)  an exponential moving average of the parameters. It starts as the
                   initial weights; after each of the first `start` epochs' steps it is the live
                   weights themselves; after that, after every `every`-th step (counted from the end
                   of epoch `start`), average += (1 - decay) * (live - average). Buffers (batch-norm
                   running statistics) are not averaged, being averages already: they are copied
                   from the live model whenever the average changes.
    lookahead(k, alpha, ramp)  Zhang et al. 2019: after every k-th step (counted from the first of the
                   run), slow += alpha * (fast - slow), then fast = slow; with ramp > 0, alpha after
                   step s is 1 - (1 - alpha) * (s / total steps) ** ramp (airbench's schedule: the
                   average only takes hold late in the run); the running statistics of batch
                   norm are averaged like the parameters; the optimizer trains the fast
                   weights. Evaluation uses the weights a synchronisation would give at that moment,
                   slow + alpha * (fast - slow) (right after a synchronisation, those are the
                   fast = slow weights themselves); training is not changed by it.

Each keeps a module of its own, `module` (brought up to date by `refresh()`), that validation, the
test, best.pt and the checkpoint's `model` (and so `cnnc export`) use; the live weights training
continues from are in the checkpoint's training state (see trainer.py). The updates are exact
functions of the step count and the weights, so a resumed run repeats them bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from cnnc.compiler.arguments import Option


class Ema:
    def __init__(self, model: nn.Module, option: Option, steps_per_epoch: int) -> None:
        self.live = model
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay, self.every = option["decay"], option["every"]
        self.start_step = option["start"] * steps_per_epoch
        self._live_parameters: list[Tensor] = list(model.parameters())
        self._parameters: list[Tensor] = list(self.module.parameters())

    @torch.no_grad()
    def after_step(self, global_step: int) -> None:
        """Update after the optimizer's `global_step`-th step (counting from 1)."""
        if global_step <= self.start_step:
            torch._foreach_copy_(self._parameters, self._live_parameters)
        elif (global_step - self.start_step) % self.every == 0:
            # lerp leaves a parameter that training does not change exactly as it is
            torch._foreach_lerp_(self._parameters, self._live_parameters, 1 - self.decay)
        else:
            return
        _copy_buffers(self.module, self.live)

    def refresh(self) -> None:
        """Nothing to do: the average is always up to date."""

    def state(self) -> dict[str, Any]:
        return {}  # the average itself is the checkpoint's model

    def load_state(self, state: Mapping[str, Any], evaluated: Mapping[str, Tensor], global_step: int) -> None:
        self.module.load_state_dict(evaluated)


class Lookahead:
    def __init__(self, model: nn.Module, option: Option, total_steps: int) -> None:
        self.live = model
        self.k, self.final_alpha, self.ramp = option["k"], option["alpha"], option["ramp"]
        self.total_steps = total_steps
        self.alpha = self.alpha_at(0)
        self.module = copy.deepcopy(model).requires_grad_(False)
        # The running statistics move with the weights they describe, so they are averaged too
        # (as airbench's lookahead does): live statistics of a few batches would not match slow weights.
        self._names, self._fast = _averaged(model)
        self._slow = [tensor.detach().clone() for tensor in self._fast]
        self._views = _averaged(self.module)[1]

    def alpha_at(self, global_step: int) -> float:
        """alpha after `global_step` steps: with `ramp`, 1 - (1 - alpha) * (step / total steps) ** ramp."""
        if not self.ramp:
            return self.final_alpha
        progress = min(global_step / max(self.total_steps, 1), 1.0)
        return 1 - (1 - self.final_alpha) * progress ** self.ramp

    @torch.no_grad()
    def after_step(self, global_step: int) -> None:
        self.alpha = self.alpha_at(global_step)
        if global_step % self.k == 0:
            torch._foreach_lerp_(self._slow, self._fast, self.alpha)
            torch._foreach_copy_(self._fast, self._slow)

    @torch.no_grad()
    def refresh(self) -> None:
        """The module := what a synchronisation would give now."""
        for view, slow, fast in zip(self._views, self._slow, self._fast, strict=True):
            torch.lerp(slow, fast, self.alpha, out=view)
        _copy_buffers(self.module, self.live, floating=False)

    def state(self) -> dict[str, Any]:
        return {"slow": {name: slow.detach().cpu().clone() for name, slow in zip(self._names, self._slow, strict=True)}}

    @torch.no_grad()
    def load_state(self, state: Mapping[str, Any], evaluated: Mapping[str, Tensor], global_step: int) -> None:
        self.alpha = self.alpha_at(global_step)
        for name, slow in zip(self._names, self._slow, strict=True):
            slow.copy_(state["slow"][name])


WeightAverage = Ema | Lookahead


def weight_average(model: nn.Module, ema: Option | None, lookahead: Option | None,
                   steps_per_epoch: int, total_steps: int) -> WeightAverage | None:
    """The train section's average (the checker allows one at most), or None."""
    if ema is not None:
        return Ema(model, ema, steps_per_epoch)
    if lookahead is not None:
        return Lookahead(model, lookahead, total_steps)
    return None


def _averaged(model: nn.Module) -> tuple[list[str], list[Tensor]]:
    """The names and tensors that lookahead averages: the parameters and the floating-point buffers."""
    named = [*model.named_parameters(), *((name, buffer) for name, buffer in model.named_buffers()
                                          if buffer.is_floating_point())]
    return [name for name, _ in named], [tensor for _, tensor in named]


def _copy_buffers(target: nn.Module, source: nn.Module, floating: bool = True) -> None:
    """Copy the buffers (with floating=False: only the others, such as counters)."""
    for mine, theirs in zip(target.buffers(), source.buffers(), strict=True):
        if floating or not theirs.is_floating_point():
            mine.copy_(theirs)
