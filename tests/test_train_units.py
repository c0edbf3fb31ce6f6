"""The training stage's parts: schedules, the optimizers, the loss, augmentation, batch order, early
stopping and checkpoint files."""

from __future__ import annotations

import math
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cnnc.compiler.arguments import Option
from cnnc.errors import CnncError
from cnnc.training.augment import Augmenter
from cnnc.training.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint, save_checkpoint
from cnnc.training.data import epoch_order, even_batches, shard
from cnnc.training.losses import CrossEntropy
from cnnc.training.optim import SGD, Adam, LearningRateSchedule, RMSProp, set_learning_rate
from cnnc.training.trainer import BestTracker

ROOT = Path(__file__).resolve().parents[1]

# --- learning-rate schedules ------------------------------------------------------------------------

def schedule(option: Option, warmup_epochs: int = 0, lr: float = 0.1) -> LearningRateSchedule:
    return LearningRateSchedule(lr, option, steps_per_epoch=10, total_steps=100, warmup_steps=10 * warmup_epochs)


def test_constant_step_and_exponential_schedules() -> None:
    assert schedule(Option("constant")).at(57) == 0.1
    stepped = schedule(Option("step", (("every", 3), ("gamma", 0.5))))
    assert [stepped.at(s) for s in (0, 29, 30, 59, 60)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    decaying = schedule(Option("exponential", (("gamma", 0.5),)))
    assert decaying.at(10) == pytest.approx(0.05) and decaying.at(5) == pytest.approx(0.1 * 0.5 ** 0.5)


def test_cosine_runs_from_lr_to_min_lr_after_the_warmup() -> None:
    cosine = schedule(Option("cosine", (("min_lr", 0.01),)), warmup_epochs=2)
    assert cosine.at(0) == pytest.approx(0.1 / 20)  # linear warm-up over 20 steps
    assert cosine.at(19) == pytest.approx(0.1)
    assert cosine.at(60) == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi * 0.5)) / 2)
    assert cosine.at(100) == pytest.approx(0.01)


def test_onecycle_rises_from_lr_to_max_lr_and_falls_far_below_lr() -> None:
    cycle = schedule(Option("onecycle", (("max_lr", 1.0), ("pct_start", 0.3))))
    assert cycle.at(0) == pytest.approx(0.1)
    assert cycle.at(30) == pytest.approx(1.0)
    assert cycle.at(15) == pytest.approx(0.55)
    assert cycle.at(100) == pytest.approx(0.1 / 1e4)
    rates = [cycle.at(s) for s in range(101)]
    assert rates.index(max(rates)) == 30


# --- RMSProp -----------------------------------------------------------------------------------------

def run_optimizer(make, steps: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(6))
    optimizer = make([param])
    for step in range(steps):
        optimizer.zero_grad()
        ((param - step) ** 2 * torch.arange(6)).sum().backward()
        optimizer.step()
    return param.detach()


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_rmsprop_matches_pytorch_where_epsilon_is_outside_the_root(centered: bool, momentum: float) -> None:
    ours = run_optimizer(lambda p: RMSProp(p, lr=0.01, rho=0.8, momentum=momentum, eps=1e-3, centered=centered,
                                           weight_decay=0.1))
    theirs = run_optimizer(lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.8, momentum=momentum, eps=1e-3,
                                                         centered=centered, weight_decay=0.1))
    torch.testing.assert_close(ours, theirs)


def test_rmsprop_puts_epsilon_inside_the_root_as_tensorflow_1() -> None:
    ours = run_optimizer(lambda p: RMSProp(p, lr=0.01, rho=0.9, momentum=0.5, eps=1.0, eps_inside_sqrt=True), 3)
    torch.manual_seed(0)
    param = torch.randn(6).double()
    square_avg, buffer = torch.zeros(6).double(), torch.zeros(6).double()
    for step in range(3):
        grad = 2 * (param - step) * torch.arange(6)
        square_avg = 0.9 * square_avg + 0.1 * grad**2
        buffer = 0.5 * buffer + 0.01 * grad / torch.sqrt(square_avg + 1.0)
        param = param - buffer
    torch.testing.assert_close(ours, param.float())


# --- SGD and Adam: torch.optim's updates without torch.optim ---------------------------------------------

