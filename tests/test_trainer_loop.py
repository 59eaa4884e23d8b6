"""The trainer's shared epoch step (trainer/loop.py) and its import layering."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from moodstream.trainer.config import StageSection
from moodstream.trainer.loop import run_epoch


def regression(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(24, 5, generator=generator)
    targets = inputs @ torch.randn(5, generator=generator) + 0.1 * torch.randn(24, generator=generator)
    model = nn.Linear(5, 1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 5, generator=generator))
        model.bias.zero_()

    def batch_loss(rows: np.ndarray) -> torch.Tensor:
        index = torch.as_tensor(rows)
        return nn.functional.mse_loss(model(inputs[index]).squeeze(-1), targets[index])

    return model, batch_loss, inputs, targets


def one_epoch(stage: StageSection, seed: int = 0) -> tuple[nn.Module, float]:
    model, batch_loss, _, _ = regression(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = run_epoch(np.arange(24), stage, optimizer, batch_loss)
    return model, loss


@pytest.mark.parametrize("accumulation", [2, 4])
def test_accumulated_micro_batches_take_the_step_of_the_whole_batch(accumulation):
    whole, whole_loss = one_epoch(StageSection(batch_size=8, gradient_accumulation=1))
    split, split_loss = one_epoch(StageSection(batch_size=8, gradient_accumulation=accumulation))
    for a, b in zip(whole.parameters(), split.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)


def test_the_epoch_loss_is_the_mean_loss_of_the_items_before_each_step():
    model, batch_loss, inputs, targets = regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # no step: every batch sees the same weights
    loss = run_epoch(np.arange(24), StageSection(batch_size=5), optimizer, batch_loss)
    with torch.no_grad():
        expected = float(nn.functional.mse_loss(model(inputs).squeeze(-1), targets))
    assert loss == pytest.approx(expected, rel=1e-5)


def test_gradients_are_clipped_over_every_parameter_the_optimizer_updates():
    limit = 1e-3
    model, batch_loss, _, _ = regression()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    run_epoch(np.arange(8), StageSection(batch_size=8, max_grad_norm=limit), optimizer, batch_loss)
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert 0 < float(moved) <= limit * (1 + 1e-4)


def test_evaluation_and_data_preparation_never_import_the_training_loop():
    # evaluate and prepare are what `moodstream evaluate` and the baselines need; the trainer imports them,
    # never the other way round.
    code = ("import sys\n"
            "import moodstream.trainer.evaluate, moodstream.trainer.prepare, moodstream.trainer.loop\n"
            "print(sorted(m for m in sys.modules if m == 'moodstream.trainer.train'))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
