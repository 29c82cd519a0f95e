"""The WARM driver: M RewardModelTrainer actors in parallel, a ParameterServer, the evaluation.

    prepare's splits + Baklava checkpoints
        → linear probe on frozen features (once, shared)              [driver]
        → M RewardModelTrainer actors fine-tune concurrently           [Ray actors]
        → each finished member's weights → ParameterServer (as refs)   [num_cpus=0 actor]
        → WARM = uniform average; greedy soup and best member chosen on the selection split
        → table: members, ENS, WARM, greedy soup, best member on clean train / corrupted train /
          selection / ID test / OOD test (test splits are read only after selection is done)
        → linear mode connectivity plot between two members
        → WARM RM saved as a Hugging Face dir (AutoModelForSequenceClassification loads it)

Outputs go to ``<run_dir>/warm``; finished members are not retrained on a rerun.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import ray
import torch

from actors.parameter_server import ParameterServer
from actors.placement import actor_options, ensure_ray
from actors.reward_trainer import MemberSpec, RewardModelTrainer, TrainSettings
from warm_ray import merge
from warm_ray import models as M
from warm_ray import reward as R
from warm_ray.config import Config, Resources, WarmConfig, save_config
from warm_ray.data import check_train_split, load_splits

log = logging.getLogger("warm_ray.warm")
NAMESPACE = "warm-ray"
SETS = ("train_clean", "train_corrupted", "selection", "test_id", "test_ood")


def prepared_summary(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "prepare" / "prepare.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `warm-ray prepare` with the same run_dir first")
    return json.loads(path.read_text())


def featurizer_dirs(cfg: WarmConfig, summary: dict) -> list[str]:
    """Candidate featurizer inits: prepare's checkpoints, or one local HF model dir."""
    if cfg.featurizer == "policy":
        return list(summary["checkpoints"])
    if cfg.featurizer == "minilm":
        from warm_ray.models import minilm_dir

        return [str(minilm_dir())]
    local = Path(cfg.featurizer)
    if local.exists() and not (local / "config.json").exists():
        raise FileNotFoundError(f"warm.featurizer {cfg.featurizer!r} has no config.json: not a Hugging Face model dir")
    return [cfg.featurizer]  # a local dir, or a hub id (loads where a hub is reachable)


def member_specs(cfg: WarmConfig, inits: list[str]) -> list[MemberSpec]:
    """Member i: lr, dropout and init drawn round-robin from the grids, seed = seed + i."""
    if cfg.m < 1:
        raise ValueError(f"warm.m must be >= 1, got {cfg.m}")
    if cfg.members and len(cfg.members) != cfg.m:
        raise ValueError(f"warm.members has {len(cfg.members)} entries for m={cfg.m}")
    specs = []
    for i in range(cfg.m):
        o = cfg.members[i] if cfg.members else None
        init_idx = (o.init_checkpoint if o and o.init_checkpoint is not None
                    else (len(inits) - 1 - i % len(inits) if cfg.baklava else len(inits) - 1))
        specs.append(MemberSpec(
            index=i,
            lr=o.lr if o and o.lr is not None else cfg.lrs[i % len(cfg.lrs)],
            dropout=o.dropout if o and o.dropout is not None else cfg.dropouts[i % len(cfg.dropouts)],
            seed=o.seed if o and o.seed is not None else cfg.seed + i,
            init_dir=inits[init_idx],
        ))
    return specs


def linear_probe(cfg: WarmConfig, init_dir: str, rows: list[dict], out: Path) -> Path:
    """LP of LP-FT: fit the shared head on frozen features of the last init (once per run)."""
    if out.exists():
        return out
    t0 = time.perf_counter()
    model = M.build_reward_model(init_dir, dropout=0.0, seed=cfg.seed)
    tok = M.load_tokenizer(init_dir)
    fc = R.head_features(model, tok, R.texts_of(rows, "chosen"), cfg.max_length)
    fr = R.head_features(model, tok, R.texts_of(rows, "rejected"), cfg.max_length)
    head = R.fit_linear_probe(fc, fr, epochs=cfg.lp_epochs, lr=cfg.lp_lr, seed=cfg.seed)
    M.save_state_dict(head, out)
    acc = float(((fc - fr) @ head["weight"].T > 0).float().mean())
    log.info("linear probe on frozen features: train acc %.3f (%.1fs)", acc, time.perf_counter() - t0)
    return out