def model_parameters() -> list[torch.nn.Parameter]:
    """A conv weight in channels-last, a dense weight, a bias and a norm scale, seeded."""
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)),
            torch.nn.Parameter(torch.randn(5, 7)), torch.nn.Parameter(torch.randn(5)),
            torch.nn.Parameter(torch.rand(4) + 0.5)]


def groups_of(params: list[torch.nn.Parameter]) -> list[dict]:
    """Two groups, as norm_bias_decay=false and bias_lr make them."""
    return [{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0, "lr_multiplier": 4.0}]


def train_steps(optimizer, params: list[torch.nn.Parameter], steps: range) -> None:
    """Steps with a changing rate (as a schedule sets it) and gradients that depend on the weights."""
    for step in steps:
        set_learning_rate(optimizer, 0.05 / (1 + step))
        optimizer.zero_grad(set_to_none=True)
        loss = sum(((param - 0.1 * step) ** 2 * torch.linspace(0.5, 2.0, param.numel()).view_as(param)).sum()
                   for param in params)
        loss.backward()
        optimizer.step()


OPTIMIZER_PAIRS = {
    "sgd": (lambda g: SGD(g, lr=0.1, momentum=0.9, weight_decay=0.01),
            lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, weight_decay=0.01)),
    "sgd-nesterov": (lambda g: SGD(g, lr=0.1, momentum=0.85, nesterov=True, weight_decay=5e-4),
                     lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.85, nesterov=True, weight_decay=5e-4)),
    "sgd-plain": (lambda g: SGD(g, lr=0.1), lambda g: torch.optim.SGD(g, lr=0.1)),
    "adam": (lambda g: Adam(g, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
             lambda g: torch.optim.Adam(g, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)),
    "adamw": (lambda g: Adam(g, lr=0.01, weight_decay=0.05, decoupled_weight_decay=True),
              lambda g: torch.optim.AdamW(g, lr=0.01, weight_decay=0.05)),
}


@pytest.mark.parametrize("name", OPTIMIZER_PAIRS)
def test_sgd_and_adam_give_torch_optims_weights_to_the_bit(name: str) -> None:
    ours, theirs = OPTIMIZER_PAIRS[name]
    mine, reference = model_parameters(), model_parameters()
    train_steps(ours(groups_of(mine)), mine, range(6))
    train_steps(theirs(groups_of(reference)), reference, range(6))
    for param, expected in zip(mine, reference):
        assert torch.equal(param, expected)
    assert mine[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", OPTIMIZER_PAIRS)
def test_a_torch_optim_state_continues_in_ours_and_ours_in_torch_optim(name: str) -> None:
    """The state_dict layout is torch.optim's: checkpoints written before cnnc had its own optimizers
    resume, to the bit."""
    ours, theirs = OPTIMIZER_PAIRS[name]
    straight = model_parameters()
    train_steps(theirs(groups_of(straight)), straight, range(8))
    for first, then in ((theirs, ours), (ours, theirs)):
        params = model_parameters()
        before = first(groups_of(params))
        train_steps(before, params, range(4))
        saved = pickle.loads(pickle.dumps(before.state_dict()))
        continued = [torch.nn.Parameter(param.detach().clone()) for param in params]
        after = then(groups_of(continued))
        after.load_state_dict(saved)
        train_steps(after, continued, range(4, 8))
        for param, expected in zip(continued, straight):
            assert torch.equal(param, expected), (first, then)


def test_an_optimizer_state_that_does_not_fit_the_parameters_is_refused() -> None:
    params = model_parameters()
    optimizer = SGD(groups_of(params), lr=0.1, momentum=0.9)
    train_steps(optimizer, params, range(2))
    state = optimizer.state_dict()
    fresh = SGD(groups_of(model_parameters()), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="parameter groups"):
        fresh.load_state_dict({**state, "param_groups": state["param_groups"][:1]})
    swapped = {**state, "state": {0: state["state"][1], 1: state["state"][0], 2: state["state"][2],
                                  3: state["state"][3]}}
    with pytest.raises(ValueError, match=r"momentum_buffer has shape \(5, 7\), its parameter \(4, 3, 3, 3\)"):
        fresh.load_state_dict(swapped)


def test_no_optimizer_imports_torch_dynamo() -> None:
    """torch.optim.Optimizer's constructor imports torch._dynamo (1.6-2 s); cnnc's optimizers must not."""
    code = ("import sys\n"
            "from tests.test_train_units import OPTIMIZER_PAIRS, groups_of, model_parameters, train_steps\n"
            "from cnnc.training.optim import RMSProp\n"
            "makers = [ours for ours, _ in OPTIMIZER_PAIRS.values()] + [lambda g: RMSProp(g, lr=0.01, momentum=0.5)]\n"
            "for make in makers:\n"
            "    params = model_parameters(); optimizer = make(groups_of(params))\n"
            "    train_steps(optimizer, params, range(2)); optimizer.load_state_dict(optimizer.state_dict())\n"
            "print('torch._dynamo' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# --- the loss ------------------------------------------------------------------------------------------

def cross_entropy(smoothing: float = 0.0, from_logits: bool = True) -> Option:
    return Option("cross_entropy", (("label_smoothing", smoothing), ("from_logits", from_logits)))


def test_probabilities_from_a_final_softmax_use_its_logits_exactly() -> None:
    logits = torch.tensor([[200.0, 0.0, -200.0], [1.0, 2.0, 3.0]])
    labels = torch.tensor([2, 0])
    loss = CrossEntropy(cross_entropy(0.1, from_logits=False), model_ends_in_softmax=True)
    assert loss.wants_logits
    expected = F.cross_entropy(logits.double(), labels, label_smoothing=0.1).float()
    torch.testing.assert_close(loss(logits, labels), expected)
    assert torch.isfinite(loss(logits, labels))  # log(softmax) would be log(0) = -inf for the first


def test_other_probabilities_are_clipped_before_the_log_as_keras() -> None:
    probabilities = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 1])
    loss = CrossEntropy(cross_entropy(0.0, from_logits=False), model_ends_in_softmax=False)
    assert not loss.wants_logits
    expected = -(math.log(1e-7) + math.log(0.3)) / 2
    assert loss(probabilities, labels).item() == pytest.approx(expected, rel=1e-5)
    smoothed = CrossEntropy(cross_entropy(0.2, from_logits=False), model_ends_in_softmax=False)
    log_p = probabilities[1].log()
    assert smoothed(probabilities[1:], labels[1:]).item() == pytest.approx(
        (0.8 * -log_p[1] - 0.2 * log_p.mean()).item(), rel=1e-5)


