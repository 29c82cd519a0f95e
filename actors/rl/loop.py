"""The RL loop: sample → score → learn → sync, on Ray (WARM Sec. 5.2: REINFORCE against a proxy
RM, judged by a control reward).

One step of ``run_rl``:

    prompts of this step ──► RolloutWorkerGroup.sample      (N RolloutWorker actors, HF or vLLM)
                         ──► proxy reward r(x, y)            (a reward mode, in the driver or a ScorerActor)
                             gold reward                     (logged only, never trained on)
                         ──► PolicyLearner.learn             (a Ray actor: REINFORCE + KL)
                         ──► learner.get_weights → one ray.put → every worker   (sync)
                         ──► every K steps: the M members score a subset of the step's samples
                             (disagreement monitor; alarm when their spread outgrows its SFT value)

``run_rl`` reads top to bottom: open the run dir (reuse a finished run, resume a stopped one),
start the actors and the reward, then each step (``_step``) and its record (``_record``), then the
final policy and the summary (``_summarise``).

Outputs of one run (``out_dir``): ``metrics.jsonl`` (one record per step), ``ckpt/`` (the last
checkpoint, atomic), ``policy/`` (the final policy as a Hugging Face dir with its tokenizer),
``normaliser.json`` (the reward's normalisation and the monitor's SFT reference),
``disagreement.png`` (spread ratio and gold against step and KL), ``summary.json`` and
``config.yaml``. ``resume=True`` continues from ``ckpt/``: the steps logged after that checkpoint
are dropped and redone, so the history has each step once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
import torch

from actors.learner import load_checkpoint, save_checkpoint
from actors.placement import ensure_ray
from actors.rl.evaluate import gold_reward
from actors.rl.metrics import FINAL_WINDOW, append_metrics, final_means, fmt, gold_peak_step, keep_metrics_until
from actors.rl.monitor import RunMonitor, plot_disagreement
from actors.rl.online import OnlineRefresher, refreshed_members
from actors.rl.reward import build_scorer, sft_reference, start_reward
from actors.rl.slot import TIMEOUT_S, RLActors, rollout_options
from actors.rl.spec import RLRun
from actors.rollout import RolloutWorkerGroup
from actors.scorer import close_scorer
from warm_ray import files
from warm_ray import models as M
from warm_ray import rundir
from warm_ray.config import save_config
from warm_ray.ensemble import forward_passes
from warm_ray.gold import gold_rewards
from warm_ray.names import GOLD, reward_label

log = logging.getLogger("warm_ray.rl")

# the entries of a run's summary that name its files: relative to the run dir (``RLRun.run_dir``)
RUN_PATHS = ("policy", "metrics")

# on_step(step, record, group): called after each step is logged and checkpointed. Tests use it
# to kill a rollout worker or to simulate a crash (raise).
StepHook = Callable[[int, dict, RolloutWorkerGroup], None]


def step_prompts(prompts, step: int, k: int, seed: int) -> list[str]:
    """The k prompts of ``step`` (1-based): consecutive slices of one permutation per epoch.

    A function of (seed, step) only, so a resumed run and a second run with the same seed see
    the same prompts at the same step.
    """
    out = []
    for i in range((step - 1) * k, step * k):
        epoch, pos = divmod(i, len(prompts))
        order = list(range(len(prompts)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(prompts[order[pos]])
    return out


def sampling_seed(seed: int, step: int, per_step: int) -> int:
    """Seed of a step's sampling; workers use seed .. seed + per_step - 1, so steps never share one."""
    return seed * 10_000_019 + step * per_step