def ps_name(warm_dir: Path) -> str:
    return "warm_ps_" + hashlib.sha1(str(warm_dir.resolve()).encode()).hexdigest()[:10]


def start_parameter_server(warm_dir: Path, max_restarts: int = 3):
    return ray.remote(ParameterServer).options(
        name=ps_name(warm_dir), namespace=NAMESPACE, get_if_exists=True, num_cpus=0,
        max_restarts=max_restarts, max_task_retries=-1,
    ).remote(str(warm_dir / "ps"))


def train_settings(cfg: WarmConfig, data_dir: str, head_path: Path | None, warm_dir: Path) -> TrainSettings:
    return TrainSettings(
        data_dir=data_dir, head_path=str(head_path) if head_path else None, epochs=cfg.epochs,
        batch_size=cfg.batch_size, max_length=cfg.max_length, weight_decay=cfg.weight_decay,
        checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every, sync_every=cfg.sync_every,
        num_threads=cfg.trainer.num_threads, device=cfg.trainer.device, dtype=cfg.trainer.dtype,
        parameter_server=ps_name(warm_dir) if cfg.sync_every else None, namespace=NAMESPACE,
        workers_per_member=cfg.workers_per_member, worker_cpus=cfg.trainer.num_cpus,
        worker_gpus=cfg.trainer.num_gpus, max_failures=cfg.max_restarts,
    )


def start_trainers(cfg: WarmConfig, specs: list[MemberSpec], settings: TrainSettings, warm_dir: Path) -> dict:
    """One actor per member, resources from ``warm.trainer``; Ray restarts and retries them."""
    cls = ray.remote(RewardModelTrainer)
    # a data-parallel member's actor only drives its Ray Train workers, which hold the resources
    res = cfg.trainer if cfg.workers_per_member == 1 else Resources(num_cpus=0, num_gpus=0)
    return {
        s.index: cls.options(**actor_options(res, max_restarts=cfg.max_restarts, max_task_retries=-1))
        .remote(s, settings, str(warm_dir / "members" / f"member_{s.index}"))
        for s in specs
    }


def train_members(cfg: WarmConfig, specs, settings, warm_dir: Path, ps) -> dict[int, dict]:
    """Train every unfinished member concurrently; push each to the server as it finishes."""
    summaries: dict[int, dict] = {}
    todo = []
    for s in specs:
        done = warm_dir / "members" / f"member_{s.index}" / "summary.json"
        if done.exists() and (done.parent / "final" / "config.json").exists():
            summaries[s.index] = json.loads(done.read_text())
            log.info("member %d already trained, skipping", s.index)
        else:
            todo.append(s)
    trainers = start_trainers(cfg, todo, settings, warm_dir) if todo else {}
    pending = {trainers[s.index].train.remote(): s.index for s in todo}
    log.info("training %d members concurrently (%s each)", len(pending), actor_options(cfg.trainer))
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        idx = pending.pop(ready[0])
        summaries[idx] = ray.get(ready[0])
        # weights move as an ObjectRef from the trainer straight to the server
        status = ray.get(ps.push.remote(str(idx), trainers[idx].get_weights.remote(), {"final": True}))
        if not status["accepted"]:
            log.warning(status["reason"])
    for idx in summaries:
        if idx not in trainers:  # finished in an earlier life of this run
            sd = M.load_reward_model(warm_dir / "members" / f"member_{idx}" / "final").state_dict()
            ray.get(ps.push.remote(str(idx), sd, {"final": True}))
    for t in trainers.values():
        ray.kill(t)
    return summaries


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------


