"""What a run reports while it trains: TensorBoard scalars and sample images (sd-scripts' timing).

After every optimiser step: loss/current, loss/average and the learning rates (d*lr for
Prodigy and D-Adaptation); sample images when sample_every_n_steps says so. At each epoch's
end: loss/epoch_average and the epoch's samples. Only the main process writes; a bad prompt
file or sampler name fails before the first step rather than after an hour of training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curate.trainer.config import TrainConfig
from curate.trainer.logs import LossRecorder, TrainLog, step_values
from curate.trainer.samples import SamplePrompt, check_sampler, due, generate_samples, load_prompts


class Watch:
    def __init__(self, config: TrainConfig, out: Path, main: bool) -> None:
        self.config, self.out, self.main = config, out, main
        self.prompts: list[SamplePrompt] = []
        if config.sample_prompts and (config.sample_every_n_steps or config.sample_every_n_epochs):
            self.prompts = load_prompts(Path(config.sample_prompts))
            check_sampler(config.sample_sampler)
        self.log = TrainLog(config.logging_dir if main else None, config.log_prefix)
        self.recorder = LossRecorder()
        self.samples: list[Path] = []
        self.values: dict[str, float] = {}  # the last step's loss and learning rates

    def after_step(self, run: Any, step: int, loss: float) -> None:
        """`step` counts finished steps; the step just taken was number `step` (from 1)."""
        epoch, index = divmod(step - 1, run.steps_per_epoch)
        self.recorder.add(epoch, index, loss)
        self.values = step_values(loss, self.recorder.average, run.optimizer, run.lr_scheduler, run.network)
        self.log.log(step, self.values)
        every_steps, every_epochs = self.config.sample_every_n_steps, self.config.sample_every_n_epochs
        if due(step, False, epoch + 1, every_steps, every_epochs):
            self._sample(run, step, None)
        if index + 1 == run.steps_per_epoch:
            self.log.log(epoch + 1, {"loss/epoch_average": self.recorder.average})
            if due(step, True, epoch + 1, every_steps, every_epochs):
                self._sample(run, step, epoch + 1)

    def _sample(self, run: Any, step: int, epoch: int | None) -> None:
        if self.prompts and self.main:
            self.samples += generate_samples(
                run.models, self.prompts, self.out, self.config.output_name, step, epoch,
                self.config.sample_sampler, run.device, self.config.seed, network=run.network,
                clip_skip=self.config.clip_skip, max_token_length=self.config.max_token_length)
        run.dist.barrier()

    def close(self) -> None:
        self.log.close()