def policy_card(run: RLRun, final: dict, online: OnlineRefresher | None = None) -> str:
    """The model card of a policy RL wrote: where it started, against what reward, how, and where it ended."""
    cfg, src, source = run.rl, run.policy, run.reward.source

    def where(path) -> str:  # a dir of the run dir by its path there
        return files.shown(path, run.run_dir)

    reward = "the gold reward of the synthetic benchmark (oracle)" if run.reward.name == GOLD else (
        f"reward mode `{run.reward.name}` ({reward_label(run.reward.name)})"
        + ("" if source is None else f" of {where(source.rm_dir or source.warm_dir)}"))
    return M.model_card(
        f"RL policy ({reward_label(run.reward.name)} reward)", "policy",
        "A policy fine-tuned by REINFORCE with a KL penalty (warm-ray).",
        {"Training": [f"- SFT policy: {where(src.sft_dir)}", f"- started from: {where(run.init_dir or src.sft_dir)}",
                      f"- reward: {reward}",
                      f"- prompts: `{src.prompts_from}` ({len(src.prompts['train'])} train)",
                      f"- steps {cfg.steps}, {cfg.prompts_per_step} prompts x {cfg.samples_per_prompt} samples, "
                      f"lr {cfg.lr:g}, KL β {cfg.beta:g} to the {cfg.anchor.upper()} anchor"
                      + (f" (μ {cfg.ema_mu:g})" if cfg.anchor == "ema" else "") + f", seed {cfg.seed}"],
         **({} if online is None else {"Reward versions (online WARM)": [
             "- version 0: the members as `warm-ray warm` trained them"] + [
             f"- version {v['version']}: refreshed at step {v['step']} on {v['labels']} pairs labelled by "
             f"{online.labeller.name} ({v['flipped']} flipped)" for v in online.versions]}),
         "Last steps (mean of the last 5)": [f"- {k}: {fmt(v)}" for k, v in final.items()]},
        M.POLICY_LOAD_SNIPPET)


@dataclass
class _Live:
    """What a run holds while its steps run: the actors, the reward, the records so far."""

    learner: ray.actor.ActorHandle
    group: RolloutWorkerGroup
    score: Callable
    scorer: object | None
    monitor: RunMonitor | None
    records: list[dict]
    start: int
    stopped: dict | None = None  # rl.on_alarm = stop: the alarm's step and the checkpoint step kept
    pending: object = None  # rl.overlap: the next step's samples, drawn while this step scores and learns
    online: OnlineRefresher | None = None  # rl.online: the reward's members refreshed during the run
    submitted: float | None = None
    t_start: float = field(default_factory=time.perf_counter)


def run_rl(run: RLRun, *, resume: bool = False, actors: RLActors | None = None,
           on_step: StepHook | None = None) -> dict:
    """REINFORCE with KL to an anchor against the run's reward; returns the run's summary.

    ``actors``: a slot whose learner and rollout workers the run resets and uses, and leaves running
    for the next run (ended if the run fails: they may be mid-task); without one, the run starts its
    own and ends them. Gold rewards are logged, never trained on.

    The run dir is a unit of the run-dir contract: a run that finished under the same fingerprint
    is reused; a stopped one continues from its checkpoint with ``resume`` (else starts over).
    """
    done, resume = _open(run, resume)
    if done is not None:
        return files.resolved_paths(done, run.run_dir, RUN_PATHS)
    torch.set_num_threads(max(1, run.rl.learner.num_threads))
    ensure_ray()
    t_start = time.perf_counter()
    slot = RLActors() if actors is None else actors
    owned = []  # a scorer built here, closed at the end (with the monitor's WARM RM, in its actor)
    finished = False
    try:
        live = _start(run, slot, resume, owned)
        live.t_start = t_start
        for step in range(live.start + 1, run.rl.steps + 1):
            record = _step(run, live, step)
            stop = _on_alarm(run, live, record)
            _record(run, live, record, checkpoint=not stop)  # never a checkpoint of the step a stop alarms at
            if on_step is not None:
                on_step(step, record, live.group)
            if stop:
                _stop_at_alarm(run, live, step)
                break
        # the final policy as a Hugging Face dir, loadable by anyone (written by the learner)
        final = final_means(live.records, ("proxy_reward", "gold_reward", "kl_sft", "completion_len"))
        ray.get(live.learner.save_policy.remote(str(run.out_dir / "policy"), run.policy.sft_dir,
                                                policy_card(run, final, live.online)), timeout=TIMEOUT_S)
        finished = True
    finally:
        if actors is None or not finished:
            slot.shutdown()
        for scorer in owned:  # scorers built here and the online refresher's actors
            scorer.shutdown() if isinstance(scorer, OnlineRefresher) else close_scorer(scorer)
    return _summarise(run, live)