def eval_sets(splits: dict[str, list[dict]]) -> dict[str, list[dict]]:
    train = splits["train"]
    return {
        "train_clean": [r for r in train if not r["corrupted"]],
        # agreement with the flipped label: memorisation of noise
        "train_corrupted": [r for r in train if r["corrupted"]],
        "selection": splits["selection"],
        "test_id": splits["test_id"],
        "test_ood": splits["test_ood"],
    }


def _load_into(template, sd):
    """Load ``sd`` into the one evaluation model and return it (the same object every time:
    a result must be scored before the next load)."""
    template.load_state_dict(sd)
    return template


def greedy_soup(order: list[str], start_acc: float, accuracy_of) -> tuple[list[str], float]:
    """Model soups' greedy recipe: walk members best-first, keep one if the soup does not get worse.

    ``accuracy_of(ids)`` must score the average of ``ids`` on the selection split only.
    """
    soup, best = [order[0]], start_acc
    for cand in order[1:]:
        acc = accuracy_of(soup + [cand])
        if acc >= best:
            soup, best = soup + [cand], acc
    return soup, best


def select_members(member_ids: list[str], selection_acc: dict[str, float], soup_acc) -> dict:
    """Best single member and greedy soup, from selection-split accuracies only."""
    order = sorted(member_ids, key=lambda i: (-selection_acc[i], int(i)))
    soup, acc = greedy_soup(order, selection_acc[order[0]], soup_acc)
    return {"best_member": order[0], "greedy_members": soup, "greedy_selection_acc": acc}


def evaluate(cfg: WarmConfig, warm_dir: Path, ps, splits, member_ids: list[str]) -> dict:
    sets = eval_sets(splits)
    kw = dict(max_length=cfg.max_length, batch_size=cfg.eval_batch_size)
    member_dirs = {i: warm_dir / "members" / f"member_{i}" / "final" for i in member_ids}
    tok = M.load_tokenizer(member_dirs[member_ids[0]])
    members = {i: M.load_reward_model(d) for i, d in member_dirs.items()}
    template = M.load_reward_model(member_dirs[member_ids[0]])

    # 1. selection: reads the selection split and nothing else
    sel = {i: R.accuracy(R.pair_margins([m], tok, sets["selection"], **kw)) for i, m in members.items()}
    chosen = select_members(member_ids, sel, lambda ids: R.accuracy(R.pair_margins(
        [_load_into(template, ray.get(ps.average_of.remote(ids)))], tok, sets["selection"], **kw)))

    # 2. reporting, on every set
    margins = {i: {k: R.pair_margins([m], tok, rows, **kw) for k, rows in sets.items()} for i, m in members.items()}
    table: dict[str, dict[str, float]] = {}
    for i in member_ids:
        table[f"member {i}"] = {k: R.accuracy(v) for k, v in margins[i].items()}
    # ENS: the average of the members' predictions (M forward passes per input)
    table["ENS"] = {k: R.accuracy(sum(margins[i][k] for i in member_ids) / len(member_ids)) for k in sets}
    warm_model = _load_into(template, ray.get(ps.get_weights.remote()))
    table["WARM"] = {k: R.accuracy(R.pair_margins([warm_model], tok, rows, **kw)) for k, rows in sets.items()}
    M.save_model(warm_model, warm_dir / "warm_rm", tok)
    greedy = _load_into(template, ray.get(ps.average_of.remote(chosen["greedy_members"])))
    table["greedy soup"] = {k: R.accuracy(R.pair_margins([greedy], tok, rows, **kw)) for k, rows in sets.items()}
    M.save_model(greedy, warm_dir / "greedy_soup_rm", tok)
    table["best member (selection)"] = dict(table[f"member {chosen['best_member']}"])
    table["mean member"] = {k: sum(table[f"member {i}"][k] for i in member_ids) / len(member_ids) for k in sets}

    lmc = None
    if len(member_ids) >= 2:
        lmc = linear_mode_connectivity(members[member_ids[0]], members[member_ids[1]], template, tok,
                                       {k: sets[k] for k in ("test_id", "test_ood")}, cfg.lmc_points, kw)
    return {"table": table, **chosen, "lmc": lmc,
            "models_at_inference": {"ENS": len(member_ids), "WARM": 1, "greedy soup": 1}}


