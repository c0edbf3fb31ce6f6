"""The loss of the train section: cross-entropy, with label smoothing, on logits or probabilities.

`cross_entropy(from_logits=false)` says the model outputs probabilities. When they come from a
final softmax, training builds the graph without it (compiler.passes.with_outputs, "logits": the
same weights) and the loss is log-softmax of its output: exactly the log of the probabilities,
without the underflow of log(softmax) (the exported model still ends in softmax). Other probability outputs
are normalised to sum 1 and clipped to [1e-7, 1 - 1e-7] before the log, as Keras does.
Label smoothing s mixes the one-hot target with the uniform distribution over all classes:
(1 - s) * NLL + s * mean over classes of -log p (PyTorch's definition).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from cnnc.compiler.arguments import Option

PROBABILITY_EPSILON = 1e-7


class CrossEntropy:
    def __init__(self, option: Option, model_ends_in_softmax: bool) -> None:
        self.label_smoothing: float = option["label_smoothing"]
        from_logits: bool = option["from_logits"]
        # Whether the trained module leaves out the model's final softmax (see the module's docstring).
        self.wants_logits = not from_logits and model_ends_in_softmax
        self.takes_logits = from_logits or self.wants_logits

    def __call__(self, output: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
        output = output.float()  # under bf16 autocast, the loss is still computed in float32
        if self.takes_logits:
            return F.cross_entropy(output, labels, label_smoothing=self.label_smoothing, reduction=reduction)
        probabilities = output / output.sum(dim=1, keepdim=True)
        log_p = probabilities.clamp(PROBABILITY_EPSILON, 1 - PROBABILITY_EPSILON).log()
        losses = F.nll_loss(log_p, labels, reduction="none")
        if self.label_smoothing:
            losses = (1 - self.label_smoothing) * losses - self.label_smoothing * log_p.mean(dim=1)
        return losses.mean() if reduction == "mean" else losses.sum() if reduction == "sum" else losses


def correct(output: Tensor, labels: Tensor) -> Tensor:
    """How many predictions (the arg max) are right, as a 0-d tensor (no device sync)."""
    return (output.argmax(dim=1) == labels).sum()
