"""RewardModelTrainer: a Ray actor that fine-tunes one WARM member (the FT of LP-FT).

The training loop lives in ``warm_ray.reward.MemberTraining``; this actor gives it a process,
resources from the config, per-step logs and metrics, atomic checkpoints, and the link to the
parameter server. Restarts are Ray's (``max_restarts`` + ``max_task_retries``): a restarted
actor runs ``__init__`` again, finds the member's last checkpoint and resumes from it, and
Ray re-runs the interrupted ``train`` call.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass
class MemberSpec:
    """One member's hyperparameters: the diversity WARM averages over."""

    index: int
    lr: float
    dropout: float
    seed: int
    init_dir: str


@dataclass
class TrainSettings:
    """What every member shares."""

    data_dir: str
    head_path: str | None
    epochs: int
    batch_size: int
    max_length: int
    weight_decay: float
    checkpoint_every: int
    log_every: int
    sync_every: int
    num_threads: int
    device: str
    dtype: str
    parameter_server: str | None = None  # name of the ParameterServer actor (for sync points)
    namespace: str | None = None


class RewardModelTrainer:
    def __init__(self, spec: MemberSpec, settings: TrainSettings, member_dir: str):
        from warm_ray import quiet_transformers
        from warm_ray.data import load_splits
        from warm_ray.models import load_state_dict, load_tokenizer, resolve_dtype
        from warm_ray.reward import MemberTraining

        self.created = time.time()
        quiet_transformers()
        torch.set_num_threads(settings.num_threads)
        self.spec, self.settings = spec, settings
        self.dir = Path(member_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = logging.getLogger(f"warm_ray.member_{spec.index}")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        (self.dir / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
        rows = load_splits(settings.data_dir)["train"]
        if rows and all(r["corrupted"] for r in rows):
            raise ValueError(f"{settings.data_dir}: every training label is flagged corrupted; nothing clean to learn")
        head = load_state_dict(settings.head_path) if settings.head_path else None
        device = torch.device(settings.device)
        self.tokenizer = load_tokenizer(spec.init_dir)
        self.run = MemberTraining(
            rows, self.tokenizer, spec.init_dir, head, lr=spec.lr, dropout=spec.dropout, seed=spec.seed,
            epochs=settings.epochs, batch_size=settings.batch_size, max_length=settings.max_length,
            weight_decay=settings.weight_decay, device=device, dtype=resolve_dtype(settings.dtype, device),
        )
        self.resumed_from = self.run.step if self.run.restore(self.dir / "ckpt") else 0
        if self.resumed_from:
            self.log.info("member %d resumed from its checkpoint at step %d", spec.index, self.resumed_from)

    def _metrics(self, record: dict) -> None:
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _sync(self, final: bool) -> None:
        if not self.settings.parameter_server:
            return
        import ray

        ps = ray.get_actor(self.settings.parameter_server, namespace=self.settings.namespace)
        ref = ray.put(self.run.weights())
        ray.get(ps.push.remote(str(self.spec.index), ref, {"step": self.run.step, "final": final}))

    def train(self) -> dict:
        """Train to the end (or continue a restored run); returns weights and a summary."""
        s, run = self.settings, self.run
        t0 = time.perf_counter()
        started = time.time()
        start = run.step
        while not run.done:
            m = run.train_step()
            if run.step % s.log_every == 0 or run.done:
                m.update(member=self.spec.index, pid=os.getpid(), t=round(time.time(), 2))
                self._metrics(m)
                self.log.info("member %d step %d/%d loss %.4f acc %.3f", self.spec.index, run.step,
                              run.total_steps, m["loss"], m["acc"])
            if run.step % s.checkpoint_every == 0 and not run.done:
                run.save(self.dir / "ckpt")
            if s.sync_every and run.step % s.sync_every == 0 and not run.done:
                self._sync(final=False)
        run.save(self.dir / "ckpt")
        from warm_ray.models import save_model

        save_model(run.model, self.dir / "final", self.tokenizer)
        seconds = time.perf_counter() - t0
        summary = {"member": self.spec.index, "steps": run.step, "resumed_from": self.resumed_from,
                   "steps_this_life": run.step - start, "seconds": round(seconds, 2), "pid": os.getpid(),
                   "created": self.created, "started": started, "finished": time.time(),
                   "spec": asdict(self.spec)}
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.log.info("member %d done: %d steps in %.1fs (resumed from %d)", self.spec.index, run.step,
                      seconds, self.resumed_from)
        return summary

    def get_weights(self) -> dict[str, torch.Tensor]:
        return self.run.weights()

    def step(self) -> int:
        return self.run.step

    def pid(self) -> int:
        return os.getpid()