def linear_mode_connectivity(a, b, template, tok, sets, points, kw) -> dict:
    """Accuracy along (1-t)·φ_a + t·φ_b (WARM Fig. 3)."""
    sa, sb = a.state_dict(), b.state_dict()
    ts = [i / (points - 1) for i in range(points)]
    out = {"t": ts}
    for name, rows in sets.items():
        out[name] = [R.accuracy(R.pair_margins(
            [_load_into(template, merge.average([sa, sb], [1 - t, t]))], tok, rows, **kw)) for t in ts]
    return out


def plot_lmc(lmc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, color in (("test_id", "tab:blue"), ("test_ood", "tab:orange")):
        acc = lmc[name]
        ax.plot(lmc["t"], acc, "o-", color=color, label=f"{name}: weight interpolation")
        ax.plot([0, 1], [acc[0], acc[-1]], "--", color=color, alpha=0.6, label=f"{name}: straight line")
    ax.set_xlabel("t  in  (1-t)·φ₀ + t·φ₁")
    ax.set_ylabel("pairwise accuracy")
    ax.set_title("Linear mode connectivity of two RMs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(table: dict[str, dict[str, float]]) -> str:
    head = "| model | " + " | ".join(SETS) + " |\n|---|" + "---:|" * len(SETS) + "\n"
    rows = "".join(f"| {name} | " + " | ".join(f"{v[k]:.3f}" for k in SETS) + " |\n" for name, v in table.items())
    return head + rows


def run_warm(config: Config) -> dict:
    cfg = config.warm
    warm_dir = Path(config.run_dir) / "warm"
    warm_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, warm_dir)
    summary = prepared_summary(config.run_dir)
    splits = load_splits(summary["data"])
    check_train_split(splits.get("train", []), summary["data"])
    missing = [s for s in ("selection", "test_id", "test_ood") if not splits.get(s)]
    if missing:
        raise ValueError(f"{summary['data']}: split(s) {missing} are empty or missing")
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, cfg.trainer.num_threads))
    inits = featurizer_dirs(cfg, summary)
    specs = member_specs(cfg, inits)
    head = linear_probe(cfg, inits[-1], splits["train"], warm_dir / "lp_head.safetensors")
    ensure_ray()
    ps = start_parameter_server(warm_dir)
    settings = train_settings(cfg, summary["data"], head, warm_dir)
    summaries = train_members(cfg, specs, settings, warm_dir, ps)
    t_train = time.perf_counter() - t0
    info = ray.get(ps.info.remote())
    member_ids = [i for i in map(str, range(cfg.m)) if i in info["members"]]
    if not member_ids:
        raise RuntimeError(f"no member survived: {info['excluded']}")
    results = evaluate(cfg, warm_dir, ps, splits, member_ids)
    ray.kill(ps)  # everything it holds is persisted; the RL stage restores it from disk
    results.update(
        members={i: {**asdict(s), **summaries.get(s.index, {})} for i, s in enumerate(specs)},
        excluded=info["excluded"], average_version=info["version"],
        seconds={"train": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)},
    )
    if results["lmc"]:
        plot_lmc(results["lmc"], warm_dir / "lmc.png")
    M.publish(warm_dir, results, markdown_table(results["table"]),
              f"WARM with M={len(member_ids)} members (pairwise accuracy; train_corrupted = memorisation):",
              f"WARM RM: {warm_dir / 'warm_rm'}   plot: {warm_dir / 'lmc.png'}   ({results['seconds']['total']}s)")
    return results