def _open(run: RLRun, resume: bool) -> tuple[dict | None, bool]:
    """(the finished run's summary, or None; whether to resume): the run-dir contract of ``run_rl``."""
    out, fp = run.out_dir, run.fingerprint()
    done, continued = rundir.open_unit(out, fp, f"rl run {out}", resume=resume)
    if done is not None:
        why = rundir.damaged_weights(out / "policy")
        if why is None:
            _save_record(run)
            return done, False
        # the final policy is rebuilt from the run's last checkpoint (the final step's)
        log.warning("rl run %s: final policy %s is damaged (%s): rebuilding it from the run's checkpoint",
                    out, out / "policy", why)
        rundir.forget(out)
        continued = rundir.start(out, fp, f"rl run {out}", resume=True)
    _save_record(run)
    return None, continued


def _save_record(run: RLRun) -> None:
    if run.config is not None:
        save_config(run.record(), run.out_dir)


def _start(run: RLRun, slot: RLActors, resume: bool, owned: list) -> _Live:
    """Reset the slot's actors, set up the reward (normalised on SFT samples) and the monitor, and
    load the checkpoint when resuming; new actors start while the driver sets up the reward."""
    cfg, reward, src = run.rl, run.reward, run.policy
    prompts = src.prompts["train"]
    slot.start(cfg, src.sft_dir, run.init_dir, rollout_options(cfg, src.sft_dir, prompts))
    fn = gold_reward if reward.name == GOLD and reward.fn is None else reward.fn
    scorer = reward.scorer
    if scorer is None and fn is None:
        scorer = build_scorer(reward.source, cfg, reward.name)
        owned.append(scorer)
    monitor = None if scorer is None else start_reward(reward.source, cfg, scorer, reward.name, src.sft_dir,
                                                       prompts, run.out_dir, run.run_dir)
    if monitor is not None and cfg.alarm_rule and not src.gold:
        log.info("rl.alarm_rule %r was calibrated on the benchmark's runs (`warm-ray study`'s alarm section), not on "
                 "your prompts and reward models: read its alarms as a hint", cfg.alarm_rule)
    learner, group = slot.ready()
    start, records, extra = _resume(run, learner, group, resume)
    online = None
    if cfg.online.every:
        online = _start_online(run, scorer, fn, extra.get("reward_version", 0) if start else 0)
        owned.append(online)
    if cfg.on_alarm == "stop" and start == 0:  # a stop before the first checkpoint keeps the start policy
        save_checkpoint(run.out_dir / "ckpt", ray.get(learner.state.remote(), timeout=TIMEOUT_S),
                        {"reward": reward.name, "policy_version": 0})
    if monitor is not None:
        monitor.restore(records)
    log.info("rl (%s reward, %s backend): steps %d..%d, %d prompts x %d samples, beta %g, anchor %s, "
             "disagreement monitor %s%s", reward.name, cfg.backend, start + 1, cfg.steps, cfg.prompts_per_step,
             cfg.samples_per_prompt, cfg.beta, cfg.anchor,
             "off" if monitor is None else f"every {cfg.monitor_every} steps on <= {cfg.monitor_samples} samples, "
             f"alarm at {cfg.alarm_ratio:g}x the SFT spread {monitor.monitor.reference_spread:.3f}",
             f"; sampling overlaps learning (one step off-policy, importance weights capped at {cfg.is_cap:g})"
             if cfg.overlap else "")
    return _Live(learner, group, fn if fn is not None else scorer.score, scorer, monitor, records, start,
                 online=online)


def _start_online(run: RLRun, scorer, fn, version: int) -> OnlineRefresher:
    """rl.online: the refresher of the run's reward members, serving ``version`` (a resumed run's)."""
    from warm_ray.config import UserError
    from warm_ray.sources import preferences

    cfg, reward, src = run.rl, run.reward, run.policy
    if scorer is None or reward.source is None or reward.source.warm_dir is None or run.labeller is None:
        raise UserError(f"rl.online.every = {cfg.online.every}: online refreshes need a reward of a warm run's members "
                        "(rl.reward warm or single) and a labeller (the benchmark's gold, or study.judge)")
    if run.config is None:
        raise UserError("rl.online needs the run's stage config (its members' training data)")

    def refit() -> None:  # the reward standardised again, on the same SFT samples, after a pull
        if scorer.normaliser is not None:
            scorer.fit_normaliser(*sft_reference(src.sft_dir, src.prompts["train"], cfg))
        if hasattr(fn, "refit"):
            fn.refit()

    online = OnlineRefresher(cfg.online, cfg.seed, refreshed_members(reward.source.warm_dir, reward.name,
                                                                      cfg.single_member),
                             preferences(run.config).data_dir, reward.source.max_length, run.labeller, scorer,
                             refit, run.out_dir, on_submit=run.on_refresh)
    online.start(version)
    return online


