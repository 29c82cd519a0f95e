"""The public RL API: describe a run (``RLRun``), hand it to ``run_rl``.

    from actors.rl import RLActors, RLRun, run_rl

    summary = run_rl(RLRun.of(config, out_dir), resume=False)

Every driver (`warm-ray rl`, WARP, the study, the sweep, the benchmarks) imports from here only.
The package is split by what each part is:

- ``spec``: ``RLRun`` and ``Reward``, what one run reads, and its fingerprint;
- ``loop``: ``run_rl``, the loop itself (open/resume → step → record → summary);
- ``reward``: the reward side (scorer specs, normalisation on SFT samples);
- ``monitor``: the disagreement monitor and its plot;
- ``slot``: ``RLActors``, a learner and rollout workers that runs take turns on;
- ``metrics``: ``metrics.jsonl`` and the numbers read from it;
- ``evaluate``: held-out evaluation of policies and gold win rates;
- ``online``: rl.online, the reward's members refreshed on labelled samples of the policy during a run.
"""

from actors.rl.evaluate import evaluate_policy, gold_reward, win_rate
from actors.rl.loop import RUN_PATHS, run_rl, sampling_seed, step_prompts
from actors.rl.metrics import FINAL_WINDOW, final_means, fmt, gold_peak_step, read_metrics
from actors.rl.monitor import Scorer
from actors.rl.reward import (REFERENCE_SEED, best_member, build_scorer, proxy_scorer, scorer_spec, sft_reference,
                              start_scorer)
from actors.rl.slot import TIMEOUT_S, RLActors, rollout_options
from actors.rl.spec import Reward, RLRun

__all__ = ["FINAL_WINDOW", "REFERENCE_SEED", "RUN_PATHS", "TIMEOUT_S", "RLActors", "RLRun", "Reward", "Scorer", "best_member",
           "build_scorer", "proxy_scorer", "scorer_spec",
           "evaluate_policy", "final_means", "fmt", "gold_peak_step", "gold_reward", "read_metrics", "rollout_options",
           "run_rl", "sampling_seed", "sft_reference", "start_scorer", "step_prompts", "win_rate"]
