"""`warm-ray sweep`: config checks, and a real interrupted-then-resumed WARM sweep over M in {1, 2}."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tune import sweep as S
from warm_ray.config import ConfigError, dump_config, load_config

from tests.conftest import tiny_config

TIMEOUT = 420
# Long enough (630 steps per member) that the interrupt lands mid-training: at 240 steps a member
# of the faster training loop could finish between its first checkpoint and the second Ctrl-C.
# A checkpoint once per epoch (15 steps; writing one costs about as much as a step): 630 steps
# then take about twice the time 240 steps with one every 3 steps took, at ~2/3 of 720 such steps.
WARM = ["warm.epochs=42", "warm.batch_size=16", "warm.checkpoint_every=15", "warm.log_every=30",
        "warm.lp_epochs=5", "warm.lmc_points=3"]


@pytest.mark.parametrize("override, match", [
    ("sweep.space={mm: [1, 2]}", "unknown key 'warm.mm'"),
    ("sweep.space={trainer.num_cpu: [1]}", "unknown key 'warm.trainer.num_cpu'"),
    ("sweep.space={m: ['two']}", "warm.m: expected an integer"),
    ("sweep.space={m: 3}", "sweep.space.m: expected a list"),
    ("sweep.metric=accuracy", "not reported by stage 'warm'; choose one of ood_acc_warm"),
    ("sweep.asha=true", "sweep.asha needs intermediate metrics"),
    ("sweep.search=bayes", "sweep.search = 'bayes': must be one of 'grid', 'random', 'optuna'"),
    ("sweep.stage=prepare", "has no sweep driver; available: warm"),
])
def test_bad_sweep_configs_fail_before_any_trial(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):  # when the config is read, or by the sweep's own checks
        S.validate(tiny_config(tmp_path, [override]))


def test_optuna_is_optional(tmp_path):
    import importlib.util

    cfg = tiny_config(tmp_path, ["sweep.search=optuna"])
    if importlib.util.find_spec("optuna") is None:
        with pytest.raises(ConfigError, match=r"pip install 'warm-ray\[tune-optuna\]'"):
            S.validate(cfg)
    else:
        S.validate(cfg)


def test_a_trial_that_cannot_fit_is_an_error_not_a_hang(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = tiny_config(tmp_path, ["sweep.space={m: [1, 8]}"])
    S.check_fits(tiny_config(tmp_path, ["sweep.space={m: [1, 4]}"]), {"CPU": 2.0})  # 4 x 0.5 CPU fits
    with pytest.raises(ConfigError, match=r"\{'m': 8\}.*CPU: needs 4, cluster has 2"):
        S.check_fits(cfg, {"CPU": 2.0})


def _sweep(run_dir: Path, config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    log = open(run_dir / f"sweep_{len(list(run_dir.glob('sweep_*.log')))}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "warm_ray.cli", "sweep", "--config", str(config),
                             "--run-dir", str(run_dir), *extra], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=run_dir)


def test_interrupted_sweep_resumes_and_reports_the_best_config(prepared, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "prepare").symlink_to(Path(prepared[0].run_dir).resolve() / "prepare")
    config = tmp_path / "sweep.yaml"
    config.write_text(dump_config(tiny_config(run_dir, [*WARM, "sweep.space={m: [1, 2]}"])))
    trials = run_dir / "sweep" / "trials"

    # 1. start the sweep, Ctrl-C it once the second trial (M=2) has a member checkpoint
    first = _sweep(run_dir, config)
    ckpt = trials / "1_m=2" / "warm" / "members" / "member_0" / "ckpt"
    deadline = time.time() + TIMEOUT
    while not ckpt.exists():
        assert first.poll() is None, (run_dir / "sweep_0.log").read_text()[-3000:]
        assert time.time() < deadline, "the second trial never checkpointed"
        time.sleep(0.05)
    # An impatient Ctrl-C, twice: Tune saves its state at the first, the second kills the driver
    # (and with it the local Ray and the trial's trainers) before the trial can finish.
    state = run_dir / "sweep" / "tune"
    signalled = time.time()
    first.send_signal(signal.SIGINT)
    # the second Ctrl-C only once Tune has written its experiment state after the first one
    while not any(p.stat().st_mtime >= signalled for p in state.glob("experiment_state-*.json")):
        assert time.time() < deadline and first.poll() is None, (run_dir / "sweep_0.log").read_text()[-3000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    try:
        first.wait(timeout=120)
    except subprocess.TimeoutExpired:
        first.terminate()
        first.wait(timeout=60)
    assert list(state.glob("experiment_state-*.json"))
    assert not (trials / "1_m=2" / "trial.json").exists()  # the second trial did not finish
    done_0 = (trials / "0_m=1" / "warm" / "results.json").stat().st_mtime

    # 2. the same command again, with --resume: trial 0 is kept, trial 1 continues
    second = _sweep(run_dir, config, "--resume")
    assert second.wait(timeout=TIMEOUT) == 0, (run_dir / "sweep_1.log").read_text()[-3000:]
    out = (run_dir / "sweep_1.log").read_text()
    assert "resuming the sweep" in out
    assert (trials / "0_m=1" / "warm" / "results.json").stat().st_mtime == done_0  # not rerun
    resumed = json.loads((trials / "1_m=2" / "warm" / "results.json").read_text())["members"]
    assert any(m["resumed_from"] > 0 for m in resumed.values()), resumed

    # the table, printed and saved; both metrics of both trials
    results = json.loads((run_dir / "sweep" / "results.json").read_text())
    assert [r["trial"] for r in results["rows"]] == ["0_m=1", "1_m=2"]
    assert all(r["status"] == "done" for r in results["rows"]), results["rows"]
    for r in results["rows"]:
        assert 0 <= r["metrics"]["ood_acc_warm"] <= 1 and 0 <= r["metrics"]["memorisation_warm"] <= 1
        assert r["metrics"]["members"] == r["params"]["m"]
    md = (run_dir / "sweep" / "results.md").read_text()
    assert "| trial | m | OOD acc WARM | memorisation WARM |" in md and md.split("\n\n", 1)[1] in out

    # the best config is a whole runnable config
    best = results["best"]
    best_cfg = load_config(run_dir / "sweep" / "best_config.yaml")
    assert best_cfg.warm.m == best["params"]["m"]
    assert best["metrics"]["ood_acc_warm"] == max(r["metrics"]["ood_acc_warm"] for r in results["rows"])

    # each trial: its own run dir and config, the shared prepare output, its reserved bundles
    for name, m in (("0_m=1", 1), ("1_m=2", 2)):
        trial_cfg = yaml.safe_load((trials / name / "config.yaml").read_text())
        assert trial_cfg["run_dir"] == str(trials / name) and trial_cfg["warm"]["m"] == m
        summary = json.loads((trials / name / "prepare" / "prepare.json").read_text())
        assert all(Path(p).is_absolute() and Path(p).exists() for p in summary["checkpoints"])
        record = json.loads((trials / name / "trial.json").read_text())
        assert record["placement_group"] == [{"CPU": 0.5}] * m


def test_rl_sweep_over_beta_reports_gold_proxy_and_kl(warm_trained, ray_local):
    """An RL sweep reuses the run's prepare and WARM outputs; one trial per β, gold reward as the metric."""
    cfg0, _ = warm_trained
    cfg = load_config(None, [f"run_dir={cfg0.run_dir}", "sweep.stage=rl", "sweep.space={beta: [0.01, 0.5]}",
                             "sweep.metric=gold_reward", "rl.steps=2", "rl.prompts_per_step=2",
                             "rl.samples_per_prompt=2", "rl.max_new_tokens=6", "rl.checkpoint_every=2",
                             # each trial's placement group reserves its scorer actor too
                             "rl.scorer_placement=actor"])
    cfg.prepare = cfg0.prepare
    summary = S.run_sweep(cfg)
    rows = summary["rows"] if "rows" in summary else summary["trials"]
    assert len(rows) == 2
    for row in rows:
        assert {"gold_reward", "proxy_reward", "kl_sft"} <= set(row["metrics"])
    sweep_dir = Path(cfg0.run_dir) / "sweep"
    assert "gold (final)" in (sweep_dir / "results.md").read_text()
    assert (sweep_dir / "best_config.yaml").exists()
    records = [json.loads(p.read_text()) for p in (sweep_dir / "trials").glob("*/trial.json")]
    assert len(records) == 2  # learner, rollout worker, scorer actor: the actors of the trial's RL run
    assert all(r["placement_group"] == [{"CPU": 0.5}] * 3 for r in records)
