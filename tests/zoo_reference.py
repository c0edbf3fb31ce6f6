"""torchvision's published figures for the ImageNet classifiers in specs/zoo/, and where they come from.

Each entry is the `num_params` and `_ops` of the weights enum's `meta` in torchvision's model source
(https://github.com/pytorch/vision/blob/main/torchvision/models/<source>), which the documentation
page "Models and pre-trained weights" (https://pytorch.org/vision/stable/models.html) tabulates as
"Params" and "GFLOPS". Where a family has several weights (e.g. IMAGENET1K_V1 and V2) the architecture,
and so both figures, are the same.

`num_params` counts trainable parameters exactly (batch-norm running statistics are buffers). `_ops`
is torchvision's "GFLOPS", which counts multiply-accumulates of the inference model (eval mode) at the
weights' crop size, to three decimals (two for vgg16's 15.47): the same quantity as cnnc's MACs, which
count conv and dense multiply-accumulates per sample (compiler/ops.py).

Known differences in what is counted, per family:
- inception_v3: the 27,161,264 parameters include the auxiliary classifier (AuxLogits: 3,326,696),
  which torchvision's module keeps; its 5.713 GFLOPS is of the eval-mode forward pass, which skips it.
  The spec has the branch (so the parameters match) and cnnc's MACs count it: 5,718,899,296, of which
  the auxiliary branch is 5,683,200 (0.1%); without it, 5,713,216,096. Nothing reads its output, so the
  PyTorch module and the ONNX model, which cnnc builds from the live layers only, leave it out.
- googlenet: torchvision drops both auxiliary classifiers (aux1, aux2) unless asked for them, and both
  figures (6,624,904; 1.498) are without them; so is the spec.
- squeezenet1_1: the global average pool after the final ReLU'd 1x1 convolution is torchvision's
  classifier too; nothing else differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class Published:
    params: int
    gflops: str                   # as printed, so that its last digit is known
    weights: str                  # the weights enum whose meta holds the figures
    source: str                   # torchvision/models/<source>
    warnings: frozenset[str] = frozenset()  # diagnostics the faithful spec earns, and why (see its header)
    unused_params: int = 0        # in layers the output does not read, which the backends leave out

    @property
    def half_unit(self) -> Decimal:
        """Half a unit in the last printed digit: the rounding the figure itself carries."""
        exponent = Decimal(self.gflops).as_tuple().exponent
        assert isinstance(exponent, int)
        return Decimal(5) * Decimal(10) ** (exponent - 1)

    def macs_tolerance(self) -> Decimal:
        """In GMACs: 0.5% of the figure, or its own rounding where that is larger (0.057 could be
        anything from 0.0565 to 0.0575, +-0.9%)."""
        return max(Decimal("0.005") * Decimal(self.gflops), self.half_unit)


REFERENCE: dict[str, Published] = {
    "resnet18": Published(11_689_512, "1.814", "ResNet18_Weights.IMAGENET1K_V1", "resnet.py"),
    "resnet34": Published(21_797_672, "3.664", "ResNet34_Weights.IMAGENET1K_V1", "resnet.py"),
    "resnet50": Published(25_557_032, "4.089", "ResNet50_Weights.IMAGENET1K_V1", "resnet.py"),
    "vgg16": Published(138_357_544, "15.47", "VGG16_Weights.IMAGENET1K_V1", "vgg.py"),
    "vgg16_bn": Published(138_365_992, "15.47", "VGG16_BN_Weights.IMAGENET1K_V1", "vgg.py"),
    "alexnet": Published(61_100_840, "0.714", "AlexNet_Weights.IMAGENET1K_V1", "alexnet.py"),
    # torchvision's first convolution (3x3, stride 2, no padding) never reads the last row and column
    # of a 224 x 224 input: W002, kept because the spec is torchvision's.
    "squeezenet1_1": Published(1_235_496, "0.349", "SqueezeNet1_1_Weights.IMAGENET1K_V1", "squeezenet.py",
                               frozenset({"W002"})),
    "densenet121": Published(7_978_856, "2.834", "DenseNet121_Weights.IMAGENET1K_V1", "densenet.py"),
    "googlenet": Published(6_624_904, "1.498", "GoogLeNet_Weights.IMAGENET1K_V1", "googlenet.py"),
    # The auxiliary classifier feeds only an auxiliary loss: W001 (its output is never used).
    "inception_v3": Published(27_161_264, "5.713", "Inception_V3_Weights.IMAGENET1K_V1", "inception.py",
                              frozenset({"W001"}), unused_params=3_326_696),
    "mobilenet_v2": Published(3_504_872, "0.301", "MobileNet_V2_Weights.IMAGENET1K_V1", "mobilenetv2.py"),
    "mobilenet_v3_large": Published(5_483_032, "0.217", "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
                                    "mobilenetv3.py"),
    "mobilenet_v3_small": Published(2_542_856, "0.057", "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
                                    "mobilenetv3.py"),
    "efficientnet_b0": Published(5_288_548, "0.386", "EfficientNet_B0_Weights.IMAGENET1K_V1", "efficientnet.py"),
    "shufflenet_v2_x1_0": Published(2_278_604, "0.145", "ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1",
                                    "shufflenetv2.py"),
    "mnasnet1_0": Published(4_383_312, "0.314", "MNASNet1_0_Weights.IMAGENET1K_V1", "mnasnet.py"),
    "regnet_y_400mf": Published(4_344_144, "0.402", "RegNet_Y_400MF_Weights.IMAGENET1K_V1", "regnet.py"),
    "convnext_tiny": Published(28_589_128, "4.456", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1", "convnext.py"),
}

# CIFAR-10 adaptations in specs/zoo/ that users train here; no published ImageNet figures apply.
CIFAR = frozenset({"resnet18_cifar", "mobilenet_v2_cifar"})
