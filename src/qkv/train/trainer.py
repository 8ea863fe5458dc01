"""The training loop: teacher forcing, label-smoothed cross-entropy, AdamW, the warm-up schedule,
gradient clipping and accumulation, mixed precision, validation, checkpoints and exact resume, and
multi-process data parallelism (``torchrun``).

Exactness: the batch order is a pure function of (seed, epoch); the learning rate of the step; dropout's
RNG is reseeded from (seed, step, rank) before each step. A checkpoint therefore needs only the weights,
the optimizer state and the position, and a resumed run continues the very same run, bit for bit.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from qkv import checkpoint
from qkv.data.batching import Batch, EpochBatches, LengthIndex, make_batches
from qkv.models.seq2seq import Transformer
from qkv.train import run_files
from qkv.train.budget import Calibration, plan_steps
from qkv.train.outcome import NonFiniteLoss as NonFiniteLoss  # re-exported
from qkv.train.outcome import TrainingInterrupted as TrainingInterrupted  # re-exported
from qkv.train.outcome import TrainResult as TrainResult  # re-exported
from qkv.train.processes import catching_signals, step_seed
from qkv.train.processes import distributed_context as distributed_context  # re-exported
from qkv.train.run_log import RunLog
from qkv.train.schedule import DECAYING, learning_rate
from qkv.train.state import TrainerState, optimizer_from_safetensors
from qkv.train.task import Example as Example  # re-exported: the seq2seq example type
from qkv.train.task import Seq2SeqTask, Task
from qkv.train.train_config import BEST_BY as BEST_BY  # re-exported
from qkv.train.train_config import Precision as Precision  # re-exported
from qkv.train.train_config import TrainConfig as TrainConfig  # re-exported

ValidationHook = Callable[[Any, int], dict[str, float]]  # (model, step) -> metrics


# -- the trainer -----------------------------------------------------------------------------------
class Trainer:
    """Trains a model on encoded examples, writing to ``run_dir``.

    ``task`` says what an example is and what the loss is; the default is teacher forcing for a
    :class:`~qkv.models.seq2seq.Transformer`.

    ``model_json`` and ``model_text`` are the extra files of a model directory (``config.json`` and the
    tokenizer files): every checkpoint is a complete model directory that ``qkv translate`` can load.
    ``run_info`` (JSON) is saved in each checkpoint's trainer_state.json, for the caller to resume with.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        run_dir: str | os.PathLike[str],
        *,
        train: Sequence[Any],
        valid: Sequence[Any] = (),
        task: Task | None = None,
        model_json: dict[str, Any] | None = None,
        model_text: dict[str, str] | None = None,
        hooks: Sequence[ValidationHook] = (),
        device: torch.device | str = "cpu",
        progress: bool = True,
        run_info: dict[str, Any] | None = None,
    ) -> None:
        if not train:
            raise ValueError("no training examples")
        self.model = model
        self.config = config
        self.run_dir = Path(run_dir)
        # Kept as given: a prepared corpus (qkv.data.prepared) stays on disk, read a batch at a time.
        self.train_data = train
        self.valid_data = list(valid)
        if task is None or model_json is None:
            if not isinstance(model, Transformer):
                raise TypeError("a model other than the seq2seq Transformer needs its task and model_json")
            c = model.config
            task = task or Seq2SeqTask(c.pad_id, c.bos_id, c.eos_id)
            model_json = model_json or {"config.json": {"model": c.to_dict()}}
        self.task: Task = task
        self.model_json = dict(model_json)
        self.model_text = dict(model_text or {})
        self.run_info = dict(run_info or {})
        self.hooks = list(hooks)
        self.device = torch.device(device)
        self.progress = progress
        self.rank, self.world = distributed_context()
        self.run_log = RunLog(self.run_dir, rank=self.rank, progress=progress)
        self.model.to(self.device)
        # The fused kernel (one pass over each parameter, CPU and CUDA), a third of the per-tensor loop's
        # time (docs/inference-backends.md). Not bitwise the loop's rounding; resuming stays exact (the
        # same kernel again).
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.lr,
            betas=config.betas,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.ddp: nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.state = TrainerState()
        self._signal: int | None = None
        self._train_lengths: LengthIndex | None = None
        self._batches: EpochBatches | None = None
        self.scaler = (
            torch.amp.GradScaler("cuda")
            if config.precision == "fp16" and self.device.type == "cuda"
            else None
        )

    # -- batches -----------------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> EpochBatches:
        """This rank's batches of ``epoch``, made a window of the corpus at a time; the last epoch's are kept,
        so asking again costs nothing (on a corpus of millions of pairs, counting an epoch's batches sorts
        every window of it)."""
        if self._batches is not None and self._batches.epoch == epoch:
            return self._batches
        self._batches = None  # let the previous epoch's go before the next is made
        if self._train_lengths is None:
            self._train_lengths = self.task.lengths(self.train_data)  # once: the data does not change
        self._batches = EpochBatches(
            self._train_lengths,
            self.config.max_tokens,
            seed=self.config.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world,
            window=self.config.batch_window,
        )
        return self._batches

    def _autocast(self) -> Any:
        if self.config.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # -- one optimizer step ------------------------------------------------------------------------
    def _reduce(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(
            values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu"
        )
        dist.all_reduce(t)
        return t.tolist()

    def _train_step(self, group: list[Batch]) -> tuple[float, float, int, bool]:
        """Forward and backward over ``group`` (accumulated), then one AdamW step.

        The summed loss is divided by the target tokens of the whole step on all ranks (times the world
        size, since DDP averages gradients), so N processes equal one process with the same global batch.
        Returns (loss sum, nll sum, target tokens, whether the step was taken) summed over ranks.
        """
        torch.manual_seed(step_seed(self.config.seed, self.state.step, self.rank))
        tensors = [self.task.tensors(self.train_data, batch.tolist(), self.device) for batch in group]
        local_tokens = sum(self.task.count(t) for t in tensors)
        (global_tokens,) = self._reduce([float(local_tokens)])
        scale = self.world / max(global_tokens, 1.0)
        lr = self._learning_rate(self.state.step + 1)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = nll_sum = 0.0
        finite = True
        for i, batch in enumerate(tensors):
            last = i == len(tensors) - 1
            sync = nullcontext() if last or self.world == 1 else self.ddp.no_sync()  # type: ignore[operator]
            with sync:
                with self._autocast():
                    loss, nll = self.task.loss(self.ddp, batch, self.config.label_smoothing)
                value = float(loss.detach())
                finite = finite and math.isfinite(value)
                loss_sum += value
                nll_sum += float(nll)
                scaled = loss * scale
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
        loss_sum, nll_sum, bad = self._reduce([loss_sum, nll_sum, 0.0 if finite else 1.0])
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            return loss_sum, nll_sum, int(global_tokens), False
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss_sum, nll_sum, int(global_tokens), True

    # -- the learning rate and the time budget -----------------------------------------------------
    def _decays_to(self) -> int | None:
        """The step the schedule decays to 0 at: max_steps or the time budget's plan, whichever comes first."""
        ends = [n for n in (self.config.max_steps, self.state.planned_steps) if n is not None]
        return min(ends) if ends else None

    def _learning_rate(self, step: int) -> float:
        schedule, total = self.config.schedule, self._decays_to()
        if schedule in DECAYING and total is None:
            # A time budget not planned yet: warm up, then hold the peak (qkv.train.budget).
            schedule = "constant"
        return learning_rate(
            step, schedule=schedule, peak=self.config.lr, warmup=self.config.warmup, total_steps=total
        )

    def _plans_budget(self) -> bool:
        """Whether this run fits its decay to --max-minutes and has not planned it yet."""
        c = self.config
        return c.schedule in DECAYING and c.max_minutes is not None and self.state.planned_steps is None

    def _plan_done(self) -> bool:
        """Whether the run has taken every step its time budget planned."""
        return self.state.planned_steps is not None and self.state.step >= self.state.planned_steps

    def _plan_budget(self, seconds_per_step: float, start: float) -> None:
        """Fix the step the budget ends at (rank 0's measurement, on every rank) and report it."""
        c = self.config
        assert c.max_minutes is not None
        mine = [seconds_per_step, c.max_minutes * 60 - (time.monotonic() - start)]
        seconds, left = self._reduce(mine if self.rank == 0 else [0.0, 0.0])
        planned = plan_steps(step=self.state.step, seconds_per_step=seconds, seconds_left=left)
        self.state.planned_steps = planned
        self.run_log.write(
            {
                "step": self.state.step,
                "planned_steps": planned,
                "seconds_per_step": seconds,
                "budget_minutes": c.max_minutes,
            }
        )
        message = (
            f"time budget: {seconds:.3f} s a step, so {planned:,} steps fit into --max-minutes {c.max_minutes:g}; "
            f"the learning rate decays ({c.schedule}) to 0 at step {self._decays_to():,}"
        )
        if planned <= c.warmup:
            message += (
                f". That is not more than --warmup {c.warmup}: the peak is never reached; lower --warmup"
            )
        self.run_log.note(message)

    # -- validation --------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Label-smoothed loss and NLL per target token on the validation set (rank 0 only)."""
        if not self.valid_data:
            return {}
        self.model.eval()
        lengths = self.task.lengths(self.valid_data)
        src_lens, tgt_lens = lengths.lengths_of(np.arange(len(lengths)))
        batches = make_batches(src_lens, tgt_lens, self.config.max_tokens, seed=0, epoch=0, shuffle=False)
        loss_sum = nll_sum = 0.0
        tokens = 0
        for batch in batches:
            tensors = self.task.tensors(self.valid_data, batch.tolist(), self.device)
            with self._autocast():
                loss, nll = self.task.loss(self.model, tensors, self.config.label_smoothing)
            loss_sum += float(loss)
            nll_sum += float(nll)
            tokens += self.task.count(tensors)
        self.model.train()
        per_token = nll_sum / max(tokens, 1)
        return {
            "valid_loss": loss_sum / max(tokens, 1),
            "valid_nll": per_token,
            "valid_ppl": math.exp(min(per_token, 50.0)),
        }

    # -- checkpoints -------------------------------------------------------------------------------
    def _model_tensors(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def save(self) -> Path | None:
        """Write a resumable checkpoint (rank 0 only) and prune old ones."""
        if self.rank != 0:
            return None
        trainer_state = {
            **self.run_info,
            **self.state.to_dict(),
            "train_config": self.config.to_dict(),
            "world_size": self.world,
        }
        return run_files.write_checkpoint(
            self.run_dir,
            self.state.step,
            model_tensors=self._model_tensors(),
            optimizer=self.optimizer,
            trainer_state=trainer_state,
            model_json=self.model_json,
            model_text=self.model_text,
            keep_last=self.config.keep_last,
        )

    def save_best(self) -> Path:
        return run_files.write_best(
            self.run_dir,
            model_tensors=self._model_tensors(),
            model_json=self.model_json,
            model_text=self.model_text,
        )

    def resume(self, directory: Path | None = None) -> Path | None:
        """Load the latest checkpoint of ``run_dir`` (or ``directory``); returns it, or None if none exists.

        Every file is checked before anything is loaded (:func:`~qkv.train.run_files.read_resume_point`).
        """
        if self.rank == 0:
            checkpoint.clean_stale(self.run_dir)
        if self.world > 1:
            dist.barrier()
        path = directory or checkpoint.latest_checkpoint(self.run_dir)
        if path is None:
            return None
        point = run_files.read_resume_point(path, self.model.state_dict(), self.optimizer, self.world)
        self.model.load_state_dict(point.model_tensors)
        optimizer_from_safetensors(
            self.optimizer,
            point.optimizer_tensors,
            point.optimizer_meta,
            tensors_file=str(path / checkpoint.OPTIMIZER_FILE),
            meta_file=str(path / checkpoint.TRAINER_STATE_FILE),
        )
        self.state = point.state
        return path

    def _note_signal(self, signum: int) -> None:
        self._signal = signum

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until a stop condition holds; returns where the run ended and why."""
        c = self.config
        start = time.monotonic()
        if self.rank == 0:
            # What a writer killed before left behind, also when no checkpoint was ever committed (a fresh
            # start then): resume() did it already when there was one.
            checkpoint.clean_stale(self.run_dir)
        self.model.train()
        steps_per_epoch = max(1, math.ceil(len(self._epoch_batches(0)) / c.accumulate))
        total = self._decays_to() or (c.max_epochs * steps_per_epoch if c.max_epochs else None)
        bar = self.run_log.progress_bar(total, initial=self.state.step)
        calibration = Calibration(self.state.step) if self._plans_budget() else None
        log: list[dict[str, Any]] = []
        last_saved: Path | None = None
        best = checkpoint.recover(self.run_dir / run_files.BEST_DIR)  # restored if a writer was killed
        best_dir: Path | None = best if best.is_dir() else None
        window_tokens, window_loss, window_nll, window_start = 0, 0.0, 0.0, time.monotonic()
        stopped = self._finished_reason()  # a resumed run that had already ended trains no further step
        if stopped and self.rank == 0:
            last_saved = checkpoint.latest_checkpoint(self.run_dir)
        with catching_signals(lambda: self._signal, self._note_signal):
            while not stopped:
                batches = self._epoch_batches(self.state.epoch)
                while self.state.batch_in_epoch < len(batches) and not stopped:
                    group = batches[self.state.batch_in_epoch : self.state.batch_in_epoch + c.accumulate]
                    loss_sum, nll_sum, tokens, taken = self._train_step(group)
                    self.state.batch_in_epoch += len(group)
                    if not taken:
                        self.state.skipped_steps += 1
                        if self.state.skipped_steps > c.max_bad_steps:
                            raise NonFiniteLoss(
                                f"non-finite loss at step {self.state.step + 1}"
                                + (f" (last checkpoint: {last_saved})" if last_saved else "")
                                + "; lower the learning rate, use fp32, or raise --max-bad-steps to skip such steps"
                            )
                        continue
                    self.state.step += 1
                    self.state.tokens += tokens
                    window_tokens += tokens
                    window_loss += loss_sum
                    window_nll += nll_sum
                    bar.update(1)
                    if calibration is not None:
                        seconds_per_step = calibration.step_done(self.state.step, time.monotonic())
                        if seconds_per_step is not None:
                            self._plan_budget(seconds_per_step, start)
                            calibration = None
                            bar.total = self._decays_to()
                            bar.refresh()
                    if self.state.step % c.log_every == 0:
                        elapsed = max(time.monotonic() - window_start, 1e-9)
                        record = {
                            "step": self.state.step,
                            "epoch": self.state.epoch,
                            "loss": window_loss / max(window_tokens, 1),
                            "nll": window_nll / max(window_tokens, 1),
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "tokens_per_s": window_tokens / elapsed,
                            "elapsed_s": time.monotonic() - start,
                        }
                        self.run_log.training(record, bar)
                        log.append(record)
                        window_tokens, window_loss, window_nll, window_start = 0, 0.0, 0.0, time.monotonic()
                    epoch_done = self.state.batch_in_epoch >= len(batches)
                    stopped = self._stop_reason(start, epoch_done)
                    final = bool(stopped) and stopped != "signal"
                    if self.state.step % c.valid_every == 0 or final:
                        if self._validate_and_track(log):
                            best_dir = self.run_dir / "best"
                        stopped = stopped or self._patience_reason()
                    if self.state.step % c.save_every == 0 or stopped:
                        last_saved = self.save() or last_saved
                if self.state.batch_in_epoch >= len(batches):
                    self.state.epoch += 1
                    self.state.batch_in_epoch = 0
        bar.close()
        if stopped == "signal" and self._signal is not None:
            raise TrainingInterrupted(self._signal, self.state.step, last_saved)
        return TrainResult(self.state, self.run_dir, last_saved, best_dir, stopped, log)

    def _finished_reason(self) -> str:
        """Why the run is over before its next step (resumed after its last one), or "" if it is not.

        A pure function of the state, so every rank agrees without communicating.
        """
        c = self.config
        if c.max_steps is not None and self.state.step >= c.max_steps:
            return "max_steps"
        if self._plan_done():
            return "max_minutes"
        if c.max_epochs is not None:
            epoch_done = self.state.batch_in_epoch >= len(self._epoch_batches(self.state.epoch))
            if self.state.epoch + int(epoch_done) >= c.max_epochs:
                return "max_epochs"
        return ""

    def _stop_reason(self, start: float, epoch_done: bool) -> str:
        c = self.config
        reasons = [
            self._signal is not None,
            c.max_steps is not None and self.state.step >= c.max_steps,
            (c.max_minutes is not None and (time.monotonic() - start) / 60 >= c.max_minutes)
            or self._plan_done(),
            epoch_done and c.max_epochs is not None and self.state.epoch + 1 >= c.max_epochs,
        ]
        # All ranks must agree to stop at the same step (a signal or the clock may reach them apart).
        flags = self._reduce([float(r) for r in reasons])
        if flags[0]:
            if self._signal is None:
                self._signal = signal.SIGTERM
            return "signal"
        if flags[1]:
            return "max_steps"
        if flags[2]:
            return "max_minutes"
        if flags[3]:
            return "max_epochs"
        return ""

    def _validate_and_track(self, log: list[dict[str, Any]]) -> bool:
        """Validate (rank 0), run the hooks, save the best model; True if this one is the best so far."""
        improved = False
        if self.rank == 0 and self.valid_data:
            metrics: dict[str, Any] = {"step": self.state.step, **self.validate()}
            for hook in self.hooks:
                self.model.eval()
                metrics.update(hook(self.model, self.state.step))
                self.model.train()
            improved = self._is_best(metrics)
            if improved:
                self.state.evals_without_improvement = 0
                self.save_best()
            else:
                self.state.evals_without_improvement += 1
            self.state.history.append(metrics)
            self.run_log.validation(metrics)  # the files, and a line on the console
            log.append(metrics)
        if self.world > 1:
            # Rank 0's count, given to every rank: the others contribute 0 to the sum (their own copies
            # hold the count of the last validation, which summed in would inflate it).
            mine = self.state.evals_without_improvement if self.rank == 0 else 0
            (count,) = self._reduce([float(mine)])
            self.state.evals_without_improvement = int(count)
        return improved

    def _is_best(self, metrics: dict[str, Any]) -> bool:
        """Whether this validation is the best so far by ``config.best_by``; records it if so."""
        key = self.config.best_by
        if key not in metrics:
            raise ValueError(
                f"this run picks its best model by {key}, which no validation hook reported "
                f"(got {sorted(metrics)}); for valid_bleu pass qkv train --valid-bleu N"
            )
        value, best = float(metrics[key]), getattr(self.state, f"best_{key}")
        higher_is_better = BEST_BY[key] == "higher"
        improved = best is None or (value > best if higher_is_better else value < best)
        if improved:
            setattr(self.state, f"best_{key}", value)  # TrainerState.best_valid_nll / best_valid_bleu
        return improved

    def _patience_reason(self) -> str:
        p = self.config.patience
        if p is not None and self.state.evals_without_improvement >= p:
            return "early_stopping"
        return ""
