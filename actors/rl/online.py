"""Online WARM (``rl.online``): the reward's members keep learning from the policy's own samples.

Every ``rl.online.every`` steps of an RL run, while the step scores, learns and syncs:

    the step's samples ──► pairs (two completions of one prompt), up to ``rl.online.pairs``
                       ──► labels from the labeller (the benchmark's gold, or ``study.judge``; never a
                           proxy), a share flipped as the members' own data was (``label_noise``)
                       ──► every refreshed member's ``OnlineMemberTrainer`` (a Ray actor kept through the
                           run) takes ``steps`` Adam steps from its last published weights on the new pairs
                           mixed with its own training pairs, and stages the result on the parameter server
                       ──► ``ParameterServer.publish``: all members of the refresh, one new average, or
                           nothing (a member that died or diverged leaves the served version as it was)
                       ──► the scorer pulls the new average (``load_weights``, tagged with the version)
                           and the reward is standardised again on the same SFT samples

The new version scores from the next step on (the step after the refresh's), so which version scored
a step is a function of the step alone: a resumed run equals an unbroken one. Versions are kept as
parameter-server snapshots (``online/v<N>/``) beside the run; the checkpoint records the version it
was taken under, and a resumed run goes back to it (later snapshots are redone).

What is refreshed: every member of a WARM reward (its average scores), or the one member of a
"single" reward (the same label budget). The disagreement monitor keeps scoring with the members as
`warm-ray warm` trained them (its spread is compared with their SFT spread); its WARM gap, in a WARM
run, is the refreshed average's distance to their mean.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import ray
import torch

from actors.parameter_server import ParameterServer
from actors.placement import actor_options
from warm_ray import files, rundir
from warm_ray.config import OnlineConfig

log = logging.getLogger("warm_ray.online")

TIMEOUT_S = 600.0


@dataclasses.dataclass(frozen=True)
class Labeller:
    """Who labels the online pairs: ``fn(prompts, completions) -> scores`` (a higher score is preferred),
    known by ``fingerprint``; ``noise``: the share of labels flipped (as the members' own data was)."""

    name: str
    fn: Callable[[list[str], list[str]], list[float]]
    fingerprint: str
    noise: float = 0.0


def label_pairs(prompts: Sequence[str], completions: Sequence[str], scores: Sequence[float], budget: int,
                noise: float, rng: random.Random) -> tuple[list[dict], dict]:
    """(pairs, counts): up to ``budget`` pairs of two completions of one prompt (consecutive samples of each
    prompt, in the order given), chosen = the higher score; a tie or two equal texts is no pair. A share
    ``noise`` of the labels is flipped (``flipped`` marks them, as the members' own data does)."""
    by_prompt: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_prompt.setdefault(p, []).append(i)
    rows, ties = [], 0
    for p, idx in by_prompt.items():
        for a, b in zip(idx[0::2], idx[1::2]):
            if len(rows) >= budget:
                break
            if completions[a] == completions[b] or scores[a] == scores[b]:
                ties += 1
                continue
            hi, lo = (a, b) if scores[a] > scores[b] else (b, a)
            flipped = rng.random() < noise
            if flipped:
                hi, lo = lo, hi
            rows.append({"prompt": p, "chosen": completions[hi], "rejected": completions[lo], "flipped": flipped,
                         "score_margin": float(scores[hi] - scores[lo])})
    return rows, {"labels": len(rows), "flipped": sum(r["flipped"] for r in rows), "ties_skipped": ties}


class OnlineMemberTrainer:
    """One member of the reward, refreshed in place: a Ray actor that holds the member's model, its
    tokenizer and its own training pairs, and takes a few Adam steps per refresh."""

    def __init__(self, member_id: str, member_dir: str, data_dir: str, max_length: int, device: str = "cpu",
                 dtype: str = "auto", num_threads: int = 1):
        from warm_ray import hide_unused_packages, quiet_transformers

        hide_unused_packages()
        quiet_transformers()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        torch.set_num_threads(max(1, num_threads))
        from warm_ray import models as M
        from warm_ray.data import load_splits

        self.member_id, self.max_length = str(member_id), max_length
        self.device = torch.device(device)
        dt = M.resolve_dtype(dtype, self.device)
        self.autocast = dt if dt != torch.float32 else None  # weights stay float32, the forward runs in dt
        self.model = M.load_reward_model(member_dir, device=self.device)
        self.tokenizer = M.load_tokenizer(member_dir)
        self.rows = load_splits(data_dir)["train"]

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def refresh(self, refresh: int, weights: dict[str, torch.Tensor], pairs: list[dict], cfg: dict, seed: int,
                ps) -> dict:
        """``train``, then the result staged on the parameter server ``ps`` for ``refresh``."""
        t0 = time.perf_counter()
        out = self.train(weights, pairs, cfg, seed)
        staged = ray.get(ps.stage.remote(refresh, self.member_id, self.weights(), {"refresh_loss": out["loss_last"]}),
                         timeout=TIMEOUT_S)
        return {**out, "staged": staged, "seconds": round(time.perf_counter() - t0, 3)}

    def train(self, weights: dict[str, torch.Tensor], pairs: list[dict], cfg: dict, seed: int) -> dict:
        """From ``weights`` (the member as last published), ``cfg["steps"]`` steps on batches of this
        refresh's ``pairs`` and the member's own training pairs (share ``cfg["mix"]``), a fresh Adam at
        ``cfg["lr"]``. A function of its arguments; the model holds the result."""
        from warm_ray.models import adam
        from warm_ray.reward import bradley_terry_loss, pair_rewards

        self.model.load_state_dict(weights)
        torch.manual_seed(seed)  # dropout masks
        gen = torch.Generator().manual_seed(seed)
        opt = adam(self.model.parameters(), lr=cfg["lr"])
        n_old = round(cfg["batch_size"] * cfg["mix"])
        n_new = cfg["batch_size"] - n_old
        losses = []
        for _ in range(cfg["steps"]):
            batch = [pairs[int(i)] for i in torch.randint(len(pairs), (n_new,), generator=gen)] + \
                    [self.rows[int(i)] for i in torch.randint(len(self.rows), (n_old,), generator=gen)]
            self.model.train()
            with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                                enabled=self.autocast is not None):
                r_chosen, r_rejected = pair_rewards(self.model, self.tokenizer, batch, self.max_length, self.device)
                loss = bradley_terry_loss(r_chosen.float(), r_rejected.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
        self.model.eval()
        with torch.no_grad():
            r_chosen, r_rejected = pair_rewards(self.model, self.tokenizer, pairs, self.max_length, self.device)
        return {"member": self.member_id, "loss_first": losses[0], "loss_last": losses[-1],
                "new_pair_accuracy": float((r_chosen > r_rejected).float().mean())}

    def pid(self) -> int:
        import os

        return os.getpid()


def refreshed_members(warm_dir: Path, mode: str, single_member: int) -> dict[str, Path]:
    """{member id: its final/ dir}: every member for a WARM reward, the one member of a "single" reward."""
    from actors.rl.reward import best_member
    from warm_ray.reward import member_final_dirs

    dirs = {d.parent.name.removeprefix("member_"): d for d in member_final_dirs(warm_dir)}
    if mode == "single":
        member = str(single_member if single_member >= 0 else best_member(warm_dir))
        return {member: dirs[member]}
    return dirs


class OnlineRefresher:
    """The refreshes of one RL run: a parameter server of the reward's members, one trainer actor per
    member (started again at the next trigger if one died), the versions published so far.

    ``scorer``: the run's scorer, whose scoring model pulls each version; ``refit()``: standardise the
    run's reward again after a pull (on the same SFT samples). ``on_submit(refresher, step)``: called
    right after a refresh's training is sent (tests kill a trainer there)."""

    def __init__(self, cfg: OnlineConfig, seed: int, members: dict[str, Path], data_dir: str, max_length: int,
                 labeller: Labeller, scorer, refit: Callable[[], None], out_dir: Path,
                 on_submit: Callable | None = None):
        self.cfg, self.seed, self.members = cfg, seed, {str(k): Path(v) for k, v in members.items()}
        self.data_dir, self.max_length, self.labeller = data_dir, max_length, labeller
        self.scorer, self.refit, self.on_submit = scorer, refit, on_submit
        self.dir = Path(out_dir) / "online"
        self.ps = None
        self.trainers: dict[str, ray.actor.ActorHandle] = {}
        self.version = 0
        self.versions: list[dict] = []
        self.refreshes = 0  # refreshes sent (published or not): each stages under its own id
        self.pending: dict | None = None
        self.trainers_started = 0

    # -- set-up and resume --------------------------------------------------------------------

    def start(self, version: int = 0) -> None:
        """Start the parameter server at ``version`` (0: the members as `warm-ray warm` trained them; a
        resumed run's checkpoint names its version) and the trainers; the scorer serves that version."""
        if version == 0:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        record = rundir.read_json(self.dir / "versions.json") if version else None
        self.versions = [v for v in (record or {}).get("versions", []) if v["version"] <= version]
        self.refreshes = (record or {}).get("refreshes", 0)
        for stale in self.dir.glob("v*"):
            if stale.name[1:].isdigit() and int(stale.name[1:]) > version:
                shutil.rmtree(stale, ignore_errors=True)
        self.ps = ray.remote(ParameterServer).options(num_cpus=0).remote(str(self.dir / "ps"))
        self._ensure_trainers()
        if version == 0:
            ray.get([self.ps.push.remote(i, t.weights.remote(), {"version": 0}) for i, t in self.trainers.items()],
                    timeout=TIMEOUT_S)
            ray.get(self.ps.snapshot.remote(str(self.dir / "v0")), timeout=TIMEOUT_S)
        else:
            ray.get(self.ps.load_snapshot.remote(str(self.dir / f"v{version}")), timeout=TIMEOUT_S)
            self.version = version
            self._pull()
        self._write()
        log.info("online WARM: %d member(s) refreshed every %d steps (%d labelled pairs each, by %s), serving "
                 "version %d", len(self.members), self.cfg.every, self.cfg.pairs, self.labeller.name, self.version)

    def _ensure_trainers(self) -> None:
        """A trainer for every member that has none (the first time, or after one died)."""
        res = self.cfg.trainer
        actor = ray.remote(OnlineMemberTrainer).options(**actor_options(res), max_restarts=0)
        for member_id, d in self.members.items():
            if member_id not in self.trainers:
                self.trainers[member_id] = actor.remote(member_id, str(d), self.data_dir, self.max_length,
                                                        res.device, res.dtype, res.num_threads)
                self.trainers_started += 1

    # -- a refresh ----------------------------------------------------------------------------

    def due(self, step: int) -> bool:
        return self.cfg.every > 0 and step % self.cfg.every == 0

    def submit(self, step: int, prompts: Sequence[str], completions: Sequence[str]) -> None:
        """Label the step's pairs and send the members' training (it runs while the step goes on)."""
        t0 = time.perf_counter()
        scores = self.labeller.fn(list(prompts), list(completions))
        rng = random.Random(self.seed * 1_000_033 + step)
        pairs, counts = label_pairs(prompts, completions, scores, self.cfg.pairs, self.labeller.noise, rng)
        self.refreshes += 1
        pending = {"step": step, "refresh": self.refreshes, "counts": counts, "pairs": pairs, "t0": t0, "refs": {},
                   "t_label": time.perf_counter() - t0}
        if pairs:
            self._ensure_trainers()
            settings = {k: getattr(self.cfg, k) for k in ("steps", "batch_size", "mix", "lr")}
            pending["refs"] = {
                i: t.refresh.remote(self.refreshes, self.ps.member_weights.remote(i), pairs, settings,
                                    self._seed(step, i), self.ps)
                for i, t in self.trainers.items()}
        self.pending = pending
        if self.on_submit is not None:
            self.on_submit(self, step)

    def _seed(self, step: int, member_id: str) -> int:
        return (self.seed * 1_000_003 + step * 1_009 + (int(member_id) if member_id.isdigit() else 0)) % (2 ** 31)

    def finish(self) -> dict:
        """Wait for the refresh sent this step (if any) and publish it; the step's record fields: the loop's
        wait and what the refresh did ({} when none was sent)."""
        p, self.pending = self.pending, None
        if p is None:
            return {}
        t_wait = time.perf_counter()
        results, failed = {}, {}
        for member_id, ref in p["refs"].items():
            try:
                results[member_id] = ray.get(ref, timeout=TIMEOUT_S)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                failed[member_id] = type(e).__name__
                trainer = self.trainers.pop(member_id, None)  # started again at the next refresh
                if trainer is not None and isinstance(e, ray.exceptions.GetTimeoutError):
                    ray.kill(trainer)
        entry = {"step": p["step"], "refresh": p["refresh"], **p["counts"], "members": results}
        if not p["refs"]:
            entry["outcome"] = "no pairs to label: nothing to refresh"
        elif failed:
            ray.get(self.ps.discard.remote(p["refresh"]), timeout=TIMEOUT_S)
            entry["outcome"] = f"member trainer(s) {sorted(failed)} died ({', '.join(sorted(set(failed.values())))})"
            log.warning("online refresh at step %d: %s; the scorer stays on version %d, the refresh runs again at "
                        "the next trigger with new trainers", p["step"], entry["outcome"], self.version)
        else:
            t_pub = time.perf_counter()
            pub = ray.get(self.ps.publish.remote(p["refresh"], sorted(results)), timeout=TIMEOUT_S)
            if pub["published"]:
                self.version += 1
                ray.get(self.ps.snapshot.remote(str(self.dir / f"v{self.version}")), timeout=TIMEOUT_S)
                t_pull = time.perf_counter()
                self._pull()
                entry["phases"] = {"label": round(p["t_label"], 3),
                                   "train": round(max(r["seconds"] for r in results.values()), 3),
                                   "publish": round(t_pull - t_pub, 3), "pull": round(time.perf_counter() - t_pull, 3)}
                files.atomic_write_text(self.dir / f"v{self.version}" / "pairs.jsonl",
                                        "".join(json.dumps(r) + "\n" for r in p["pairs"]))
                entry["outcome"] = "published"
                entry["version"] = self.version
                self.versions.append({**entry, "seconds": round(time.perf_counter() - p["t0"], 3)})
                log.info("online refresh at step %d: version %d (%d labelled pairs, %d flipped; member loss %s)",
                         p["step"], self.version, entry["labels"], entry["flipped"],
                         ", ".join(f"{r['loss_first']:.3f}→{r['loss_last']:.3f}" for r in results.values()))
            else:
                entry["outcome"] = f"not published: member(s) {pub['missing']} staged nothing (weights not finite)"
                log.warning("online refresh at step %d: %s; the scorer stays on version %d", p["step"],
                            entry["outcome"], self.version)
        wait = time.perf_counter() - t_wait
        self._write()
        return {"t_refresh_wait": wait,
                "refresh": {k: v for k, v in entry.items() if k != "members"}
                | {"seconds": round(time.perf_counter() - p["t0"], 3)}}

    def _pull(self) -> None:
        """The scorer takes the served average as the current version, and the reward is standardised again."""
        self.scorer.load_weights(self.ps.get_weights.remote(), self.version)
        self.refit()

    def _write(self) -> None:
        files.atomic_write_json(self.dir / "versions.json", {
            "version": self.version, "refreshes": self.refreshes, "members": sorted(self.members),
            "labeller": self.labeller.name, "label_noise": self.labeller.noise,
            "settings": dataclasses.asdict(self.cfg), "versions": self.versions})

    def shutdown(self) -> None:
        for t in self.trainers.values():
            ray.kill(t)
        self.trainers = {}
        if self.ps is not None:
            ray.kill(self.ps)
            self.ps = None
