"""The training loop. It knows nothing about any method (see :mod:`synthmed.models.base`).

It handles: device and seeding, mixed precision on GPUs, EMA, a reproducible data
order (a fresh permutation per epoch from the seed, so a resumed run sees the same
batches), periodic validation (PSNR/SSIM on validation slices), ``best.pt`` and
``last.pt`` checkpoints written atomically, resume, Ctrl-C / SIGTERM saving a
checkpoint before exiting, a CSV log (plus TensorBoard when installed), a progress
bar with the losses and ETA, and a PNG grid of source / prediction / target.

Under ``torchrun`` (see :mod:`synthmed.runtime.distributed`) every process runs this loop on its own
share of each global batch (``batch_size`` per process, so the global batch is ``batch_size x
processes``); rank 0 alone validates and writes checkpoints, logs and samples; logged losses are the
means over the ranks; a stop signal seen by any rank stops all of them after the same step.
"""

from __future__ import annotations

import csv
import logging
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from synthmed.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from synthmed.engine.ema import EMA
from synthmed.engine.run_folder import RunFolder
from synthmed.errors import SynthmedError
from synthmed.metrics import psnr, ssim
from synthmed.models.base import SynthesisModel
from synthmed.nn.patches import padded_to_multiple
from synthmed.runtime import distributed
from synthmed.runtime.devices import pick_device, seed_everything, set_precision

log = logging.getLogger(__name__)