# --- augmentation ----------------------------------------------------------------------------------

def augment(names: list[Option], x: torch.Tensor, seed: int = 0, epoch: int = 1) -> torch.Tensor:
    """The batch x as augmented when it is the whole training split."""
    augmenter = Augmenter(names, seed, len(x), x.shape[1:], torch.device("cpu"))
    augmenter.begin_epoch(epoch)
    return augmenter(x, torch.arange(len(x)))


def test_translate_shifts_each_image_within_its_range_filling_zeros() -> None:
    x = torch.zeros(64, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0
    y = augment([Option("translate", (("pixels", 2),))], x)
    positions = y[:, 0].flatten(1).argmax(1)
    rows, cols = positions // 9 - 4, positions % 9 - 4
    assert y.sum().item() == 64  # every dot still inside, moved whole
    assert rows.abs().max() == 2 and cols.abs().max() == 2 and len(set(zip(rows.tolist(), cols.tolist()))) > 10


def test_flips_and_cutout() -> None:
    x = torch.rand(200, 3, 8, 8)
    flipped = augment([Option("hflip")], x)
    mirrored = (flipped == x.flip(3)).flatten(1).all(1)
    kept = (flipped == x).flatten(1).all(1)
    assert bool((mirrored | kept).all()) and 60 < int(mirrored.sum()) < 140
    cut = augment([Option("cutout", (("size", 4),))], x)
    zeroed = (cut == 0).all(dim=1).flatten(1).sum(1)
    assert int(zeroed.max()) == 16 and int(zeroed.min()) >= 4  # a 4x4 square, clipped at the edges
    assert torch.equal(cut[cut != 0], x[cut != 0])


def test_augmentation_is_fixed_by_its_seed() -> None:
    x = torch.rand(16, 1, 10, 10)
    options = [Option("crop", (("padding", 3),)), Option("vflip"), Option("cutout", (("size", 3),))]
    assert torch.equal(augment(options, x, seed=5), augment(options, x, seed=5))
    assert not torch.equal(augment(options, x, seed=5), augment(options, x, seed=6))


# --- batch order ------------------------------------------------------------------------------------

def test_epoch_order_is_a_seeded_permutation_and_shards_cover_it() -> None:
    order = epoch_order(10, seed=3, epoch=2)
    assert sorted(order.tolist()) == list(range(10))
    assert torch.equal(order, epoch_order(10, seed=3, epoch=2))
    assert not torch.equal(order, epoch_order(10, seed=3, epoch=3))
    shares = [shard(order, rank, 4, pad=True) for rank in range(4)]
    assert {len(s) for s in shares} == {3} and set(torch.cat(shares).tolist()) == set(range(10))
    assert sum(len(shard(order, rank, 4, pad=False)) for rank in range(4)) == 10


# --- early stopping ---------------------------------------------------------------------------------

def test_early_stopping_counts_epochs_without_improvement_beyond_min_delta() -> None:
    tracker = BestTracker("val_loss", min_delta=0.1, patience=2, restore_best=True)
    assert [tracker.update(v, e) for e, v in enumerate([1.0, 0.95, 0.85, 0.9], start=1)] == [True, False, True, False]
    assert (tracker.best_epoch, tracker.should_stop) == (3, False)
    tracker.update(0.8, 5)
    assert tracker.should_stop


# --- checkpoint files -------------------------------------------------------------------------------

def minimal_checkpoint() -> dict:
    return {"model": {"w": torch.ones(2)}, "model_name": "m", "spec_path": "m.cnn", "sources": {"m.cnn": "x"},
            "classes": ["a", "b"], "input_shape": [1, 2, 2],
            "preprocess": {"scale": 1 / 255, "mean": [0.0], "std": [1.0]},
            "epoch": 1, "finished": False, "settings": {}}


def test_checkpoints_round_trip_and_load_with_weights_only(tmp_path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(minimal_checkpoint(), path)
    assert torch.load(path, weights_only=True)["format"] == FORMAT
    loaded = load_checkpoint(path)
    assert loaded.classes == ("a", "b") and torch.equal(loaded.model_state["w"], torch.ones(2))
    assert loaded.normalize == ((0.0,), (1.0,)) and loaded.training is None
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


class Foreign:
    pass


@pytest.mark.parametrize("content,message", [
    (b"", "cannot be read as a checkpoint: it is truncated, corrupt or not a PyTorch file"),
    (b"not a zip file at all", "cannot be read as a checkpoint: it is truncated, corrupt or not a PyTorch file"),
    (b"junk", "cannot be read as a checkpoint: it is truncated, corrupt or not a PyTorch file"),
    (bytes(range(256)) * 8, "cannot be read as a checkpoint: it is truncated, corrupt or not a PyTorch file"),
    ("truncated", "cannot be read as a checkpoint: it is truncated, corrupt or not a PyTorch file"),
    ({"state": torch.ones(1)}, "is not a cnnc checkpoint (it holds a dict with keys state)"),
    ([1, 2], "is not a cnnc checkpoint (it holds list)"),
    (Foreign(), "is not a cnnc checkpoint: it holds objects other than tensors and plain data"),
    ({"format": FORMAT, "version": FORMAT_VERSION + 1}, "is a version 2 checkpoint; this cnnc reads version 1"),
    ({"format": FORMAT, "version": FORMAT_VERSION, "model": {}}, "incomplete cnnc checkpoint: it lacks model_name"),
])
def test_bad_checkpoint_files_are_refused_with_a_reason(tmp_path, content, message: str) -> None:
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated":
        save_checkpoint(minimal_checkpoint(), path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        torch.save(content, path, pickle_module=pickle)
    with pytest.raises(CnncError, match=f"^{re.escape(str(path))} .*{re.escape(message)}"):
        load_checkpoint(path)


def test_missing_checkpoints_and_run_directories_are_named(tmp_path) -> None:
    with pytest.raises(CnncError, match="no checkpoint or run directory at .*nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CnncError, match="is not a cnnc run directory: it has no last.pt"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("count, largest", [(10000, 256), (10000, 250), (60000, 1024), (7, 256), (257, 256), (1, 1),
                                            (0, 256)])
def test_evaluation_batches_are_the_fewest_of_at_most_two_sizes_in_order(count: int, largest: int) -> None:
    indices = torch.arange(count) * 3
    parts = even_batches(indices, largest)
    sizes = {len(part) for part in parts}
    assert torch.equal(torch.cat(parts), indices)
    assert len(parts) == max(math.ceil(count / largest), 1)
    assert max(sizes) <= largest and max(sizes) - min(sizes) <= 1
