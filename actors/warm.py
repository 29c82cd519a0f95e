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

Outputs go to ``<run_dir>/warm``, opened through the run-dir contract (``warm_ray.rundir``): each
member is a unit whose fingerprint is its spec (lr, dropout, seed, init, data, epochs, batch size,
max_length, LP head), so a changed spec retrains that member and nothing else; the evaluation is a
unit over the members' fingerprints; members beyond ``warm.m`` are removed, from disk and from the
parameter server. An init is known to the fingerprints by ``sources.dir_fingerprint`` (prepare's
checkpoints by their path in the run dir), and the records name it so too: a moved or copied run dir
reuses its members.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import ray
import torch

from actors.parameter_server import ParameterServer
from actors.placement import actor_options, ensure_ray
from actors.reward_trainer import MemberSpec, RewardModelTrainer, TrainSettings
from warm_ray import files
from warm_ray import lmc
from warm_ray import merge
from warm_ray import models as M
from warm_ray import results as RS
from warm_ray import reward as R
from warm_ray import rundir
from warm_ray import scoring as S
from warm_ray.config import Config, Resources, WarmConfig, save_config
from warm_ray.merge_dirs import greedy_soup
from warm_ray.sources import Preferences, dir_fingerprint, featurizer_dirs, preferences

log = logging.getLogger("warm_ray.warm")
NAMESPACE = "warm-ray"
SETS = RS.SETS


def member_specs(cfg: WarmConfig, inits: list[str]) -> list[MemberSpec]:
    """Member i: lr, dropout and init from the grids, seed = seed + i.

    ``warm.draw: round_robin`` takes grid entry i mod its length (lr and init then move together
    when the grids have equal lengths); ``independent`` draws each of the three uniformly and
    independently per member from its own seed, as the paper does (WARM Sec. 3.1, App. B.3)."""
    if cfg.m < 1:
        raise ValueError(f"warm.m must be >= 1, got {cfg.m}")
    if cfg.members and len(cfg.members) != cfg.m:
        raise ValueError(f"warm.members has {len(cfg.members)} entries for m={cfg.m}")
    specs = []
    for i in range(cfg.m):
        o = cfg.members[i] if cfg.members else None
        if cfg.draw == "independent":
            rng = random.Random(1_000_003 * (cfg.seed + i) + 17)
            lr_i, do_i, init_i = (rng.randrange(len(cfg.lrs)), rng.randrange(len(cfg.dropouts)),
                                  rng.randrange(len(inits)))
        else:
            lr_i, do_i, init_i = i % len(cfg.lrs), i % len(cfg.dropouts), len(inits) - 1 - i % len(inits)
        init_idx = (o.init_checkpoint if o and o.init_checkpoint is not None
                    else (init_i if cfg.baklava else len(inits) - 1))
        specs.append(MemberSpec(
            index=i,
            lr=o.lr if o and o.lr is not None else cfg.lrs[lr_i],
            dropout=o.dropout if o and o.dropout is not None else cfg.dropouts[do_i],
            seed=o.seed if o and o.seed is not None else cfg.seed + i,
            init_dir=inits[init_idx],
        ))
    return specs


def lp_fingerprint(cfg: WarmConfig, init_fp: str, data_fp: str) -> str:
    """``init_fp``: the init's ``sources.dir_fingerprint`` (not where the run dir is)."""
    return rundir.fingerprint({"init": init_fp, "data": data_fp, "lp_epochs": cfg.lp_epochs,
                               "lp_lr": cfg.lp_lr, "seed": cfg.seed, "max_length": cfg.max_length})


