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
import shutil
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
    # >1: the member trains data-parallel (DDP) over this many Ray Train workers
    workers_per_member: int = 1
    # "linear": the learning rate decays to 0 over the member's steps; "constant"
    lr_schedule: str = "linear"
    # share of the steps whose learning rate ramps up linearly first
    warmup: float = 0.0
    # resources of each Ray Train worker (the data-parallel path)
    worker_cpus: float = 1.0
    worker_gpus: float = 0.0
    max_failures: int = 3
    # the run dir: the member's records (spec.json, summary.json) name its files relative to it
    run_dir: str | None = None


def build_member_run(spec: MemberSpec, settings: TrainSettings, rows: list[dict], device):
    """The member's training state (model with the LP head, optimizer, data order)."""
    from warm_ray.data import check_train_split
    from warm_ray.models import load_state_dict, load_tokenizer, resolve_dtype
    from warm_ray.reward import MemberTraining

    check_train_split(rows, settings.data_dir)
    head = load_state_dict(settings.head_path) if settings.head_path else None
    device = torch.device(device)
    tokenizer = load_tokenizer(spec.init_dir)
    run = MemberTraining(
        rows, tokenizer, spec.init_dir, head, lr=spec.lr, dropout=spec.dropout, seed=spec.seed,
        epochs=settings.epochs, batch_size=settings.batch_size, max_length=settings.max_length,
        weight_decay=settings.weight_decay, lr_schedule=settings.lr_schedule, warmup=settings.warmup, device=device,
        dtype=resolve_dtype(settings.dtype, device),
    )
    return run, tokenizer


def save_checkpoint(run, member_dir: Path) -> None:
    """``ckpt/`` is the newest checkpoint and ``ckpt.prev/`` the one before it: an intact copy to
    fall back on when the newest does not load."""
    ckpt, prev = member_dir / "ckpt", member_dir / "ckpt.prev"
    if ckpt.exists():
        shutil.rmtree(prev, ignore_errors=True)
        os.replace(ckpt, prev)
    run.save(ckpt)


def restore_checkpoint(run, member_dir: Path, log: logging.Logger) -> int:
    """Restore the newest readable checkpoint of a member; the step it restored (0: none).

    A checkpoint whose weights or optimizer state do not load is named in the log and skipped:
    the member retrains from its last readable state (the previous checkpoint, or the start).
    """
    from warm_ray.rundir import damaged_weights

    damaged = []
    for d in (member_dir / "ckpt", member_dir / "ckpt.prev"):
        if not (d / "trainer_state.json").exists():
            continue
        why = next((f"{d / f}: {w}" for f in ("model.safetensors", "optimizer.safetensors")
                    if (w := damaged_weights(d / f)) is not None), None)
        if why is not None:
            log.warning("checkpoint %s is damaged (%s): trying the one before it", d, why)
            damaged.append(d)
            continue
        run.restore(d)
        if damaged:
            log.warning("member retrains from its last readable checkpoint, %s (step %d)", d, run.step)
        return run.step
    if damaged:
        log.warning("no readable checkpoint in %s: the member retrains from the start", member_dir)
    return 0


