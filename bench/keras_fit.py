"""Training throughput: cnnc's trainer against Keras 3 `fit` on the torch backend, side by side.

    pip install -e '.[bench]'                     # keras (it pulls no other torch)
    python bench/keras_fit.py                     # every spec below, 2048 images, 5 rounds
    python bench/keras_fit.py --specs mnist_fast --rounds 7 --accuracy --write

For each tutorial spec that Keras expresses layer for layer (the table below builds the same network
in keras.Sequential: same layers, shapes, initialisers, parameter count, checked), on the same
in-memory training images (the spec's dataset, first --images of them), with the same batch size,
optimizer (and learning rate) and loss, in one process (KERAS_BACKEND=torch, so both run on the
same torch and its threads), one after another in rotating order (so that a noisy neighbour hurts
both alike), it times one pass over the images of:

    cnnc    cnnc's trainer epoch (Trainer._epoch), as bench/train_throughput.py times it: uint8
            batches converted on the fly, the lowered module in channels-last
    keras   model.fit(x, y, batch_size=B, epochs=1, shuffle=True, verbose=0) on the images as
            float32 NHWC in [0, 1], converted once beforehand (as Keras's examples do), Keras's
            default channels_last data format

and reports training images per second of the fastest round of each (the round least disturbed by
other processes on a shared machine; the medians are printed too) and the ratio cnnc / keras. Each
side runs one untimed pass first (Keras traces its train step, oneDNN makes its primitives).
Augmentation and validation are off on both sides, as in bench/train_throughput.py; learning-rate
schedules are left out of Keras (a schedule changes a number per step, not the step's cost). Where
Keras has no exact equivalent the nearest setting is used and the row's note says so.

--accuracy also trains one full epoch of the whole training set on each side, from fresh weights,
and reports the test accuracy after it (costs one epoch per spec and side).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_results import replace_section  # noqa: E402
from train_throughput import session_for  # noqa: E402

from cnnc.runtime.measure import machine  # noqa: E402
from cnnc.training.data import TensorSplit  # noqa: E402
from cnnc.training.run import Session  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECTION = "keras-fit"


def _keras():
    try:
        import keras
    except ImportError:
        raise SystemExit("bench/keras_fit.py needs keras: pip install -e '.[bench]'") from None
    if keras.backend.backend() != "torch":
        raise SystemExit(f"KERAS_BACKEND is {keras.backend.backend()!r}; this benchmark compares on torch")
    return keras


@dataclass(frozen=True)
class KerasSpec:
    """A spec written in Keras: its layers (built on demand), optimizer, loss, and what differs."""

    layers: Callable[[], list]
    optimizer: Callable[[], object]
    loss: Callable[[], object]
    one_hot: bool = False  # the loss takes one-hot labels (label smoothing needs them in Keras)
    note: str = ""


def keras_specs() -> dict[str, KerasSpec]:
    keras = _keras()
    L = keras.layers

    def conv(filters, kernel, init="glorot_uniform", **options):
        return L.Conv2D(filters, kernel, kernel_initializer=init, **options)

    def sparse(from_logits: bool):
        return lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)

    def normal():
        return keras.initializers.RandomNormal(stddev=0.01)

    return {
        "keras_mnist": KerasSpec(
            lambda: [conv(32, 5, activation="relu"), L.MaxPooling2D(2), conv(64, 5, activation="relu"),
                     L.MaxPooling2D(2), L.Flatten(), L.Dense(10, activation="softmax")],
            lambda: keras.optimizers.SGD(0.01), sparse(from_logits=False)),
        "tf_mnist_deep": KerasSpec(
            lambda: [conv(32, 3, normal(), padding="same", use_bias=False, activation="relu"),
                     L.MaxPooling2D(2, padding="same"), L.Dropout(0.2),
                     conv(64, 3, normal(), padding="same", use_bias=False, activation="relu"),
                     L.MaxPooling2D(2, padding="same"), L.Dropout(0.2),
                     conv(128, 3, normal(), padding="same", use_bias=False, activation="relu"),
                     L.MaxPooling2D(2, padding="same"), L.Flatten(), L.Dropout(0.2),
                     L.Dense(625, use_bias=False, activation="relu", kernel_initializer=normal()), L.Dropout(0.5),
                     L.Dense(10, use_bias=False, kernel_initializer=normal())],
            lambda: keras.optimizers.RMSprop(0.001, rho=0.9), sparse(from_logits=True),
            note="Keras's RMSprop (epsilon 1e-7 outside the square root) for cnnc's TensorFlow-1 RMSProp"),
        "tf_mnist_5x5": KerasSpec(
            lambda: [conv(32, 5, padding="same", activation="relu"), L.MaxPooling2D(2),
                     conv(64, 5, padding="same", activation="relu"), L.MaxPooling2D(2), L.Flatten(),
                     L.Dense(1000, activation="relu"), L.Dense(10, activation="softmax")],
            lambda: keras.optimizers.Adam(0.0001), sparse(from_logits=False)),
        "lenet_selu": KerasSpec(
            lambda: [conv(12, 3, "lecun_normal", padding="same", activation="selu"), L.MaxPooling2D(3, 2),
                     conv(16, 3, "lecun_normal", padding="same", activation="selu"), L.MaxPooling2D(3, 2),
                     L.Flatten(), L.Dense(256, activation="selu", kernel_initializer="lecun_normal"),
                     L.Dense(100, activation="selu", kernel_initializer="lecun_normal"),
                     L.Dense(10, kernel_initializer="lecun_normal")],
            lambda: keras.optimizers.Adam(0.001), sparse(from_logits=True),
            note="cosine schedule left out"),
        "lenet_selu_bn": KerasSpec(
            lambda: [conv(12, 3, "lecun_normal", padding="same", use_bias=False), L.BatchNormalization(),
                     L.Activation("selu"), L.MaxPooling2D(3, 2, padding="same"),
                     conv(16, 3, "lecun_normal", padding="same", use_bias=False), L.BatchNormalization(),
                     L.Activation("selu"), L.MaxPooling2D(3, 2, padding="same"), L.Flatten(),
                     L.Dense(256, use_bias=False, kernel_initializer="lecun_normal"), L.BatchNormalization(),
                     L.Activation("selu"),
                     L.Dense(100, use_bias=False, kernel_initializer="lecun_normal"), L.BatchNormalization(),
                     L.Activation("selu"), L.Dropout(0.2), L.Dense(10, kernel_initializer="lecun_normal")],
            lambda: keras.optimizers.Adam(0.002),
            lambda: keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.05), one_hot=True,
            note="one-cycle schedule left out; translate(2) augmentation off on both sides"),
        "mnist_fast": KerasSpec(
            lambda: [conv(16, 3, "he_uniform", padding="same", use_bias=False), L.BatchNormalization(),
                     L.Activation("relu"), L.MaxPooling2D(2),
                     conv(32, 3, "he_uniform", padding="same", use_bias=False), L.BatchNormalization(),
                     L.Activation("relu"), L.MaxPooling2D(2),
                     conv(64, 3, "he_uniform", use_bias=False), L.BatchNormalization(), L.Activation("relu"),
                     L.Flatten(), L.Dense(10, kernel_initializer="he_uniform")],
            lambda: keras.optimizers.Adam(0.001),
            lambda: keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1), one_hot=True,
            note="one-cycle schedule left out"),
        "cifar10": KerasSpec(
            lambda: [conv(32, 3, padding="same", activation="relu"), conv(32, 3, activation="relu"),
                     L.MaxPooling2D(2), L.Dropout(0.25),
                     conv(64, 3, padding="same", activation="relu"), conv(64, 3, activation="relu"),
                     L.MaxPooling2D(2), L.Dropout(0.25), L.Flatten(), L.Dense(512, activation="relu"),
                     L.Dropout(0.5), L.Dense(10)],
            lambda: keras.optimizers.RMSprop(0.0001, weight_decay=0.000001), sparse(from_logits=True),
            note="Keras's RMSprop, its weight decay decoupled; translate(3) and hflip off on both sides"),
    }


class KerasSide:
    """The spec in keras.Sequential, compiled, with the session's training images as float32 NHWC."""

    def __init__(self, spec: KerasSpec, session: Session) -> None:
        keras = _keras()
        graph = session.program.graph
        channels, height, width = graph.input.shape
        self.model = keras.Sequential([keras.Input((height, width, channels)), *spec.layers()])
        self.model.compile(optimizer=spec.optimizer(), loss=spec.loss(), metrics=["accuracy"])
        keras_params = self.model.count_params()
        cnnc_params = graph.trainable_params + graph.non_trainable_params
        if keras_params != cnnc_params:
            raise SystemExit(f"{graph.name}: the Keras model has {keras_params:,} parameters, the spec "
                             f"{cnnc_params:,}: they are not the same network")
        self.batch_size = session.trainer.config.batch_size
        self.one_hot = spec.one_hot
        self.classes = graph.num_classes
        data = session.trainer.train_data
        self.x, self.y = self.arrays(data.images.numpy(), data.labels.numpy())

    def arrays(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(images.transpose(0, 2, 3, 1), dtype=np.float32) / np.float32(255)
        y = np.eye(self.classes, dtype=np.float32)[labels] if self.one_hot else labels
        return x, y

    def epoch_pass(self) -> None:
        self.model.fit(self.x, self.y, batch_size=self.batch_size, epochs=1, shuffle=True, verbose=0)


def spec_file(spec_name: str) -> Path:
    return ROOT / "specs" / f"{spec_name}.cnn"


def measure(spec_name: str, images: int, rounds: int, data: str | None) -> dict[str, list[float]]:
    """Images per second of each side, one rate per round."""
    session = session_for(spec_file(spec_name), images, True, data)
    keras_side = KerasSide(keras_specs()[spec_name], session)
    epoch = [0]

    def cnnc_pass() -> None:
        epoch[0] += 1
        session.trainer._epoch(epoch[0])

    sides = {"cnnc": cnnc_pass, "keras": keras_side.epoch_pass}
    count = len(session.splits.train)
    for run in sides.values():  # warm-up: Keras traces its step, oneDNN makes its primitives
        run()
    rates: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for round_ in range(rounds):
        for name in names[round_ % 2:] + names[:round_ % 2]:
            started = time.perf_counter()
            sides[name]()
            rates[name].append(count / (time.perf_counter() - started))
    return rates


def one_epoch_accuracy(spec_name: str, data: str | None) -> dict[str, float]:
    """Test accuracy after one epoch of the whole training set, from fresh weights, on each side."""
    session = session_for(spec_file(spec_name), None, True, data, test_images=None)
    keras_side = KerasSide(keras_specs()[spec_name], session)
    session.trainer._epoch(1)
    test = session.splits.test
    _, cnnc_accuracy, _ = session.trainer.evaluate(TensorSplit.of(test, session.trainer.device))
    keras_side.epoch_pass()
    x_test, y_test = keras_side.arrays(test.images, test.labels)
    _, keras_accuracy = keras_side.model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    return {"cnnc": cnnc_accuracy, "keras": float(keras_accuracy)}


def versions() -> str:
    import keras

    return (f"torch {torch.__version__} ({torch.get_num_threads()} threads), keras {keras.__version__} "
            f"(backend {keras.backend.backend()}), numpy {np.__version__}, Python {platform.python_version()}")


def table(results: dict[str, dict[str, float]], accuracy: dict[str, dict[str, float]], images: int, rounds: int,
          load: tuple[float, float], command: str) -> str:
    specs = keras_specs()
    lines = [
        "## Training throughput: cnnc against Keras 3 `fit` (torch backend)",
        "",
        f"`{command}`: training images per second in the fastest of {rounds} rounds, each round one pass over "
        f"the same {images:,} images per side in alternating order (see the script's docstring). *cnnc* is "
        "cnnc's trainer in its default memory format, channels-last; *keras* is the same network in "
        "keras.Sequential, compiled and trained with `model.fit` on KERAS_BACKEND=torch, on the same torch. "
        f"1-minute load average {load[0]:.1f} before, {load[1]:.1f} after. The fastest round is reported, the "
        "round least disturbed by anything else on the machine; the medians are beside it.",
        "",
        "| spec | cnnc (img/s) | keras (img/s) | cnnc / keras | median cnnc / keras | "
        + ("test accuracy after 1 epoch: cnnc / keras | " if accuracy else "") + "note |",
        "| --- | ---: | ---: | ---: | ---: | " + ("---: | " if accuracy else "") + "--- |",
    ]
    for spec, r in results.items():
        scores = accuracy.get(spec)
        cells = [spec, f"{r['cnnc']:,.0f}", f"{r['keras']:,.0f}", f"{r['cnnc'] / r['keras']:.2f}x",
                 f"{r['median']:.2f}x"]
        if accuracy:
            cells.append(f"{scores['cnnc']:.2%} / {scores['keras']:.2%}" if scores else "")
        cells.append(specs[spec].note)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Machine: {machine()}; {versions()}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    names = ("keras_mnist", "tf_mnist_deep", "tf_mnist_5x5", "lenet_selu", "lenet_selu_bn", "mnist_fast", "cifar10")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", nargs="+", choices=names, default=list(names))
    parser.add_argument("--images", type=int, default=2048, help="training images per pass (default: 2048)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data", default=None, help="the dataset's directory (default: the data root)")
    parser.add_argument("--accuracy", action="store_true", help="also train one full epoch per side and test it")
    parser.add_argument("--write", action="store_true", help="record the table in bench/RESULTS.md")
    args = parser.parse_args()
    _keras()
    results, accuracy = {}, {}
    load_before = os.getloadavg()[0]
    for spec in args.specs:
        with contextlib.redirect_stdout(sys.stderr):
            rates = measure(spec, args.images, args.rounds, args.data)
        fastest = {name: max(values) for name, values in rates.items()}
        medians = {name: statistics.median(values) for name, values in rates.items()}
        results[spec] = {**fastest, "median": medians["cnnc"] / medians["keras"]}
        for label, r in (("fastest", fastest), ("median", medians)):
            print(f"{spec} ({label}): cnnc {r['cnnc']:,.0f}/s, keras {r['keras']:,.0f}/s; "
                  f"cnnc / keras {r['cnnc'] / r['keras']:.2f}x", flush=True)
        if args.accuracy:
            with contextlib.redirect_stdout(sys.stderr):
                accuracy[spec] = one_epoch_accuracy(spec, args.data)
            print(f"{spec}: test accuracy after one epoch: cnnc {accuracy[spec]['cnnc']:.2%}, "
                  f"keras {accuracy[spec]['keras']:.2%}", flush=True)
    command = "python bench/keras_fit.py " + " ".join(sys.argv[1:])
    text = table(results, accuracy, args.images, args.rounds, (load_before, os.getloadavg()[0]), command)
    print(text)
    if args.write:
        replace_section(ROOT / "bench" / "RESULTS.md", SECTION, text)


if __name__ == "__main__":
    main()