def linear_probe(cfg: WarmConfig, init_dir: str, rows: list[dict], out: Path, fp: str | None = None) -> Path:
    """LP of LP-FT: fit the shared head on frozen features of the last init (once per run).

    Reused when ``out`` was fitted under fingerprint ``fp`` (kept in ``<out>.json``) and loads.
    """
    record = rundir.read_json(out.with_suffix(".json"))
    if out.exists() and (fp is None or (record or {}).get("fingerprint") == fp):
        if rundir.damaged_weights(out) is None:
            log.info("linear probe head %s: reused (fitted under this config)", out)
            return out
        log.warning("linear probe head %s is damaged (%s): fitting it again", out, rundir.damaged_weights(out))
    elif out.exists():
        log.info("linear probe head %s: recomputed (fitted under another config)", out)
    t0 = time.perf_counter()
    model = M.build_reward_model(init_dir, dropout=0.0, seed=cfg.seed)
    tok = M.load_tokenizer(init_dir)
    M.use_threads(cfg.eval_threads)  # the features' passes on every core, one torch thread each
    fc = R.head_features(model, tok, R.texts_of(rows, "chosen"), cfg.max_length, threads=True)
    fr = R.head_features(model, tok, R.texts_of(rows, "rejected"), cfg.max_length, threads=True)
    head = R.fit_linear_probe(fc, fr, epochs=cfg.lp_epochs, lr=cfg.lp_lr, seed=cfg.seed)
    M.save_state_dict(head, out)
    files.atomic_write_json(out.with_suffix(".json"), {"fingerprint": fp})
    acc = float(((fc - fr) @ head["weight"].T > 0).float().mean())
    log.info("linear probe on frozen features: train acc %.3f (%.1fs)", acc, time.perf_counter() - t0)
    return out


def member_fingerprint(spec: MemberSpec, settings: TrainSettings, data_fp: str, head_fp: str | None,
                       init_fp: str) -> str:
    """A member's spec is its fingerprint: what it trains from, on, and how (not where or how fast).
    ``init_fp``: its init's ``sources.dir_fingerprint`` (prepare's checkpoints by their path in the run
    dir, wherever the run dir is)."""
    return rundir.fingerprint({
        "lr": spec.lr, "dropout": spec.dropout, "seed": spec.seed, "init": init_fp, "data": data_fp,
        "head": head_fp, "epochs": settings.epochs, "batch_size": settings.batch_size,
        "max_length": settings.max_length, "weight_decay": settings.weight_decay, "dtype": settings.dtype,
        "lr_schedule": settings.lr_schedule,
        "workers_per_member": settings.workers_per_member,
        # only when used: members trained before warm-up existed keep their fingerprints
        **({"warmup": settings.warmup} if settings.warmup else {}),
    })


def member_dir(warm_dir: Path, index: int) -> Path:
    return warm_dir / "members" / f"member_{index}"


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
        lr_schedule=cfg.lr_schedule, warmup=cfg.warmup, checkpoint_every=cfg.checkpoint_every,
        log_every=cfg.log_every, sync_every=cfg.sync_every,
        num_threads=cfg.trainer.num_threads, device=cfg.trainer.device, dtype=cfg.trainer.dtype,
        parameter_server=ps_name(warm_dir) if cfg.sync_every else None, namespace=NAMESPACE,
        run_dir=str(warm_dir.parent.absolute()),
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
        .remote(s, settings, str(member_dir(warm_dir, s.index)))
        for s in specs
    }


def open_members(specs, fps: dict[int, str], warm_dir: Path, resume: bool) -> tuple[dict[int, dict], list]:
    """(finished members' summaries, specs still to train). A finished member whose ``final/``
    weights are damaged is rebuilt from its checkpoint (or retrained from its last readable state);
    an unfinished one continues from its checkpoint with ``resume``, else starts over."""
    summaries: dict[int, dict] = {}
    todo = []
    for s in specs:
        d = member_dir(warm_dir, s.index)
        what = f"member {s.index}"
        done = rundir.reuse(d, fps[s.index], what)
        if done is not None:
            why = rundir.damaged_weights(d / "final")
            if why is None:
                summaries[s.index] = done
                continue
            log.warning("member %d: %s is damaged (%s): rebuilding it from the member's last readable "
                        "checkpoint", s.index, d / "final" / "model.safetensors", why)
            rundir.forget(d)
            shutil.rmtree(d / "final", ignore_errors=True)
            rundir.start(d, fps[s.index], what, resume=True)
        else:
            rundir.start(d, fps[s.index], what, resume=resume)
        todo.append(s)
    return summaries, todo


def drop_stale_members(warm_dir: Path, m: int) -> None:
    """Member dirs beyond the current ``warm.m``: removed, so every reader sees exactly M members."""
    for d in sorted((warm_dir / "members").glob("member_*")):
        if d.is_dir() and not (d.name.split("_")[-1].isdigit() and int(d.name.split("_")[-1]) < m):
            log.info("%s is not a member of this config (m=%d): removed", d, m)
            shutil.rmtree(rundir.inside(d))