def _resume(run: RLRun, learner, group: RolloutWorkerGroup, resume: bool) -> tuple[int, list[dict], dict]:
    """(the step to continue after, the records kept, the checkpoint's extra record): from the checkpoint
    when resuming and it is whole, else from step 0."""
    ckpt_dir, metrics_path = run.out_dir / "ckpt", run.out_dir / "metrics.jsonl"
    checkpoint = None
    if resume:
        damaged = [f"{f}: {why}" for f in sorted(ckpt_dir.glob("*.safetensors"))
                   if (why := rundir.damaged_weights(f)) is not None]
        if damaged:
            log.warning("checkpoint %s is damaged (%s): the run retrains from the start", ckpt_dir, "; ".join(damaged))
        else:
            checkpoint = load_checkpoint(ckpt_dir)
    if checkpoint is None:
        if resume:
            log.info("no checkpoint in %s: starting from step 0", ckpt_dir)
        return 0, keep_metrics_until(metrics_path, 0), {}
    state, extra = checkpoint
    start = ray.get(learner.load_state.remote(state), timeout=TIMEOUT_S)
    group.sync_weights(state["policy"])
    records = keep_metrics_until(metrics_path, start)
    log.info("resuming %s from the checkpoint of step %d (%d steps logged)", run.out_dir, start, len(records))
    return start, records, extra


def _on_alarm(run: RLRun, live: _Live, record: dict) -> bool:
    """rl.on_alarm at a step whose alarm fired, if it is the run's first: "checkpoint" keeps the policy of
    this step beside the run (``alarm_policy/``); returns True when the run is to stop here ("stop")."""
    cfg = run.rl
    if not record.get("alarm") or live.monitor is None or live.monitor.first_alarm != record["step"]:
        return False
    if cfg.on_alarm == "checkpoint":
        out = run.out_dir / "alarm_policy"
        ray.get(live.learner.save_policy.remote(str(out), run.policy.sft_dir, None), timeout=TIMEOUT_S)
        log.warning("rl.on_alarm = checkpoint: the policy of the alarm's step %d is kept in %s; the run goes on",
                    record["step"], out)
    return cfg.on_alarm == "stop"


def _stop_at_alarm(run: RLRun, live: _Live, step: int) -> None:
    """rl.on_alarm = stop: the learner goes back to the run's last checkpoint before the alarm, which
    becomes the run's result (its final policy); a line says so."""
    if live.pending is not None:  # rl.overlap: the next step's samples, drawn already, are not used
        live.group.collect(live.pending)
        live.pending = None
    state, _ = load_checkpoint(run.out_dir / "ckpt")
    kept = ray.get(live.learner.load_state.remote(state), timeout=TIMEOUT_S)
    live.stopped = {"alarm_step": step, "result_step": kept}
    log.warning("rl.on_alarm = stop: the run stopped at the alarm of step %d; its result is its last checkpoint "
                "before it, of step %d", step, kept)


def _checkpoints(cfg, step: int) -> bool:
    return step == cfg.steps or (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0)


def _submit(run: RLRun, live: _Live, step: int):
    cfg = run.rl
    per_step = cfg.prompts_per_step * cfg.samples_per_prompt
    return live.group.submit(step_prompts(run.policy.prompts["train"], step, cfg.prompts_per_step, cfg.seed),
                             cfg.samples_per_prompt, cfg.max_new_tokens, cfg.temperature,
                             seed=sampling_seed(cfg.seed, step, per_step))


