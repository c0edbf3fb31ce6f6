"""The train section's features of fast recipes: test-time augmentation, ema, lookahead, parameter
groups (norm_bias_decay, bias_lr), alternating flips, reflect fill, per-epoch augmentation, eval_every
and the linear schedule. Each is checked against an independent computation of what docs/language.md
says; runs with them resume exactly and export the same ONNX graph as runs without them.

Runs are in-process (no interpreter start-up) on MNIST subsets of 160 images: 4 steps per epoch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from cnnc.cli import main
from cnnc.compiler.arguments import Option
from cnnc.compiler.backends.pytorch import build_module
from cnnc.compiler.backends.weights import parameter_roles
from cnnc.compiler.check import check_file
from cnnc.datasets import load_dataset, split_validation
from cnnc.training.augment import Augmenter
from cnnc.training.averaging import Ema, Lookahead
from cnnc.training.checkpoint import load_checkpoint
from cnnc.training.optim import LearningRateSchedule, build_optimizer, set_learning_rate
from cnnc.training.settings import config_to_json
from cnnc.training.trainer import SIGNAL_AT_STEP_ENV

MODEL = """
model tiny {
    input image(1, 28, 28)
    conv(6, kernel=3, stride=2, padding=same) -> batchnorm -> relu
    conv(8, kernel=3, stride=2, padding=same, activation=relu)
    flatten    # not global pooling: moved and mirrored views give other outputs
    dense(10)
}
"""
PLAIN_TRAIN = """
train {
    dataset mnist
    optimizer sgd(lr=0.05, momentum=0.9, nesterov=true, weight_decay=0.0005)
    batch 32
    epochs 3
    validation 0.2
    seed 3
}
"""
# Every feature that decides which weights are evaluated, how, and on which images training runs.
EMA_TRAIN = """
train {
    dataset mnist
    optimizer sgd(lr=0.05, momentum=0.9, nesterov=true, weight_decay=0.0005, norm_bias_decay=false, bias_lr=2)
    schedule linear(0.2, pct_start=0.25)
    batch 32
    epochs 3
    augment translate(2, fill=reflect), hflip(alternate=true)
    tta hflip, translate(1)
    ema(decay=0.8, start=1, every=3)
    validation 0.2
    eval_every 2
    seed 3
}
"""
LOOKAHEAD_TRAIN = """
train {
    dataset mnist
    optimizer sgd(lr=0.1, momentum=0.9)
    batch 32
    epochs 3
    augment crop(2, fill=reflect), hflip(alternate=true), cutout(5)
    lookahead(k=3, alpha=0.5, ramp=2)
    validation 0.2
    eval_every 2
    seed 5
}
"""
FLAGS = ["--limit-train", "160", "--limit-test", "60", "--quiet"]  # 128 train, 32 validation images
STEPS_PER_EPOCH = 4
EMA_DECAY, EMA_START_STEP, EMA_EVERY = 0.8, 1 * STEPS_PER_EPOCH, 3


def train(spec: Path, run: Path, *extra: str) -> None:
    assert main(["train", str(spec), *FLAGS, "--out", str(run), *extra]) == 0


def write(directory: Path, train_section: str) -> Path:
    path = directory / "tiny.cnn"
    path.write_text(MODEL + train_section)
    return path


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --- ema: one run, recorded step by step --------------------------------------------------------

@pytest.fixture(scope="module")
def ema_run(tmp_path_factory) -> tuple[Path, list[tuple[int, dict[str, torch.Tensor]]]]:
    """(a finished run of EMA_TRAIN, the live weights after each of its optimizer steps)."""
    directory = tmp_path_factory.mktemp("ema")
    live: list[tuple[int, dict[str, torch.Tensor]]] = []
    original = Ema.after_step

    def recording(self: Ema, global_step: int) -> None:
        live.append((global_step, {name: t.detach().clone() for name, t in self.live.state_dict().items()}))
        original(self, global_step)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Ema, "after_step", recording)
        train(write(directory, EMA_TRAIN), directory / "run")
    return directory / "run", live


def expected_ema(live: list[tuple[int, dict[str, torch.Tensor]]], up_to_step: int) -> dict[str, np.ndarray]:
    """The documented average, in float64: the live weights during the first `start` epochs, then
    average += (1 - decay) (live - average) after every `every`-th step; buffers copied when it changes."""
    buffers = {"batchnorm1.running_mean", "batchnorm1.running_var"}
    average: dict[str, np.ndarray] = {}
    for step, weights in live[:up_to_step]:
        if step <= EMA_START_STEP:
            average = {name: t.double().numpy() for name, t in weights.items()}
        elif (step - EMA_START_STEP) % EMA_EVERY == 0:
            average = {name: weights[name].double().numpy() if name in buffers
                       else EMA_DECAY * value + (1 - EMA_DECAY) * weights[name].double().numpy()
                       for name, value in average.items()}
    return average


def assert_close(actual: dict[str, torch.Tensor], expected: dict[str, np.ndarray]) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name].double().numpy(), value, rtol=0, atol=2e-6, err_msg=name)


def test_ema_weights_are_what_the_checkpoints_hold(ema_run) -> None:
    run, live = ema_run
    assert [step for step, _ in live] == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    last = load_checkpoint(run)
    assert_close(last.model_state, expected_ema(live, 3 * STEPS_PER_EPOCH))
    # The live weights, which training continues from, are kept beside them, and differ from them.
    assert last.training is not None
    final_live = last.training["weights"]["live"]
    assert all(torch.equal(final_live[name], t) for name, t in live[-1][1].items())
    assert max((final_live[name] - t).abs().max().item() for name, t in last.model_state.items()) > 1e-3
    # best.pt: the average at the end of the best evaluated epoch
    best = load_checkpoint(run / "best.pt")
    assert best.epoch in (2, 3)  # eval_every 2: epochs 2 and 3 (the last) are evaluated
    assert_close(best.model_state, expected_ema(live, best.epoch * STEPS_PER_EPOCH))


def test_eval_every_evaluates_every_nth_and_the_last_epoch(ema_run) -> None:
    run, _ = ema_run
    epochs = [record for record in metrics(run) if "epoch" in record]
    assert [record["val_loss"] is not None for record in epochs] == [False, True, True]
    assert [record["val_accuracy"] is not None for record in epochs] == [False, True, True]


def onnx_outputs(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def tta_logits(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """`tta hflip, translate(1)` as documented: the image and its mirror share 1/2; each of them moved
    by (+1, +1) and (-1, -1), reflect-padded, share the other 1/2."""
    height, width = x.shape[2:]
    unshifted = [x, x[:, :, :, ::-1]]
    padded = [np.pad(view, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect") for view in unshifted]
    shifted = [padded[0][:, :, :height, :width], padded[0][:, :, 2:, 2:],
               padded[1][:, :, :height, :width], padded[1][:, :, 2:, 2:]]
    mean = [np.mean([onnx_outputs(session, view).astype(np.float64) for view in views], axis=0)
            for views in (unshifted, shifted)]
    return (mean[0] + mean[1]) / 2


def loss_and_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    top = logits.max(axis=1, keepdims=True)
    log_p = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean()), float((logits.argmax(axis=1) == labels).mean())


def test_evaluation_and_export_use_the_ema_weights_with_tta_as_documented(ema_run, tmp_path) -> None:
    run, live = ema_run
    assert main(["export", str(run), "-o", str(tmp_path / "m.onnx")]) == 0
    exported = onnx.load(tmp_path / "m.onnx")
    average = expected_ema(live, 3 * STEPS_PER_EPOCH)
    for initializer in exported.graph.initializer:  # the exported weights are the average
        np.testing.assert_allclose(numpy_helper.to_array(initializer), average[initializer.name], rtol=0, atol=2e-6)
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    data = os.environ["CNNC_DATA"]
    test = load_dataset("mnist", "test", data, progress=False).subset(60)
    _, validation = split_validation(load_dataset("mnist", "train", data, progress=False).subset(160), 0.2, 3)
    assert validation is not None
    recorded = metrics(run)
    for split, loss_key, accuracy_key, record in ((test, "test_loss", "test_accuracy", recorded[-1]),
                                                  (validation, "val_loss", "val_accuracy", recorded[-2])):
        x = split.images.astype(np.float32) * np.float32(1 / 255)
        loss, accuracy = loss_and_accuracy(tta_logits(session, x), split.labels)
        assert record[loss_key] == pytest.approx(loss, rel=1e-6)
        assert record[accuracy_key] == accuracy
        single_view, _ = loss_and_accuracy(onnx_outputs(session, x).astype(np.float64), split.labels)
        assert abs(single_view - loss) > 1e-4 * loss  # the views matter, so the comparison above can fail


def test_features_leave_the_onnx_graph_unchanged(ema_run, tmp_path) -> None:
    graphs = []
    for name, section in (("plain", PLAIN_TRAIN), ("ema", EMA_TRAIN), ("lookahead", LOOKAHEAD_TRAIN)):
        (tmp_path / name).mkdir()
        assert main(["compile", str(write(tmp_path / name, section)), "-o", str(tmp_path / f"{name}.onnx")]) == 0
        graphs.append(onnx.load(tmp_path / f"{name}.onnx").graph)
    assert graphs[0].SerializeToString() == graphs[1].SerializeToString() == graphs[2].SerializeToString()
    run, _ = ema_run
    assert main(["export", str(run), "-o", str(tmp_path / "trained.onnx")]) == 0
    trained = onnx.load(tmp_path / "trained.onnx").graph
    assert trained.node == graphs[0].node and trained.input == graphs[0].input and trained.output == graphs[0].output
    assert [i.name for i in trained.initializer] == [i.name for i in graphs[0].initializer]


# --- exact resume ------------------------------------------------------------------------------------

def assert_same_run(reference: Path, resumed: Path) -> None:
    for which in ("last.pt", "best.pt"):
        ours, theirs = load_checkpoint(resumed / which), load_checkpoint(reference / which)
        assert ours.model_state.keys() == theirs.model_state.keys()
        assert [name for name in ours.model_state if not torch.equal(ours.model_state[name],
                                                                     theirs.model_state[name])] == [], which
    ours_weights = load_checkpoint(resumed).training["weights"]
    theirs_weights = load_checkpoint(reference).training["weights"]
    assert ours_weights.keys() == theirs_weights.keys()
    for part in ours_weights:  # the live weights, and lookahead's slow weights
        assert all(torch.equal(ours_weights[part][name], theirs_weights[part][name]) for name in ours_weights[part])
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "test_loss", "test_accuracy")
    for ours_record, theirs_record in zip(metrics(resumed), metrics(reference), strict=True):
        assert [ours_record.get(key) for key in keys] == [theirs_record.get(key) for key in keys]


@pytest.mark.parametrize("section,stop_at", [(EMA_TRAIN, "INT:6"), (LOOKAHEAD_TRAIN, "INT:7")],
                         ids=["ema-alternate-reflect-tta", "lookahead-alternate-crop-cutout"])
def test_interrupted_and_resumed_runs_end_bit_identical(section: str, stop_at: str, ema_run, tmp_path,
                                                        monkeypatch) -> None:
    # Stopped in epoch 2 (steps 6 and 7: between ema updates, mid lookahead cycle), before its evaluation.
    spec = write(tmp_path, section)
    if section == EMA_TRAIN:
        reference = ema_run[0]
    else:
        (tmp_path / "reference").mkdir()
        reference = tmp_path / "reference" / "run"
        train(write(tmp_path / "reference", section), reference)
    monkeypatch.setenv(SIGNAL_AT_STEP_ENV, stop_at)
    assert main(["train", str(spec), *FLAGS, "--out", str(tmp_path / "run")]) == 130
    stopped = load_checkpoint(tmp_path / "run")
    assert (stopped.epoch, stopped.step_in_epoch) == (1, int(stop_at[4:]) - STEPS_PER_EPOCH)
    monkeypatch.delenv(SIGNAL_AT_STEP_ENV)
    assert main(["train", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert_same_run(reference, tmp_path / "run")
    if section == LOOKAHEAD_TRAIN:  # evaluated: the weights a synchronisation would give, slow + alpha (fast - slow)
        last = load_checkpoint(reference)
        weights = last.training["weights"]
        for name, slow in weights["slow"].items():
            assert torch.equal(last.model_state[name], torch.lerp(slow, weights["live"][name], 0.5))


def test_early_stopping_counts_evaluations_with_eval_every(tmp_path, capsys) -> None:
    section = PLAIN_TRAIN.replace("epochs 3", "epochs 6\n    eval_every 2\n"
                                  "    early_stopping(patience=1, metric=val_loss, min_delta=100)")
    spec = write(tmp_path, section)
    assert main(["train", str(spec), "--limit-train", "80", "--limit-test", "60", "--out", str(tmp_path / "run")]) == 0
    assert "early stopping after epoch 4: val_loss has not improved for 1 evaluations" in capsys.readouterr().err
    assert [record["val_loss"] is not None for record in metrics(tmp_path / "run")[:-1]] == [False, True, False, True]


# --- the parts --------------------------------------------------------------------------------------

def augmenter(options: list[Option], x: torch.Tensor, seed: int = 0) -> Augmenter:
    return Augmenter(options, seed, len(x), x.shape[1:], torch.device("cpu"))


def augmented(options: list[Option], x: torch.Tensor, epoch: int, seed: int = 0) -> torch.Tensor:
    augment = augmenter(options, x, seed)
    augment.begin_epoch(epoch)
    return augment(x, torch.arange(len(x)))


ALTERNATE = Option("hflip", (("alternate", True),))


def test_alternating_flips_mirror_each_image_in_exactly_every_other_epoch() -> None:
    x = torch.rand(300, 1, 5, 5)
    mirrored = []
    for epoch in range(1, 6):
        y = augmented([ALTERNATE], x, epoch, seed=7)
        flipped, kept = (y == x.flip(3)).flatten(1).all(1), (y == x).flatten(1).all(1)
        assert bool((flipped ^ kept).all())
        mirrored.append(flipped)
    assert 110 < int(mirrored[0].sum()) < 190  # epoch 1: each with probability 1/2
    assert all(torch.equal(later, ~earlier) for earlier, later in zip(mirrored, mirrored[1:]))
    other_seed = (augmented([ALTERNATE], x, 1, seed=8) == x.flip(3)).flatten(1).all(1)
    assert not torch.equal(other_seed, mirrored[0])


def test_an_images_augmentation_depends_on_seed_epoch_and_index_alone() -> None:
    options = [Option("translate", (("pixels", 2), ("fill", "reflect"))), Option("vflip"),
               Option("cutout", (("size", 3),)), ALTERNATE]
    x = torch.rand(40, 2, 7, 7)
    augment = augmenter(options, x, seed=5)
    for epoch in (1, 2, 3):  # a fresh augmenter starting at epoch 3 (a resumed run) draws the same
        augment.begin_epoch(epoch)
    whole = augment(x, torch.arange(40))
    assert torch.equal(whole, augmented(options, x, 3, seed=5))
    picked = torch.tensor([31, 2, 17, 2])
    assert torch.equal(augment(x[picked], picked), whole[picked])  # whatever batch an image is in
    assert not torch.equal(whole, augmented(options, x, 4, seed=5))


def test_reflect_fill_moves_each_image_and_mirrors_it_at_the_edges() -> None:
    x = torch.rand(60, 2, 6, 7)
    y = augmented([Option("translate", (("pixels", 2), ("fill", "reflect")))], x, 1).numpy()
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    shifts = []
    for image, source in zip(y, padded, strict=True):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if np.array_equal(image, source[:, 2 - dy:8 - dy, 2 - dx:9 - dx])]
        assert len(found) == 1
        shifts += found
    assert len(set(shifts)) > 12


def test_parameter_roles_come_from_the_ops() -> None:
    graph = check_file("m.cnn", text=MODEL).program.graph
    assert parameter_roles(graph) == {
        "conv1.weight": "weight", "conv1.bias": "bias", "batchnorm1.weight": "norm", "batchnorm1.bias": "bias",
        "batchnorm1.running_mean": "norm", "batchnorm1.running_var": "norm", "conv2.weight": "weight",
        "conv2.bias": "bias", "dense1.weight": "weight", "dense1.bias": "bias"}


def test_parameter_groups_skip_decay_and_scale_the_rate_at_every_scheduled_step() -> None:
    graph = check_file("m.cnn", text=MODEL).program.graph
    model = build_module(graph, seed=1)
    option = Option("sgd", (("lr", 0.1), ("momentum", 0.0), ("nesterov", False), ("weight_decay", 0.05),
                            ("norm_bias_decay", False), ("bias_lr", 3.0)))
    optimizer = build_optimizer(model.named_parameters(), parameter_roles(graph), option)
    schedule = LearningRateSchedule(0.1, Option("linear", (("max_lr", 0.5), ("pct_start", 0.5), ("final", 0.0))),
                                    steps_per_epoch=2, total_steps=4)
    assert [schedule.at(step) for step in range(5)] == pytest.approx([0.1, 0.3, 0.5, 0.25, 0.0])
    decays = {"conv1.weight", "conv2.weight", "dense1.weight"}  # not the biases, not batch norm's scale
    biases = {"conv1.bias", "batchnorm1.bias", "conv2.bias", "dense1.bias"}  # norm shifts included
    for step in range(3):
        model.zero_grad()
        model(torch.rand(4, 1, 28, 28)).square().sum().backward()
        before = {name: (p.detach().clone(), p.grad.clone()) for name, p in model.named_parameters()}
        set_learning_rate(optimizer, schedule.at(step))
        optimizer.step()
        for name, parameter in model.named_parameters():
            value, grad = before[name]
            rate = schedule.at(step) * (3.0 if name in biases else 1.0)
            expected = value - rate * (grad + (0.05 * value if name in decays else 0))
            torch.testing.assert_close(parameter.detach(), expected, rtol=1e-5, atol=1e-6, msg=name)
    option = Option("sgd", (("lr", 0.1), ("momentum", 0.0), ("nesterov", False), ("weight_decay", 0.05)))
    plain = build_optimizer(model.named_parameters(), parameter_roles(graph), option)
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["params"] == list(model.parameters())


def test_settings_json_records_the_features_only_when_used() -> None:
    def recorded(section: str) -> dict:
        program = check_file("tiny.cnn", text=MODEL + section).program
        assert program is not None and program.train is not None
        return config_to_json(program.train)

    plain = recorded(PLAIN_TRAIN.replace("seed 3", "augment translate(2), crop(1), hflip"))
    assert list(plain) == ["dataset", "batch_size", "epochs", "optimizer", "schedule", "warmup_epochs", "loss",
                           "augment", "seed", "validation", "early_stopping", "clip_grad_norm", "normalize"]
    assert plain["optimizer"] == "sgd(lr=0.05, momentum=0.9, nesterov=true, weight_decay=0.0005)"
    assert plain["augment"] == ["translate(pixels=2)", "crop(padding=1)", "hflip"]
    featured = recorded(EMA_TRAIN)
    assert list(featured)[len(plain):] == ["tta", "ema", "eval_every"]
    assert featured["optimizer"].endswith("weight_decay=0.0005, norm_bias_decay=false, bias_lr=2.0)")
    assert featured["augment"] == ['translate(pixels=2, fill="reflect")', "hflip(alternate=true)"]
    assert (featured["tta"], featured["ema"]) == (["hflip", "translate(pixels=1)"], "ema(decay=0.8, start=1, every=3)")


@pytest.mark.parametrize("ramp", [0.0, 2.0])
def test_lookahead_synchronises_every_k_steps(ramp: float) -> None:
    model, total_steps = torch.nn.Linear(3, 2), 8
    lookahead = Lookahead(model, Option("lookahead", (("k", 3), ("alpha", 0.25), ("ramp", ramp))), total_steps)

    def alpha(step: int) -> float:  # as docs/language.md says
        return 0.25 if ramp == 0 else 1 - 0.75 * (step / total_steps) ** ramp

    slow = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 8):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))  # an optimizer's step
        fast = [p.detach().clone() for p in model.parameters()]
        lookahead.after_step(step)
        if step % 3 == 0:
            slow = [s + alpha(step) * (f - s) for s, f in zip(slow, fast, strict=True)]
            fast = slow
        for parameter, expected in zip(model.parameters(), fast, strict=True):
            torch.testing.assert_close(parameter.detach(), expected, rtol=0, atol=1e-6)
    lookahead.refresh()
    for evaluated, s, f in zip(lookahead.module.parameters(), slow, model.parameters(), strict=True):
        torch.testing.assert_close(evaluated, s + alpha(7) * (f.detach() - s), rtol=0, atol=1e-6)
