"""One RL run, spelled out: ``RLRun`` holds everything ``run_rl`` reads, and nothing else.

`warm-ray rl`, WARP's runs and baselines, the study's arms, the sweep's trials and the benchmarks
each build an ``RLRun`` (``RLRun.of`` reads the policy, prompts and reward models a stage config
points to) and hand it to ``actors.rl.run_rl``. The run's own RL settings are ``rl``: a driver that
changes one (a seed, β, the anchor) replaces it there, never in a stage config.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from actors.rl.evaluate import gold_reward
from actors.rl.monitor import Scorer
from actors.rl.online import Labeller
from actors.rl.reward import reward_fingerprint
from warm_ray import files
from warm_ray import rundir
from warm_ray.config import ONLINE_REWARDS, Config, RLConfig, UserError, rl_fingerprint_fields
from warm_ray.names import GOLD, REWARD_MODES
from warm_ray.sources import PolicySource, RewardSource, policy_source, reward_source

RewardFn = Callable[[list[str], list[str]], list[float]]

log = logging.getLogger("warm_ray.rl")


def online_labeller(config: Config, rl: RLConfig, policy: PolicySource, prepared: Mapping) -> Labeller:
    """Who labels rl.online's pairs: the benchmark's gold on its prompts, else the study's judge; never a proxy.
    The share flipped: ``rl.online.label_noise``, else the members' own (study.label_noise, else prepare's)."""
    noise = next((v for v in (rl.online.label_noise, config.study.label_noise, prepared.get("corruption_rate"))
                  if v is not None), 0.0)
    if policy.gold:
        return Labeller("the benchmark's gold reward", gold_reward, GOLD, float(noise))
    if not config.study.judge:
        raise UserError(f"rl.online.every = {rl.online.every}: the online pairs need a labeller that is not a proxy; "
                        "on your own prompts set study.judge (a reward model dir, a warm-ray run dir or 'benchmark')")
    from warm_ray.judge import Judge

    judge = Judge.load(config.study.judge, config.warm.max_length)
    return Labeller(f"the judge {judge.describe()}", judge.score, judge.fingerprint(), float(noise))

# RL settings that do not change a run's outputs (where it runs, how often it checkpoints, the
# evaluation after it, the comparison it is part of)
RUN_NOT_FINGERPRINTED = ("checkpoint_every", "n_eval_prompts", "compare", "vllm_gpu_memory_utilization",
                         "vllm_kv_cache_mb", "scorer_placement", "scorer")


@dataclass(frozen=True)
class Reward:
    """What rewards a run.

    ``name``: a reward mode (``warm_ray.names.REWARD_MODES``: its scorer is built from ``source``),
    "gold" (the benchmark's gold reward: an oracle run), or the name of an injected ``fn``.
    ``fn(prompts, completions) -> rewards``: when given, it gives the reward. ``scorer``: a
    RewardScorer (or a RemoteScorer handle) built by the caller and left open for it; it rewards
    the run unless ``fn`` is given, and its members feed the disagreement monitor. Without ``fn``
    or ``scorer``, a reward mode's scorer is built for the run (``rl.scorer_placement``) and closed
    after it; with an injected ``fn`` and no scorer, there is no monitor.
    """

    name: str
    source: RewardSource | None = None
    fn: RewardFn | None = None
    scorer: Scorer | None = None

    @property
    def mode(self) -> bool:
        """The reward is one of the reward modes (scored by reward models)."""
        return self.name in REWARD_MODES

    def fingerprint(self, cfg: RLConfig) -> str:
        """What the reward depends on: an injected reward is known by its name, a reward mode (or a
        given scorer) by its reward models."""
        if self.fn is not None and self.scorer is None and self.name != GOLD:
            return getattr(self.fn, "__qualname__", "reward_fn")
        return reward_fingerprint(self.source, cfg, self.name)


@dataclass(frozen=True)
class RLRun:
    """One RL run: its settings, reward, policy and prompts, where it starts and where it writes.

    ``init_dir``: the policy θ starts from (default: the SFT policy of ``policy``). ``depends``:
    more fields the run's fingerprint covers (e.g. the fingerprint of ``init_dir``'s policy).
    ``prepared``: the prepare stage's record (its fingerprint and label seed). ``config``: the stage
    config the run belongs to, saved beside its outputs with ``rl`` as its rl section (a record for
    the user; the run reads nothing else from it but its run dir, ``run_dir``).
    """

    rl: RLConfig
    reward: Reward
    policy: PolicySource
    out_dir: Path
    init_dir: str | None = None
    depends: Mapping = field(default_factory=dict)
    prepared: Mapping = field(default_factory=dict)
    config: Config | None = None
    # rl.online: who labels the refreshes' pairs (``online_labeller``), and a hook called right after each
    # refresh is sent (``on_refresh(refresher, step)``: tests kill a member trainer there)
    labeller: Labeller | None = None
    on_refresh: Callable | None = None

    @classmethod
    def of(cls, config: Config, out_dir: str | Path, *, rl: RLConfig | None = None, reward: str | None = None,
           fn: RewardFn | None = None, scorer: Scorer | None = None, init_dir: str | None = None,
           depends: Mapping | None = None, on_refresh: Callable | None = None) -> RLRun:
        """The run of ``rl`` (default ``config.rl``) rewarded by ``reward`` (default ``rl.reward``),
        on the policy, prompts and reward models ``config`` points to (``warm_ray.sources``)."""
        rl = config.rl if rl is None else rl
        name = rl.reward if reward is None else reward
        if rl.online.every and name not in ONLINE_REWARDS:  # e.g. an ens run of rl.compare: its members stay
            log.info("rl.online refreshes %s rewards: the %s run is offline", " or ".join(ONLINE_REWARDS), name)
            rl = dataclasses.replace(rl, online=dataclasses.replace(rl.online, every=0))
        rl = dataclasses.replace(rl, reward=name)
        source = reward_source(config) if name != GOLD and (name in REWARD_MODES or scorer is not None) else None
        prepared = rundir.read_json(Path(config.run_dir) / "prepare" / "prepare.json") or {}
        policy = policy_source(config)
        return cls(rl=rl, reward=Reward(name, source, fn, scorer), policy=policy,
                   out_dir=Path(out_dir), init_dir=init_dir, depends=dict(depends or {}),
                   prepared={k: prepared.get(k) for k in ("fingerprint", "label_seed")}, config=config,
                   labeller=online_labeller(config, rl, policy, prepared) if rl.online.every else None,
                   on_refresh=on_refresh)

    @property
    def run_dir(self) -> Path:
        """The run dir the run's records name its files relative to (``files.portable``): the stage
        config's, or the run's own dir without one."""
        return self.out_dir if self.config is None else Path(self.config.run_dir)

    def fingerprint(self) -> str:
        """What the run's outputs depend on: its RL settings, where it starts, the data and the reward.
        A start inside the run dir is known by its path there: not by where the run dir is."""
        cfg = self.rl
        fields = rundir.without(rl_fingerprint_fields(dataclasses.asdict(cfg)), RUN_NOT_FINGERPRINTED)
        if not cfg.overlap:  # the off-policy settings change nothing on-policy (runs from before them match)
            fields = rundir.without(fields, ("overlap", "is_cap"))
        for role in ("rollout", "learner"):
            fields[role] = rundir.without(fields[role], ("num_cpus", "num_threads", "resources"))
        if "online" in fields:
            fields["online"]["trainer"] = rundir.without(fields["online"]["trainer"],
                                                         ("num_cpus", "num_threads", "resources"))
        return rundir.fingerprint({
            "rl": fields, "reward": self.reward.name,
            "init": files.portable(self.init_dir, self.run_dir) if self.init_dir else "sft",
            "prepare": self.prepared.get("fingerprint"), "label_seed": self.prepared.get("label_seed"),
            # the user's own policy / prompts (None: the benchmark's, covered by prepare's fingerprint)
            **({"policy_source": self.policy.fingerprint} if self.policy.fingerprint else {}),
            "rm": self.reward.fingerprint(cfg),
            **({"labeller": [self.labeller.fingerprint, self.labeller.noise]} if self.labeller else {}),
            **dict(self.depends),
        })

    def record(self) -> Config | None:
        """The config saved beside the run's outputs: the stage's, with this run's RL settings."""
        return None if self.config is None else dataclasses.replace(self.config, rl=self.rl)