def train_members(cfg: WarmConfig, specs, settings, warm_dir: Path, ps, fps: dict[int, str],
                  resume: bool = True) -> dict[int, dict]:
    """Train every unfinished member concurrently; push each to the server as it finishes."""
    summaries, todo = open_members(specs, fps, warm_dir, resume)
    trainers = start_trainers(cfg, todo, settings, warm_dir) if todo else {}
    pending = {trainers[s.index].train.remote(): s.index for s in todo}
    trained = set(pending.values())
    log.info("training %d members concurrently (%s each)", len(pending), actor_options(cfg.trainer))
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            idx = pending.pop(ready[0])
            summaries[idx] = rundir.finish(member_dir(warm_dir, idx), fps[idx],
                                           files.portable_paths(ray.get(ready[0]), warm_dir.parent))
            # weights move as an ObjectRef from the trainer straight to the server
            status = ray.get(ps.push.remote(str(idx), trainers[idx].get_weights.remote(),
                                            {"final": True, "fingerprint": fps[idx]}))
            if not status["accepted"]:
                log.warning(status["reason"])
            # the server holds the weights now: free the trainer's resources at once, so members that
            # wait for them (M trainers on fewer slots than M) start instead of waiting forever
            ray.kill(trainers.pop(idx))
    finally:  # trainers still held after an error
        for t in trainers.values():
            ray.kill(t)
    held = ray.get(ps.info.remote())["members"]
    for idx in summaries:
        if idx in trained:
            continue
        # finished in an earlier life of this run: the server's copy is used only if it is this member's
        if held.get(str(idx), {}).get("fingerprint") == fps[idx]:
            continue
        log.info("member %d: parameter server copy missing or stale: restored from %s", idx,
                 member_dir(warm_dir, idx) / "final")
        sd = M.load_reward_model(member_dir(warm_dir, idx) / "final").state_dict()
        ray.get(ps.push.remote(str(idx), sd, {"final": True, "fingerprint": fps[idx]}))
    return summaries


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------