def _step(run: RLRun, live: _Live, step: int) -> dict:
    """One step: sample, score, learn, sync, monitor; its record (phase timings included)."""
    cfg, group = run.rl, live.group
    # sample
    t0 = time.perf_counter()
    if live.pending is None:
        live.pending, live.submitted = _submit(run, live, step), t0
    samples = group.collect(live.pending)
    sampled = time.perf_counter() - live.submitted  # since the sampling was sent
    # the learner holds the weights of the workers' latest version: older samples are off-policy
    off_policy = any(s.policy_version != group.version for s in samples)
    # rl.overlap: step + 1 samples now, from the weights before this step's update (its sync
    # reaches the workers after that sampling); never after a checkpoint, so the step a resumed
    # run starts with samples on-policy as it does here
    live.pending, live.submitted = (_submit(run, live, step + 1), time.perf_counter()) \
        if cfg.overlap and not _checkpoints(cfg, step) else (None, None)
    texts = [s.completion for s in samples]
    sample_prompts = [s.prompt for s in samples]
    # rl.online: label pairs of these samples and send the members' refresh; it trains while the step goes on
    online = live.online
    scored_with = None if online is None else online.version
    if online is not None and online.due(step):
        online.submit(step, sample_prompts, texts)
    # score: the proxy reward trains; the gold reward is only watched
    t1 = time.perf_counter()
    proxy = [float(r) for r in live.score(sample_prompts, texts)]
    # the gold reward is the benchmark's ground truth: watched on its prompts only
    gold = gold_rewards(texts, sample_prompts) if run.policy.gold else None
    # learn
    t2 = time.perf_counter()
    learned = ray.get(live.learner.learn.remote(samples, proxy, off_policy), timeout=TIMEOUT_S)
    # sync: the learner's weights go to every worker by reference, never through the driver
    t3 = time.perf_counter()
    version = group.sync_weights(live.learner.get_weights.remote())
    # monitor: every K steps the members score a bounded subset of this step's samples
    t4 = time.perf_counter()
    monitor = live.monitor
    check = monitor.check(step, sample_prompts, texts) if monitor and monitor.should_check(step) else {}
    t5 = time.perf_counter()
    # rl.online: wait for the refresh sent this step and publish it (the next step scores with it), or keep
    # the version; reward_version is the one that scored this step
    refreshed = {}
    if online is not None:
        after = online.finish()
        refreshed = {"reward_version": scored_with, "t_refresh_wait": after.get("t_refresh_wait", 0.0),
                     **({"refresh": after["refresh"]} if "refresh" in after else {})}
    t6 = time.perf_counter()
    tokens = sum(len(s.completion_ids) for s in samples)
    record = {
        "step": step,
        "proxy_reward": sum(proxy) / len(proxy),
        "gold_reward": None if gold is None else sum(gold) / len(gold),
        "kl_sft": learned["kl_sft"],
        "kl_anchor": learned["kl_anchor"],
        "entropy": learned["entropy"],
        "completion_len": tokens / len(samples),
        "stop_fraction": sum(s.finish_reason == "stop" for s in samples) / len(samples),
        "tokens_per_s": tokens / max(sampled, 1e-9),
        "logprob_gap": learned["logprob_gap"],
        "off_policy": off_policy,
        "is_weight": learned["is_weight"],
        "loss": learned["loss"],
        "grad_norm": learned["grad_norm"],
        "baseline": learned["baseline"],
        # SD of r_β - baseline over the batch: the step size REINFORCE sees (with a leave-one-out
        # baseline, the rewards' within-prompt spread)
        "advantage_std": learned["advantage_std"],
        "policy_version": version,
        "t_sample": t1 - t0, "t_score": t2 - t1, "t_learn": t3 - t2, "t_sync": t4 - t3,
        "t_monitor": t5 - t4, "t_step": t6 - t0, "t_end": time.time(),
        **refreshed,
        **check,
    }
    if check:  # every alarm signal at this check, from the records so far and this one, and the rule's alarm
        record.update(monitor.alarm(live.records, record))
        spent = time.perf_counter() - t6  # the monitor's time, its signals included
        record["t_monitor"] += spent
        record["t_step"] += spent
    return record


def _record(run: RLRun, live: _Live, record: dict, checkpoint: bool = True) -> None:
    """Append the step's record, log it, and checkpoint when the step is one to keep (and ``checkpoint``)."""
    cfg, step = run.rl, record["step"]
    append_metrics(run.out_dir / "metrics.jsonl", record)
    live.records.append(record)
    checked = record.get("spread_ratio") is not None
    log.info("step %d/%d  proxy %.3f  gold %s  kl %.3f  ent %.2f  len %.1f  gap %.1e  "
             "%.0f tok/s  sample %.2fs score %.2fs learn %.2fs sync %.2fs%s",
             step, cfg.steps, record["proxy_reward"], fmt(record["gold_reward"]), record["kl_sft"],
             record["entropy"], record["completion_len"], record["logprob_gap"],
             record["tokens_per_s"], *(record[k] for k in ("t_sample", "t_score", "t_learn", "t_sync")),
             f"  spread {record['spread_ratio']:.2f}x SFT ({record['t_monitor']:.2f}s)" if checked else "")
    if checkpoint and _checkpoints(cfg, step):
        state = ray.get(live.learner.state.remote(), timeout=TIMEOUT_S)
        save_checkpoint(run.out_dir / "ckpt", state,
                        {"reward": run.reward.name, "policy_version": record["policy_version"],
                         # rl.online: the reward version the next step scores with (a resumed run goes back to it)
                         **({} if live.online is None else {"reward_version": live.online.version})})