def _data_parallel_loop(config: dict) -> None:
    """One Ray Train worker of a data-parallel member: DDP over equal shards of the train split.

    Rank 0 writes the same atomic checkpoints as a single-process member (and reports them to
    Ray Train); every rank restores from Ray Train's checkpoint after a worker failure, or
    from the member's own checkpoint when the whole run restarts.
    """
    import ray.train
    import ray.train.torch

    from warm_ray import hide_unused_packages, quiet_transformers
    from warm_ray.data import load_splits
    from warm_ray.models import save_model

    hide_unused_packages()  # before transformers is imported
    quiet_transformers()
    spec, settings = MemberSpec(**config["spec"]), TrainSettings(**config["settings"])
    member_dir = Path(config["member_dir"])
    torch.set_num_threads(settings.num_threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    rows = load_splits(settings.data_dir)["train"]
    per_rank = len(rows) // world  # equal shards: every rank takes the same number of steps
    run, tokenizer = build_member_run(spec, settings, rows[rank::world][:per_rank], ray.train.torch.get_device())
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            run.restore(d)
    else:
        restore_checkpoint(run, member_dir, logging.getLogger(f"warm_ray.member_{spec.index}"))
    resumed_from = run.step
    run.train_model = ray.train.torch.prepare_model(run.model, parallel_strategy="ddp")
    log = logging.getLogger(f"warm_ray.member_{spec.index}")
    while not run.done:
        m = run.train_step()
        if run.step % settings.checkpoint_every == 0 or run.done:
            if rank == 0:
                save_checkpoint(run, member_dir)
                ckpt = ray.train.Checkpoint.from_directory(str(member_dir / "ckpt"))
            ray.train.report({**m, "rank": rank}, checkpoint=ckpt if rank == 0 else None)
        if rank == 0 and run.step % settings.log_every == 0:
            log.info("member %d (DDP x%d) step %d/%d loss %.4f", spec.index, world, run.step, run.total_steps, m["loss"])
    if rank == 0:
        save_model(run.model, member_dir / "final", tokenizer)
        (member_dir / "dp_result.json").write_text(json.dumps({"steps": run.step, "resumed_from": resumed_from,
                                                               "world_size": world}))


class RewardModelTrainer:
    def __init__(self, spec: MemberSpec, settings: TrainSettings, member_dir: str):
        from warm_ray import hide_unused_packages, quiet_transformers
        from warm_ray.data import load_splits

        self.created = time.time()
        hide_unused_packages()  # before transformers is imported
        quiet_transformers()
        torch.set_num_threads(settings.num_threads)
        self.spec, self.settings = spec, settings
        self.dir = Path(member_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = logging.getLogger(f"warm_ray.member_{spec.index}")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        (self.dir / "spec.json").write_text(json.dumps(self._spec_record(), indent=2))
        if settings.workers_per_member > 1:
            self.run = None  # the Ray Train workers hold the model
            return
        rows = load_splits(settings.data_dir)["train"]
        self.run, self.tokenizer = build_member_run(spec, settings, rows, settings.device)
        self.resumed_from = restore_checkpoint(self.run, self.dir, self.log)
        if self.resumed_from:
            self.log.info("member %d resumed from its checkpoint at step %d", spec.index, self.resumed_from)

    def _spec_record(self) -> dict:
        """The spec as the member's records hold it: an init inside the run dir by its path there."""
        from warm_ray.files import portable_paths

        spec = asdict(self.spec)
        return spec if self.settings.run_dir is None else portable_paths(spec, self.settings.run_dir)

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

    def _train_data_parallel(self) -> dict:
        """The member as a Ray Train TorchTrainer (DDP); Ray Train's FailureConfig restarts workers."""
        import ray.train
        from ray.train.torch import TorchTrainer

        s = self.settings
        started = time.time()
        trainer = TorchTrainer(
            _data_parallel_loop,
            train_loop_config={"spec": asdict(self.spec), "settings": asdict(s), "member_dir": str(self.dir)},
            scaling_config=ray.train.ScalingConfig(
                num_workers=s.workers_per_member, use_gpu=s.worker_gpus > 0,
                resources_per_worker={"CPU": s.worker_cpus, **({"GPU": s.worker_gpus} if s.worker_gpus else {})},
            ),
            run_config=ray.train.RunConfig(
                name=f"member_{self.spec.index}", storage_path=str((self.dir / "ray_train").resolve()),
                failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
            ),
        )
        trainer.fit()
        result = json.loads((self.dir / "dp_result.json").read_text())
        summary = {"member": self.spec.index, **result, "steps_this_life": result["steps"] - result["resumed_from"],
                   "created": self.created, "started": started, "finished": time.time(), "pid": os.getpid(),
                   "seconds": round(time.time() - started, 2), "spec": self._spec_record()}
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def train(self) -> dict:
        """Train to the end (or continue a restored run); returns a summary."""
        if self.run is None:
            return self._train_data_parallel()
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
                save_checkpoint(run, self.dir)
            if s.sync_every and run.step % s.sync_every == 0 and not run.done:
                self._sync(final=False)
        save_checkpoint(run, self.dir)
        from warm_ray.models import save_model

        save_model(run.model, self.dir / "final", self.tokenizer)
        seconds = time.perf_counter() - t0
        summary = {"member": self.spec.index, "steps": run.step, "resumed_from": self.resumed_from,
                   "steps_this_life": run.step - start, "seconds": round(seconds, 2), "pid": os.getpid(),
                   "created": self.created, "started": started, "finished": time.time(),
                   "spec": self._spec_record()}
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.log.info("member %d done: %d steps in %.1fs (resumed from %d)", self.spec.index, run.step,
                      seconds, self.resumed_from)
        return summary

    def get_weights(self) -> dict[str, torch.Tensor]:
        if self.run is None:
            from warm_ray.models import load_reward_model

            return load_reward_model(self.dir / "final").state_dict()
        return self.run.weights()

    def pid(self) -> int:
        return os.getpid()