def eval_sets(splits: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The sets of the table, those that have rows (user data may have no flipped labels, no OOD split)."""
    train = splits["train"]
    sets = {
        RS.TRAIN_CLEAN: [r for r in train if not r["corrupted"]],
        # agreement with the flipped label: memorisation of noise
        RS.TRAIN_CORRUPTED: [r for r in train if r["corrupted"]],
        RS.SELECTION: splits["selection"],
        RS.TEST_ID: splits["test_id"],
        RS.TEST_OOD: splits.get("test_ood", []),
    }
    return {k: v for k, v in sets.items() if v}


def disagreement(margins: list[torch.Tensor]) -> float:
    """Share of pairs on which the members do not all prefer the same side (no labels needed)."""
    votes = torch.stack([m > 0 for m in margins]).float().mean(0)
    return float(((votes > 0) & (votes < 1)).float().mean())


def _load_into(template, sd):
    """Load ``sd`` into the one evaluation model and return it (the same object every time:
    a result must be scored before the next load)."""
    template.load_state_dict(sd)
    return template


def select_members(member_ids: list[str], selection_acc: dict[str, float], soup_acc) -> dict:
    """Best single member and greedy soup, from selection-split accuracies only."""
    order = sorted(member_ids, key=lambda i: (-selection_acc[i], int(i)))
    soup, acc = greedy_soup(order, selection_acc[order[0]], soup_acc)
    return {"best_member": order[0], "greedy_members": soup, "greedy_selection_acc": acc}


def label_lines(origin: str) -> list[str]:
    """Where the labels of a study seed's pairs come from (its ``labels.json`` beside the data): the label
    source, the judge, the noise injected; nothing for data trained on as given."""
    rec = rundir.read_json(Path(origin).parent / "labels.json") if origin and origin != "benchmark" else None
    if not rec:
        return []
    return [f"- labels: {rec.get('labels', 'data')} (source `{rec['own_data']}`)"
            + (f"; judge (plays gold, never trained on): {rec['judge']}" if rec.get("judge") else ""),
            f"- label noise injected: {100 * rec['label_noise']:.0f}% of training labels flipped "
            f"(seed {rec['label_seed']}, flagged; {100 * rec['corruption_rate']:.1f}% flipped)"]


def rm_card(title: str, members: list[MemberSpec], weights: list[float], prefs: Preferences, row: dict[str, float],
            max_length: int, run_dir: str | Path | None = None) -> str:
    """The model card of a saved average (WARM RM, greedy soup): members, weights, data, metrics. An
    init inside ``run_dir`` is named by its path in the run dir."""

    def init(s: MemberSpec) -> str:
        return f"`{s.init_dir}`" if run_dir is None else files.shown(s.init_dir, run_dir)

    member_lines = ["| member | weight | lr | dropout | seed | init |", "|---:|---:|---:|---:|---:|---|",
                    *[f"| {s.index} | {w:.4g} | {s.lr:g} | {s.dropout:g} | {s.seed} | {init(s)} |"
                      for s, w in zip(members, weights)]]
    return M.model_card(
        title, "reward-model",
        f"A weight-averaged reward model (WARM, Ramé et al. 2024) of {len(members)} members fine-tuned from a shared "
        "init with different hyperparameters, made by warm-ray. One scalar per (prompt + completion) text; higher "
        "is preferred.",
        {"Members": member_lines,
         "Data": [f"- preference data: `{prefs.origin}`",
                  "- pairs: " + ", ".join(f"{k} {len(v)}" for k, v in prefs.splits.items()),
                  f"- pairs skipped (chosen equals rejected): {prefs.skipped}",
                  f"- max length: {max_length} tokens of prompt + completion", *label_lines(prefs.origin)],
         "Metrics (pairwise accuracy)": ["| set | accuracy |", "|---|---:|",
                                         *[f"| {k} | {v:.3f} |" for k, v in row.items()]]},
        M.RM_LOAD_SNIPPET.replace("max_length=max_length", f"max_length={max_length}"))


def evaluate(cfg: WarmConfig, warm_dir: Path, ps, prefs: Preferences, member_ids: list[str],
             specs: list[MemberSpec], shared_init: str) -> dict:
    """Selection (selection split only), then the table on every set, the saved WARM RM and greedy
    soup, and WARM's precondition: linear mode connectivity of the members and their task vectors
    from ``shared_init`` (the init the shared LP head was fitted on)."""
    sets = eval_sets(prefs.splits)
    by_index = {str(s.index): s for s in specs}
    member_dirs = {i: member_dir(warm_dir, int(i)) / "final" for i in member_ids}
    tok = M.load_tokenizer(member_dirs[member_ids[0]])
    members = {i: M.load_reward_model(d) for i, d in member_dirs.items()}
    template = M.load_reward_model(member_dirs[member_ids[0]])

    encoded = S.encode_pairs(tok, sets, cfg.max_length, cfg.eval_batch_size)  # every set tokenized once

    # every member's margins on every set, computed once; selection reads the selection split's only
    margins = dict(zip(members, S.pair_margins(list(members.values()), encoded)))

    # 1. selection: reads the selection split and nothing else
    sel = {i: R.accuracy(margins[i][RS.SELECTION]) for i in member_ids}
    chosen = select_members(member_ids, sel, lambda ids: R.accuracy(S.pair_margins(
        [_load_into(template, ray.get(ps.average_of.remote(ids)))], {RS.SELECTION: encoded[RS.SELECTION]})[0][RS.SELECTION]))

    # 2. reporting, on every set
    member_acc = {i: {k: R.accuracy(v) for k, v in margins[i].items()} for i in member_ids}
    # ENS: the average of the members' predictions (M forward passes per input)
    ens_acc = {k: R.accuracy(sum(margins[i][k] for i in member_ids) / len(member_ids)) for k in sets}
    warm_model = _load_into(template, ray.get(ps.get_weights.remote()))
    greedy_ids = chosen["greedy_members"]
    greedy = copy.deepcopy(template)
    greedy.load_state_dict(ray.get(ps.average_of.remote(greedy_ids)))
    # a soup of one member is that member, and a soup of all is the WARM average: their numbers
    # are those, not another pass over every set
    soup_is = (greedy_ids[0] if len(greedy_ids) == 1 else "warm" if sorted(greedy_ids) == sorted(member_ids)
               else None)
    scored = S.pair_margins([warm_model] + ([greedy] if soup_is is None else []), encoded)
    warm_acc = {k: R.accuracy(v) for k, v in scored[0].items()}
    greedy_acc = ({k: R.accuracy(v) for k, v in scored[1].items()} if soup_is is None
                  else warm_acc if soup_is == "warm" else member_acc[soup_is])
    M.save_model(warm_model, warm_dir / "warm_rm", tok, rm_card(
        "WARM reward model", [by_index[i] for i in member_ids], [1 / len(member_ids)] * len(member_ids), prefs,
        warm_acc, cfg.max_length, warm_dir.parent))
    M.save_model(greedy, warm_dir / "greedy_soup_rm", tok, rm_card(
        "Greedy-soup reward model (members chosen on the selection split)", [by_index[i] for i in greedy_ids],
        [1 / len(greedy_ids)] * len(greedy_ids), prefs, greedy_acc, cfg.max_length, warm_dir.parent))
    table = RS.warm_table(member_acc, ens=ens_acc, warm=warm_acc, greedy=greedy_acc, best_member=chosen["best_member"])

    lmc = geometry = None
    t_lmc = time.perf_counter()
    if len(member_ids) >= 2 and cfg.lmc_points >= 2:
        lmc = connectivity(cfg, members, template, tok, sets, margins, scored[0])
        geometry = task_vector_geometry(cfg, warm_dir, {i: members[i].state_dict() for i in member_ids},
                                        [by_index[i] for i in member_ids], template, shared_init)
    if lmc is not None:
        lmc["seconds"] = round(time.perf_counter() - t_lmc, 1)
    return {"table": table, **chosen, "lmc": lmc, "geometry": geometry, "sets": list(sets), "data": prefs.origin,
            "skipped_identical": prefs.skipped,
            # labels not needed: how often the members split on a pair (user data without gold or clean labels)
            "member_disagreement": {k: disagreement([margins[i][k] for i in member_ids]) for k in sets},
            "models_at_inference": {RS.ENS: len(member_ids), RS.WARM: 1, RS.GREEDY_SOUP: 1}}


# ------------------------------------------------------------------------------------------
# Linear mode connectivity and task-vector geometry (WARM's precondition, warm_ray.lmc)
# ------------------------------------------------------------------------------------------


def lmc_sets(sets: dict[str, list[dict]], max_pairs: int, report_pairs: int) -> dict[str, slice]:
    """Which pairs of each set the LMC curves score: the selection split (the verdict, and the recipe
    rule's barrier) cut to its first ``max_pairs`` pairs; clean training pairs and the test splits, which
    are reported only, to their first ``report_pairs`` (0: all)."""
    keep = (RS.SELECTION, RS.TRAIN_CLEAN, RS.TEST_ID, RS.TEST_OOD)
    return {k: slice(0, (max_pairs if k == RS.SELECTION else report_pairs) or None) for k in keep if k in sets}


def connectivity(cfg: WarmConfig, members: dict, template, tok, sets: dict[str, list[dict]],
                 margins: dict[str, dict[str, torch.Tensor]], warm_margins: dict[str, torch.Tensor]) -> dict:
    """Loss and accuracy along the line between every member pair (WARM Fig. 3), their barriers, the
    gap at WARM itself, and the verdict on the selection split, which the log states in one line."""
    cut = lmc_sets(sets, cfg.lmc_max_pairs, cfg.lmc_report_pairs)
    rows = {k: sets[k][c] for k, c in cut.items()}
    ends = {i: {k: m[k][c] for k, c in cut.items()} for i, m in margins.items()}
    encoded = S.encode_pairs(tok, rows, cfg.max_length, cfg.eval_batch_size)  # once for every point of every line

    def margins_of(sd) -> dict[str, torch.Tensor]:
        return S.pair_margins([_load_into(template, sd)], encoded)[0]

    ts = lmc.interpolation_points(cfg.lmc_points)
    pairs = lmc.pair_curves({i: m.state_dict() for i, m in members.items()}, ts, margins_of, ends,
                            lambda sds, w: merge.average(sds, w))
    summary = lmc.summarise(pairs)
    split = RS.SELECTION if RS.SELECTION in summary else next(iter(summary))
    connected, line = lmc.verdict(summary, split, cfg.lmc_tolerance)
    return {"t": ts, "pairs": pairs, "summary": summary, "split": split, "tolerance": cfg.lmc_tolerance,
            "connected": connected, "verdict": line, "pairs_per_set": {k: len(v) for k, v in rows.items()},
            "average_gap": lmc.average_gap({i: {k: m[k] for k in sets} for i, m in margins.items()}, warm_margins)}


def task_vector_geometry(cfg: WarmConfig, warm_dir: Path, member_sds: dict[str, dict], specs: list[MemberSpec],
                         template, shared_init: str) -> dict:
    """Task vectors from the shared init (the last featurizer init with the shared LP head, where
    every member's head starts): norms, pairwise cosines, and each member's distance from its own
    (Baklava) init; every parameter counted once."""
    head_path = warm_dir / "lp_head.safetensors"
    head = M.load_state_dict(head_path) if head_path.exists() else None

    def init_sd(init_dir: str) -> dict[str, torch.Tensor]:
        model = M.build_reward_model(init_dir, dropout=0.0, seed=cfg.seed)
        if head is not None:
            R.load_head(model, head)
        return model.state_dict()

    inits = {d: init_sd(d) for d in dict.fromkeys([shared_init, *(s.init_dir for s in specs)])}
    own = {str(s.index): inits[s.init_dir] for s in specs}
    return lmc.geometry(inits[shared_init], member_sds, lmc.unique_parameter_names(template), own)


def plot_lmc(lmc_result: dict, path: Path) -> None:
    """Bradley-Terry loss (top) and accuracy (bottom) along the line between member pairs, per set,
    each pair beside the straight line between its ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(lmc_result["pairs"].values())))
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 5.6), squeeze=False)
    ts = lmc_result["t"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, name in enumerate(names):
        for j, (pair, curve) in enumerate(lmc_result["pairs"].items()):
            c = colors[j % len(colors)]
            for row, key in enumerate(("loss", "acc")):
                v = curve[name][key]
                axes[row][col].plot(ts, v, "o-", color=c, ms=3, label=f"members {pair}")
                axes[row][col].plot([0, 1], [v[0], v[-1]], "--", color=c, alpha=0.5)
        axes[0][col].set_title(f"{name} (barrier {lmc_result['summary'][name]['loss_barrier_max']:+.3f})", fontsize=9)
        axes[1][col].set_xlabel("t in (1-t)·φ_a + t·φ_b")
    axes[0][0].set_ylabel("Bradley-Terry loss")
    axes[1][0].set_ylabel("pairwise accuracy")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(("connected" if lmc_result["connected"] else "NOT connected")
                 + f" on {lmc_result['split']} (loss barrier tolerance {lmc_result['tolerance']:g}); dashed: straight line",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(table: dict[str, dict[str, float]], disagreement: dict[str, float] | None = None) -> str:
    sets = [k for k in SETS if k in next(iter(table.values()))]
    head = "| model | " + " | ".join(sets) + " |\n|---|" + "---:|" * len(sets) + "\n"
    rows = "".join(f"| {name} | " + " | ".join(f"{v[k]:.3f}" for k in sets) + " |\n" for name, v in table.items())
    if disagreement:
        rows += "| members disagree (share of pairs) | " + " | ".join(f"{disagreement[k]:.3f}" for k in sets) + " |\n"
    return head + rows


def warm_fingerprint(cfg: WarmConfig, fps: dict[int, str]) -> str:
    """The stage's outputs (average, soups, tables, plot) depend on its members and on these."""
    return rundir.fingerprint({"members": [fps[i] for i in sorted(fps)], "max_length": cfg.max_length,
                               "eval_batch_size": cfg.eval_batch_size, "lmc_points": cfg.lmc_points,
                               "lmc_tolerance": cfg.lmc_tolerance, "lmc_max_pairs": cfg.lmc_max_pairs,
                               "lmc_report_pairs": cfg.lmc_report_pairs})


def _report(warm_dir: Path, results: dict) -> None:
    lmc_result = results.get("lmc")
    if lmc_result:
        # the precondition's verdict, whether computed now or reused
        (log.info if lmc_result["connected"] else log.warning)("%s", lmc_result["verdict"])
    else:
        log.info("linear mode connectivity not measured (warm.lmc_points = 0, or one member)")
    files.publish(warm_dir, results, markdown_table(results["table"], results.get("member_disagreement"))
              + (lmc.markdown(lmc_result, results.get("geometry")) if lmc_result else ""),
              f"WARM with M={len(results['members'])} members (pairwise accuracy; train_corrupted = memorisation):",
              f"WARM RM: {warm_dir / 'warm_rm'}   plot: {warm_dir / 'lmc.png'}   ({results['seconds']['total']}s)")


def run_warm(config: Config, resume: bool = True) -> dict:
    """Train the members and evaluate WARM. Finished work of the same fingerprint is reused;
    ``resume``: unfinished members continue from their checkpoints (else they start over)."""
    cfg = config.warm
    warm_dir = Path(config.run_dir) / "warm"
    warm_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, cfg.trainer.num_threads))
    inits = featurizer_dirs(config)
    prefs = preferences(config, M.load_tokenizer(inits[-1]), f"the tokenizer of the RM init {inits[-1]}")
    specs = member_specs(cfg, inits)
    data_fp = prefs.fingerprint
    init_fps = {d: dir_fingerprint(d, config.run_dir) for d in inits}
    head_fp = lp_fingerprint(cfg, init_fps[inits[-1]], data_fp)
    head_path = warm_dir / "lp_head.safetensors"
    settings = train_settings(cfg, prefs.data_dir, head_path, warm_dir)
    fps = {s.index: member_fingerprint(s, settings, data_fp, head_fp, init_fps[s.init_dir]) for s in specs}
    drop_stale_members(warm_dir, cfg.m)
    stage_fp = warm_fingerprint(cfg, fps)
    done = rundir.reuse(warm_dir, stage_fp, f"warm in {warm_dir}", clear=False)
    if done is not None:
        damaged = [f"{p}: {why}" for p in [*(member_dir(warm_dir, s.index) / "final" for s in specs),
                                           warm_dir / "warm_rm", warm_dir / "greedy_soup_rm"]
                   if (why := rundir.damaged_weights(p)) is not None]
        if not damaged:
            done["members"] = {int(i): m for i, m in done["members"].items()}  # JSON keys are strings
            save_config(config, warm_dir)
            _report(warm_dir, done)
            return done
        log.warning("warm in %s: damaged weights %s: rebuilding them", warm_dir, "; ".join(damaged))
        rundir.forget(warm_dir)
    linear_probe(cfg, inits[-1], prefs.splits["train"], head_path, head_fp)
    ensure_ray()
    ps = start_parameter_server(warm_dir)
    # the server keeps exactly the members of this config, each under its fingerprint
    ray.get(ps.retain.remote({str(i): fp for i, fp in fps.items()}))
    summaries = train_members(cfg, specs, settings, warm_dir, ps, fps, resume=resume)
    t_train = time.perf_counter() - t0
    info = ray.get(ps.info.remote())
    member_ids = [i for i in map(str, range(cfg.m)) if i in info["members"]]
    if not member_ids:
        raise RuntimeError(f"no member survived: {info['excluded']}")
    # the trainers are done: evaluation may use the cores they had
    M.use_threads(cfg.eval_threads)
    results = evaluate(cfg, warm_dir, ps, prefs, member_ids, specs, inits[-1])
    ray.kill(ps)  # everything it holds is persisted
    results.update(
        members={i: {**asdict(s), **summaries.get(s.index, {}), "fingerprint": fps[s.index]}
                 for i, s in enumerate(specs)},
        excluded=info["excluded"], average_version=info["version"],
        seconds={"train": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)},
    )
    # the members' inits by their path in the run dir (results.json and unit.json are records of it)
    results = files.portable_paths(results, config.run_dir)
    if results["lmc"]:
        plot_lmc(results["lmc"], warm_dir / "lmc.png")
    else:
        (warm_dir / "lmc.png").unlink(missing_ok=True)
    save_config(config, warm_dir)
    _report(warm_dir, results)
    rundir.finish(warm_dir, stage_fp, results)
    return results