class TrainingInterrupted(SynthmedError):
    """Raised after a checkpoint was saved on Ctrl-C or SIGTERM; exits 128 + the signal's number (130 for
    Ctrl-C, 143 for SIGTERM), as a shell reports a process a signal ended, so schedulers see which it was."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.exit_code = 128 + (signal.SIGTERM if signal_name == "SIGTERM" else signal.SIGINT)


@dataclass
class TrainSettings:
    steps: int
    batch_size: int
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # see synthmed.runtime.devices.autocast_dtype: auto, bf16, fp16 (with a grad scaler) or off
    channels_last: bool = False  # convolutions in NHWC memory layout (faster with tensor cores)
    compile: bool = False  # torch.compile each network of the model (in place: checkpoints keep their keys)
    num_workers: int = 0
    log_every: int = 25
    val_every: int = 250
    checkpoint_every: int = 250
    sample_every: int = 250
    max_val_slices: int = 64
    progress: bool = True
    max_minutes: float | None = (
        None  # wall-clock budget of this fit (a benchmark's equal-time budget); None: steps only
    )


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This rank's batches of one epoch.

    The global batches (``batch_size x world_size`` indices each) come from a permutation drawn from
    (seed, epoch), the last partial one dropped; rank r takes the r-th ``batch_size`` of each. So with the
    same seed, 2 processes at batch b see exactly the slices one process sees at batch 2b."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    size = batch_size * world_size
    return [order[i + rank * batch_size : i + (rank + 1) * batch_size] for i in range(0, n - size + 1, size)]


class Trainer:
    def __init__(
        self,
        model: SynthesisModel,
        train_set: Dataset,
        val_set: Dataset | None,
        run_dir: str | Path,
        settings: TrainSettings,
        run_info: dict[str, Any],
    ):
        self.model = model
        self.train_set = train_set
        self.val_set = val_set
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir)
        self.settings = settings
        self.run_info = run_info
        self.dist = distributed.context()
        self.device = pick_device(settings.device)
        if self.dist.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if len(train_set) < self.dist.world_size:
            raise SynthmedError(
                f"{len(train_set)} training slices cannot be shared by {self.dist.world_size} processes"
            )
        self.batch_size = max(1, min(settings.batch_size, len(train_set) // self.dist.world_size))
        self.step = 0
        self.best = {"metric": "psnr", "value": -math.inf, "step": 0}
        self.ema: EMA | None = None
        self._stop_signal: str | None = None
        self._time_up = False  # the max_minutes budget ran out: this step is treated as the last one
        self._log_fields: list[str] | None = None
        self._tensorboard = None
        self._started = 0.0  # set when fit() starts; log.csv's elapsed_s counts from there

    # --- set-up -------------------------------------------------------------------
    def _prepare(self) -> None:
        seed_everything(self.settings.seed)
        self.model.to(self.device)
        if self.dist.world_size > 1:
            distributed.broadcast_state(self.model)  # identical start on every rank
            # Own noise per rank (rank 0 keeps the single-process stream).
            seed_everything(self.settings.seed + 1_000_003 * self.dist.rank)
        set_precision(self.model, self.settings.amp, self.device)
        if self.settings.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.settings.compile:
            compiled, skipped = [], []
            for name, child in self.model.named_children():
                if not any(True for _ in child.parameters()):
                    continue
                if name in self.model.uncompiled_modules:
                    skipped.append(name)
                    continue
                child.compile()  # nn.Module.compile: in place, so state_dict keys and EMA references stay
                compiled.append(name)
            log.info(
                "torch.compile: %s (the first steps are slow while it compiles)%s",
                ", ".join(compiled),
                f"; not {', '.join(skipped)} (differentiated twice)" if skipped else "",
            )
        decay = float(getattr(self.model.config, "ema_decay", 0.0) or 0.0)
        if decay > 0 and self.model.ema_modules:
            self.ema = EMA(self.model, self.model.ema_modules, decay)
        self.folder.checkpoints.mkdir(parents=True, exist_ok=True)
        self.folder.samples.mkdir(exist_ok=True)

    def _checkpoint_payload(self) -> dict[str, Any]:
        return {
            "model": self.run_info["model"],
            "preset": self.run_info.get("preset"),
            "config": self.model.config_dict(),
            "step": self.step,
            "state": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizers": {k: v.state_dict() for k, v in self.model.optimizers().items()},
            "grad_scaler": self.model.grad_scaler.state_dict() if self.model.grad_scaler else None,
            "schedulers": {k: v.state_dict() for k, v in self.model.schedulers().items()},
            "rng": rng_state(),
            "best": dict(self.best),
            "batch_size": self.batch_size,
            "world_size": self.dist.world_size,
            "seed": self.settings.seed,
            "torch_version": str(torch.__version__),
            "plan_digest": self.run_info.get("plan_digest"),
        }

    def save(self, name: str = "last.pt") -> Path:
        """Write a checkpoint (rank 0 only; see :meth:`save_last` for the one every rank takes part in)."""
        path = self.folder.checkpoint(name)
        if self.dist.is_main:
            save_checkpoint(path, self._checkpoint_payload())
        return path

    def save_last(self) -> Path:
        """``last.pt`` with every rank's RNG state (each rank resumes its own noise stream); all ranks call it."""
        rng_ranks = distributed.gather_objects(rng_state())
        path = self.folder.checkpoint("last")
        if self.dist.is_main:
            payload = self._checkpoint_payload()
            if self.dist.world_size > 1:
                payload["rng_ranks"] = rng_ranks
            save_checkpoint(path, payload)
        return path

    def resume(self) -> None:
        path = self.folder.checkpoint("last")
        record = load_checkpoint(path, map_location=self.device)
        if self.dist.is_main:  # temporary files of a write cut short by a kill (the checkpoints themselves are intact)
            for stale in self.folder.checkpoints.glob(".*.pt.*.tmp"):
                stale.unlink(missing_ok=True)
        missing = [k for k in ("model", "config", "step", "state", "optimizers", "rng", "best") if k not in record]
        if missing:
            raise SynthmedError(
                f"{path}: checkpoint lacks {', '.join(missing)}; it cannot be resumed (start a new --out)"
            )
        # The step budget may grow on resume (train longer); everything else must match.
        saved = {k: v for k, v in record["config"].items() if k != "steps"}
        wanted = {k: v for k, v in self.model.config_dict().items() if k != "steps"}
        if record["model"] != self.run_info["model"] or saved != wanted:
            changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
            raise SynthmedError(
                f"{path}: this run was trained with model {record['model']} and a different configuration "
                f"({', '.join(changed) or 'model name'}); resume with the same settings or choose another --out"
            )
        if (
            record.get("plan_digest")
            and self.run_info.get("plan_digest")
            and record["plan_digest"] != self.run_info["plan_digest"]
        ):
            raise SynthmedError(
                f"{path}: the prepared data changed since this run started (another plan.json); "
                "train a new run on it (choose another --out)"
            )
        if record.get("batch_size") != self.batch_size or record.get("seed") != self.settings.seed:
            raise SynthmedError(f"{path}: batch size or seed differ from the saved run; resume with the same settings")
        saved_world = int(record.get("world_size", 1))
        if saved_world != self.dist.world_size:
            raise SynthmedError(
                f"{path}: this run was trained with {saved_world} process(es), not {self.dist.world_size}; resume it with "
                f"the same number (torchrun --nproc_per_node {saved_world}), or its data order and noise would not continue"
            )
        self.model.load_state_dict(record["state"])
        for name, optimizer in self.model.optimizers().items():
            optimizer.load_state_dict(record["optimizers"][name])
        for name, scheduler in self.model.schedulers().items():
            scheduler.load_state_dict(record["schedulers"][name])
        if self.ema and record.get("ema"):
            self.ema.load_state_dict(record["ema"])
        if self.model.grad_scaler is not None and record.get("grad_scaler"):
            self.model.grad_scaler.load_state_dict(record["grad_scaler"])
        set_rng_state(record["rng_ranks"][self.dist.rank] if self.dist.world_size > 1 else record["rng"])
        self.step = int(record["step"])
        self.best = dict(record["best"])
        log.info("resumed from %s at step %d", path, self.step)

    # --- loop ---------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        self._prepare()
        if resume:
            self.resume()
        steps = self.settings.steps
        if self.step >= steps:
            log.info("run already at step %d of %d; nothing to train", self.step, steps)
            return self.summary(0.0)
        previous_handlers = self._install_signals()
        start = self._started = time.perf_counter()
        first_step = self.step
        bar = tqdm(
            total=steps,
            initial=self.step,
            desc=f"train {self.run_info['model']}",
            unit="step",
            disable=not (self.settings.progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        try:
            self._loop(bar)
        except KeyboardInterrupt:
            self._stop_signal = "Ctrl-C"
        finally:
            bar.close()
            self._restore_signals(previous_handlers)
            if self._tensorboard:
                self._tensorboard.close()
        if self._stop_signal:
            path = self.save_last()
            raise TrainingInterrupted(
                f"{self._stop_signal}: stopped at step {self.step}; checkpoint saved to {path}; continue with --resume",
                self._stop_signal,
            )
        self._check_ranks_in_sync()
        summary = self.summary(time.perf_counter() - start, self.step - first_step)
        if self._time_up:
            summary["stopped"] = f"time budget of {self.settings.max_minutes:g} min reached at step {self.step}"
            log.info(summary["stopped"])
        return summary

    def _check_ranks_in_sync(self) -> None:
        """Every rank must hold the same weights; a model that steps an optimiser without
        ``step_optimizer`` (so without averaged gradients) would let them drift apart."""
        if self.dist.world_size == 1:
            return
        sums = distributed.gather_objects(distributed.parameters_checksum(self.model))
        if max(sums) - min(sums) > 1e-9 * max(1.0, abs(sums[0])):
            raise SynthmedError(
                f"the {self.dist.world_size} training processes hold different weights after step {self.step} "
                f"(checksums {sums}); {type(self.model).__name__} must step its optimisers with self.step_optimizer()"
            )

    def _loop(self, bar) -> None:
        n = len(self.train_set)
        rank, world = self.dist.rank, self.dist.world_size
        per_epoch = max(n // (self.batch_size * world), 1)
        model = self.model
        while self.step < self.settings.steps:
            epoch, offset = divmod(self.step, per_epoch)
            if hasattr(self.train_set, "set_epoch"):
                self.train_set.set_epoch(epoch)
            batches = epoch_batches(n, self.batch_size, self.settings.seed, epoch, rank, world)[offset:]
            # Its own generator: creating a loader must not consume the global RNG (exact resume).
            loader = DataLoader(
                self.train_set,
                batch_sampler=batches,
                num_workers=self.settings.num_workers,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(self.settings.seed + epoch),
            )
            for batch in loader:
                model.train()
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                losses = model.training_step(batch, self.step)
                if model.grad_scaler is not None:
                    model.grad_scaler.update()  # once per step, after every optimiser of the step
                if world > 1:
                    distributed.broadcast_state(model, buffers_only=True)  # e.g. batch-norm statistics, as DDP does
                if self.ema:
                    self.ema.update(self.step)
                self.step += 1
                bar.update(1)
                budget = self.settings.max_minutes
                self._time_up = budget is not None and time.perf_counter() - self._started >= 60 * budget
                if world > 1:
                    if self.step == 1:
                        self._check_ranks_in_sync()
                    if distributed.any_rank(self._stop_signal is not None):
                        self._stop_signal = self._stop_signal or "SIGTERM"
                    if budget is not None:  # every rank must stop at the same step
                        self._time_up = distributed.any_rank(self._time_up)
                self._periodic(losses, bar, epoch)
                if self._stop_signal or self._time_up or self.step >= self.settings.steps:
                    return

    def _periodic(self, losses: dict[str, Any], bar, epoch: int) -> None:
        s, step = self.settings, self.step
        last = step == s.steps or self._time_up
        row: dict[str, Any] | None = None
        if step % s.log_every == 0 or last or step == 1:
            values = distributed.mean_over_ranks({k: float(v) for k, v in losses.items()})
            bar.set_postfix({k: f"{v:.3g}" for k, v in list(values.items())[:3]})
            if not all(math.isfinite(v) for v in values.values()):
                raise SynthmedError(
                    f"training diverged at step {step} (losses {values}); the last good checkpoint is kept; "
                    "start a new --out with a lower --set lr=..."
                )
            row = {"step": step, "epoch": epoch, "elapsed_s": round(time.perf_counter() - self._started, 2), **values}
        if self.val_set is not None and self.dist.is_main and (step % s.val_every == 0 or last):
            metrics = self.validate()
            row = {**(row or {"step": step, "epoch": epoch}), **{f"val_{k}": v for k, v in metrics.items()}}
            if metrics["psnr"] > self.best["value"]:
                self.best = {"metric": "psnr", "value": metrics["psnr"], "step": step}
                self.save("best.pt")
        if self.dist.is_main and (step % s.sample_every == 0 or last):
            self.write_samples()
        if step % s.checkpoint_every == 0 or last:
            self.save_last()
        if row is not None and self.dist.is_main:
            self._log(row)

    # --- validation, samples, logs --------------------------------------------------
    def _val_batches(self):
        n = len(self.val_set)
        count = min(n, self.settings.max_val_slices)
        picks = np.unique(np.linspace(0, n - 1, count).round().astype(int)).tolist()
        for i in range(0, len(picks), self.batch_size):
            items = [self.val_set[j] for j in picks[i : i + self.batch_size]]
            yield {k: torch.stack([item[k] for item in items]).to(self.device) for k in items[0]}

    def predict(self, source: torch.Tensor) -> torch.Tensor:
        """Validation translation of whole slices, padded to the sizes the networks take (a model trained on
        patches of native-resolution slices sees whole slices here, as in ``translate``)."""
        self.model.eval()

        def run(images: torch.Tensor) -> torch.Tensor:
            return padded_to_multiple(self.model.validation_translate, images, self.model.size_multiple)

        if self.ema:
            with self.ema.applied():
                return run(source)
        return run(source)

    def validate(self) -> dict[str, float]:
        """Mean PSNR/SSIM over validation slices, in the normalised [-1, 1] range, inside the mask."""
        predictions, targets, masks = [], [], []
        for batch in self._val_batches():
            predictions.append(self.predict(batch["source"]).float().cpu())
            targets.append(batch["target"].cpu())
            masks.append(batch["mask"].cpu())
        pred = torch.cat(predictions)[:, 0].permute(1, 2, 0).numpy()
        ref = torch.cat(targets)[:, 0].permute(1, 2, 0).numpy()
        mask = torch.cat(masks)[:, 0].permute(1, 2, 0).numpy() > 0.5
        return {"psnr": psnr(pred, ref, mask, data_range=2.0), "ssim": ssim(pred, ref, mask, data_range=2.0)}

    def write_samples(self, count: int = 4) -> Path | None:
        if self.model.task == "generate":
            return self.write_generated_samples(count)
        if self.val_set is None:
            return None
        n = len(self.val_set)
        picks = np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))
        items = [self.val_set[int(j)] for j in picks]
        source = torch.stack([item["source"] for item in items]).to(self.device)
        prediction = self.predict(source).float().cpu()
        rows = [self.model.centre_slice(source).cpu(), prediction] + (
            [torch.stack([item["target"] for item in items])] if "target" in items[0] else []
        )
        return self._save_grid(rows)

    def write_generated_samples(self, count: int = 4) -> Path:
        """A generator's preview (fixed noise, so grids of successive steps compare): images, masks below them."""
        self.model.eval()
        generator = torch.Generator(device=self.device).manual_seed(self.settings.seed)
        if self.ema:
            with self.ema.applied():
                out = self.model.preview(count, generator)
        else:
            out = self.model.preview(count, generator)
        rows = [out["image"].float().cpu()] + ([out["mask"].float().cpu() * 2 - 1] if "mask" in out else [])
        return self._save_grid(rows)

    def _save_grid(self, rows: list[torch.Tensor]) -> Path:
        grid = torch.cat([torch.cat(list(row[:, 0]), dim=1) for row in rows], dim=0)
        pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        path = self.folder.samples / f"step_{self.step:07d}.png"
        Image.fromarray(pixels).save(path)
        return path

    def _log(self, row: dict[str, Any]) -> None:
        path = self.folder.log_csv
        if self._log_fields is None:
            if path.exists() and path.stat().st_size:
                with path.open() as stream:
                    self._log_fields = next(csv.reader(stream))
            else:
                losses = [k for k in row if k not in ("step", "epoch", "elapsed_s") and not k.startswith("val_")]
                self._log_fields = ["step", "epoch", "elapsed_s", *losses, "val_psnr", "val_ssim"]
                with path.open("w", newline="") as stream:
                    csv.writer(stream).writerow(self._log_fields)
        with path.open("a", newline="") as stream:
            csv.DictWriter(stream, fieldnames=self._log_fields, extrasaction="ignore").writerow(row)
        writer = self._tensorboard_writer()
        if writer is not None:
            for key, value in row.items():
                if key not in ("step", "epoch"):
                    writer.add_scalar(key, value, row["step"])

    def _tensorboard_writer(self):
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tensorboard = False
            else:
                self._tensorboard = SummaryWriter(str(self.folder.tensorboard))
        return self._tensorboard or None

    # --- signals ------------------------------------------------------------------
    def _install_signals(self) -> dict:
        """Ctrl-C (SIGINT) and SIGTERM set a flag; the loop saves and stops after the current step,
        so a checkpoint never holds half an update."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum, frame):
            self._stop_signal = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"

        return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _restore_signals(self, previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def summary(self, seconds: float, trained: int = 0) -> dict[str, Any]:
        return {
            "steps": self.step,
            "trained_steps": trained,
            "seconds": round(seconds, 2),
            "best": self.best,
            "device": str(self.device),
            "autocast": str(getattr(self.model, "amp_dtype", None) or "off"),
            "processes": self.dist.world_size,
            "settings": asdict(self.settings),
        }
