"""TensorBoard logs: sd-scripts' tag names and values, read back from the event files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from curate.errors import CurateError  # noqa: E402
from curate.trainer.logs import LossRecorder, TrainLog, lr_values, step_values  # noqa: E402
from curate.trainer.networks import AdapterNetwork, create_network  # noqa: E402
from fixtures.tiny_sd import build_components  # noqa: E402


@pytest.fixture(scope="module")
def network() -> AdapterNetwork:
    parts = build_components()
    return create_network("lora", parts["unet"], [parts["text_encoder"]], dim=2)


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_loss_and_lr_of_each_step(network: AdapterNetwork, tmp_path: Path) -> None:
    optimizer = torch.optim.AdamW(network.param_groups(1e-3, 5e-4), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    recorder = LossRecorder()
    with TrainLog(tmp_path / "logs", "lora-") as log:
        assert log.folder is not None and re.fullmatch(r"lora-\d{14}", log.folder.name)
        for step, loss in enumerate([0.5, 0.25, 0.75], start=1):
            recorder.add(0, step - 1, loss)
            log.log(step, step_values(loss, recorder.average, optimizer, scheduler, network))
            optimizer.step()
            scheduler.step()
    assert log.folder.parent == tmp_path / "logs"
    scalars = _scalars(log.folder)
    assert set(scalars) == {"loss/current", "loss/average", "lr/unet", "lr/textencoder"}
    assert scalars["loss/current"] == [(1, 0.5), (2, 0.25), (3, 0.75)]
    assert scalars["loss/average"] == [(1, 0.5), (2, 0.375), (3, 0.5)]
    assert [s for s, _ in scalars["lr/unet"]] == [1, 2, 3]
    assert [v for _, v in scalars["lr/unet"]] == pytest.approx([1e-3, 5e-4, 1e-3 / 3])
    assert [v for _, v in scalars["lr/textencoder"]] == pytest.approx([5e-4, 2.5e-4, 5e-4 / 3])


def test_prodigy_logs_d_times_lr(network: AdapterNetwork, tmp_path: Path) -> None:
    from prodigyopt import Prodigy

    optimizer = Prodigy(network.param_groups(None, None), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(param.shape, generator=generator) for param in network.parameters()]
    with TrainLog(tmp_path, None) as log:
        for step in (1, 2, 3):  # a steady gradient: Prodigy's d estimate grows
            for param, grad in zip(network.parameters(), grads, strict=True):
                param.grad = grad.clone()
            optimizer.step()
            scheduler.step()
            values = lr_values(optimizer, scheduler, network)
            log.log(step, values)
    d = optimizer.param_groups[0]["d"]
    assert d > 1e-6  # Prodigy has grown its estimate, so d*lr is not just d0 * lr
    assert values == pytest.approx({"lr/unet": 0.5, "lr/textencoder": 0.5, "lr/d*lr/unet": d * 0.5,
                                    "lr/d*lr/textencoder": d * 0.5})
    assert log.folder is not None
    scalars = _scalars(log.folder)
    assert scalars["lr/d*lr/unet"][-1] == (3, pytest.approx(d * 0.5, rel=1e-6))


def test_groups_without_a_network_are_numbered() -> None:
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(3)]
    optimizer = torch.optim.AdamW([{"params": [p], "lr": 0.1 * (i + 1)} for i, p in enumerate(params)])
    assert lr_values(optimizer, None) == pytest.approx({"lr/group0": 0.1, "lr/group1": 0.2, "lr/group2": 0.3})


def test_loss_recorder_averages_one_epoch() -> None:
    recorder = LossRecorder()
    assert recorder.average == 0.0
    for step, loss in enumerate([1.0, 2.0, 3.0]):
        recorder.add(0, step, loss)
    assert recorder.average == pytest.approx(2.0)
    recorder.add(1, 0, 4.0)  # replaces epoch 0's first step: [4, 2, 3]
    assert recorder.average == pytest.approx(3.0)


def test_no_logging_dir_is_a_no_op_without_tensorboard(tmp_path: Path) -> None:
    code = ("import sys\nfrom curate.trainer.logs import TrainLog\n"
            "with TrainLog(None, 'x') as log:\n    log.log(1, {'loss/current': 1.0})\n    log.flush()\n"
            "assert log.folder is None\n"
            "assert not any(m.startswith(('tensorboard', 'torch.utils.tensorboard')) for m in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran


def test_unwritable_logging_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    with pytest.raises(CurateError, match="cannot write TensorBoard logs"):
        TrainLog(blocker / "logs")