def _summarise(run: RLRun, live: _Live) -> dict:
    """The run's summary (``summary.json``), its unit record, the disagreement plot and log lines."""
    cfg, name, out, records = run.rl, run.reward.name, run.out_dir, live.records
    scorer, monitor = live.scorer, live.monitor
    keys = ("proxy_reward", "gold_reward", "kl_sft", "entropy", "completion_len", "logprob_gap")
    phases = ("t_sample", "t_score", "t_learn", "t_sync", "t_monitor", "t_step")
    t_monitor = sum(r.get("t_monitor", 0.0) for r in records)
    t_steps = sum(r["t_step"] for r in records)
    peak = gold_peak_step(records)
    first_alarm = None if monitor is None else monitor.first_alarm
    result = {
        "reward": name,
        "reward_mode": None if scorer is None else scorer.mode,
        "forward_passes_per_sample": None if scorer is None else forward_passes(scorer.mode, scorer.n_models),
        "backend": cfg.backend,
        "steps": cfg.steps,
        "resumed_from": live.start,
        "first": final_means(records[:FINAL_WINDOW], keys),
        "final": final_means(records, keys),
        "seconds_per_phase": {k: sum(r.get(k, 0.0) for r in records) / len(records) for k in phases},
        "seconds_this_run": round(time.perf_counter() - live.t_start, 1),
        "gold_peak_step": peak,
        "first_alarm": first_alarm,
        # rl.on_alarm = stop: {"alarm_step", "result_step"}: the final policy is the checkpoint of result_step
        "stopped_at_alarm": live.stopped,
        # > 0: the alarm fired that many steps before gold peaked; None: no alarm (or no monitor)
        "alarm_lead_steps": None if first_alarm is None or peak is None else peak - first_alarm,
        # rl.online: every version published, its label count and time; the refreshes' wait in the loop
        "online": None if live.online is None else {
            "versions": live.online.versions, "version": live.online.version, "labeller": live.online.labeller.name,
            "labels": sum(v["labels"] for v in live.online.versions),
            "refresh_wait_seconds": round(sum(r.get("t_refresh_wait", 0.0) for r in records), 3),
            "trainers_started": live.online.trainers_started},
        "monitor": None if monitor is None else {
            **monitor.to_dict(), "seconds": round(t_monitor, 3),
            "share_of_step_time": t_monitor / max(t_steps, 1e-9)},
        # relative to the run dir; the summary returned names them to open (``files.in_run_dir``)
        "policy": files.portable(out / "policy", run.run_dir),
        "metrics": files.portable(out / "metrics.jsonl", run.run_dir),
    }
    files.atomic_write_json(out / "summary.json", result)
    rundir.finish(out, run.fingerprint(), result)
    result = files.resolved_paths(result, run.run_dir, RUN_PATHS)
    if monitor is not None:
        plot_disagreement(records, out / "disagreement.png", cfg.alarm_ratio,
                          f"{reward_label(name)} reward: member disagreement and gold reward")
    log.info("rl (%s) done: proxy %.3f → %.3f, gold %s → %s, KL to SFT %.3f (%s)", name,
             result["first"]["proxy_reward"], result["final"]["proxy_reward"], fmt(result["first"]["gold_reward"]),
             fmt(result["final"]["gold_reward"]), result["final"]["kl_sft"], out)
    if monitor is not None:
        log.info("rl (%s) disagreement monitor: first alarm %s, gold peak at step %s, cost %.2fs (%.1f%% of step time)",
                 name, "none" if first_alarm is None else f"at step {first_alarm}", peak, t_monitor,
                 100 * result["monitor"]["share_of_step_time"])
    return result
