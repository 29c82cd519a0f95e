"""What `warm-ray study` writes and shows: its tables, plots and the demo's last screen.

Presentation only: every number here was computed by ``actors.study`` (claims, per-seed parts) and
is read from its results, never recomputed differently. In ``<run_dir>/study``:

    claims.json / claims.md     the claims table (``write_claims``), rewritten after every seed
    results.json / results.md   the member recipe, the claims, the per-seed tables (``report_tables``)
    bon.png, rm.png             Best-of-N gold against KL, reward-model accuracies (``write_plots``)
    rl.png / warp.png           when those parts ran (``actors.study_rl``)

``demo_summary`` is the last screen of `warm-ray demo`. The readers of one seed's numbers
(``_acc``, ``_rl``, ``_gold_at``, ``_rl_front``) live here too: the claims read them the same way.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from warm_ray import files
from warm_ray import results as RS
from warm_ray import stats
from warm_ray.config import Config

RM_ROWS = RS.MODELS
RM_COLS = RS.SETS

# the parts of a seed, in the order they run (the driver's) and are tabled
PART_ORDER = ("rm", "bon", "rl", "warp")


# ------------------------------------------------------------------------------------------
# One seed's numbers, read the same way by the tables and by the claims (``actors.study``)
# ------------------------------------------------------------------------------------------


def _acc(seed: dict, model: str, split: str) -> float:
    """Accuracy of ``model`` on ``split`` in a seed's rm part; NaN on an OOD set the data does not have."""
    res = RS.WarmResults.from_json(seed["rm"])
    if split == RS.TEST_OOD and split not in res.table.get(model, {RS.TEST_OOD: None}):
        return math.nan
    return res.acc(model, split)


def _rl(seed: dict, arm: str, beta: float, key: str) -> float:
    return seed["rl"]["runs"][f"{arm}_beta_{beta:g}"][key]


def _gold_at(run: dict, kl: float) -> float:
    """Gold of one RL run at ``kl``, interpolated on its (pooled) held-out curve, never extrapolated:
    from the curve, so a KL target added after the run still has its number."""
    curve = run["curve"]
    return stats.value_at([p["kl"] for p in curve], [p["gold"] for p in curve], [kl])[0]


# how the pooled-over-β front is named in claims and tables
POOLED = "mean over β"


def _rl_front(seed: dict, arm: str, betas: tuple[float, ...], kl: float | None = None) -> float:
    """One arm's RL front pooled over the β grid: at a KL target, the mean over β of the gold
    interpolated at that KL on each β's curve, NaN (no number for the seed) unless every β's curve
    reaches it; without ``kl``, the mean over β of the held-out peak gold.

    A mean, not the upper envelope: the envelope is a max over noisy curves, biased upwards like the
    max of noisy points, more so for an arm whose β curves lie closer together; interpolation and an
    equal-weight mean are linear in the noise, and the same β grid and weights for every arm favour
    none. Where one β's curve stops short of a KL (a larger β keeps KL lower), its gold there is
    unknown, and a mean over the others would stand for another grid.
    """
    values = [_gold_at(seed["rl"]["runs"][f"{arm}_beta_{b:g}"], kl) if kl is not None
              else _rl(seed, arm, b, "peak_gold") for b in betas]
    values = [math.nan if v is None else float(v) for v in values]
    return float(np.mean(values)) if all(math.isfinite(v) for v in values) else math.nan


# ------------------------------------------------------------------------------------------
# Writing the study's outputs
# ------------------------------------------------------------------------------------------


def write_claims(study_dir: Path, rows: list[dict]) -> None:
    """``claims.json`` and ``claims.md``: the claims table as it stands."""
    files.atomic_write_json(study_dir / "claims.json", rows)
    files.atomic_write_text(study_dir / "claims.md", stats.claims_markdown(rows))


def write_plots(seeds: dict[int, dict], study_dir: Path) -> None:
    """``bon.png`` and ``rm.png``, and ``rl.png`` / ``warp.png`` when a seed ran those parts."""
    plot_bon(seeds, study_dir / "bon.png")
    plot_rm(seeds, study_dir / "rm.png")
    if any("rl" in s for s in seeds.values()):
        from actors.study_rl import plot_rl

        plot_rl(seeds, study_dir / "rl.png")
    if any("warp" in s for s in seeds.values()):
        from actors.study_rl import plot_warp

        plot_warp(seeds, study_dir / "warp.png")
    plot_timeline(seeds, study_dir / "timeline.png")


def plot_timeline(seeds: dict[int, dict], path: Path) -> None:
    """A Gantt chart of this run's units: one row per Ray node, one bar per seed and part computed (reused
    parts left out), so a user sees where the cluster sat idle."""
    units = [(s["seed"], p, u) for s in seeds.values() for p, u in s.get("units", {}).items() if not u.get("reused")]
    if not units:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(u["start"] for _, _, u in units)
    nodes = sorted({u["node"] for _, _, u in units})
    colours = {p: c for p, c in zip(PART_ORDER, ("tab:blue", "tab:orange", "tab:green", "tab:red"))}
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.6 * len(nodes)))
    lanes: dict[str, list[float]] = {n: [] for n in nodes}  # stacked bars of one node's overlapping units
    for seed, part, u in sorted(units, key=lambda x: x[2]["start"]):
        free = lanes[u["node"]]
        lane = next((i for i, end in enumerate(free) if end <= u["start"]), len(free))
        if lane == len(free):
            free.append(u["end"])
        else:
            free[lane] = u["end"]
        y = nodes.index(u["node"]) + lane * 0.25
        ax.barh(y, u["end"] - u["start"], left=u["start"] - t0, height=0.22, color=colours.get(part, "grey"))
        ax.text(u["start"] - t0, y, f" s{seed} {part}", va="center", fontsize=7)
    ax.set_yticks(range(len(nodes)), [f"node {n}" for n in nodes])
    ax.set_xlabel("seconds since the first unit started")
    ax.set_title("study units per Ray node (bars: computed parts; gaps: idle)")
    from matplotlib.patches import Patch

    shown = [p for p in PART_ORDER if any(part == p for _, part, _ in units)]
    ax.legend(handles=[Patch(color=colours[p], label=p) for p in shown], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_only(out_dir: Path, results: dict, markdown: str, *_) -> None:
    files.atomic_write_json(out_dir / "results.json", results)
    files.atomic_write_text(out_dir / "results.md", markdown)


def write_results(config: Config, study_dir: Path, results: dict, report: bool = True) -> None:
    """``results.json`` and ``results.md`` (recipe, primary claims first, all claims, per-seed tables);
    ``report``: print them too."""
    seeds, rows = results["seeds"], results["claims"]
    primary = [r for r in rows if r["primary"]]
    publish = files.publish if report else _write_only
    # results.json names the run dir's files (the seeds' dir) by their paths in it
    publish(study_dir, files.portable_paths(results, config.run_dir),
            data_markdown(results.get("data")) + recipe_markdown(results["recipe"])
            + "Primary claims (declared in study.primary before running):\n\n" + stats.claims_markdown(primary)
            + _untested(config.study.primary, rows)
            + "\nAll claims:\n\n" + stats.claims_markdown(rows) + "\n" + report_tables(config, seeds)
            + _alarm_text(results.get("alarm")) + _machine_text(results.get("machine")),
            f"warm-ray study: {len(seeds)} seed(s), parts {', '.join(config.study.parts)}",
            f"claims: {study_dir / 'claims.md'}   plots: {study_dir}/*.png   ({results['seconds']}s)")


def _machine_text(record: dict | None) -> str:
    """The machine this invocation ran on (parts marked reused were computed by an earlier one)."""
    from warm_ray.models import machine_line

    return f"\nRan on: {machine_line(record)} (parts marked reused: by an earlier run).\n" if record else ""


def _untested(primary: list[str], rows: list[dict]) -> str:
    """The declared primary claims no seed has a number for (e.g. no run reached the KL they compare at)."""
    have = {r["name"] for r in rows}
    missing = [c for c in primary if c not in have]
    if not missing:
        return ""
    return ("\nDeclared but not testable on these runs (no seed has a number: at a KL no run reached, or a part "
            "that did not run): " + "; ".join(f"`{c}`" for c in missing) + ".\n")


def _alarm_text(section: dict | None) -> str:
    from actors.study_alarm import alarm_markdown

    lines = alarm_markdown(section)
    return "\n".join(lines) + "\n" if lines else ""


def data_markdown(data: dict | None) -> str:
    """Where the pairs and their labels come from, who plays gold, and the noise injected per seed."""
    if not data:
        return ""
    lines = [f"Data: {data['preferences']}; labels: {data['labels']}; gold (judge): {data['judge'] or 'none'}; "
             f"{100 * data['label_noise']:.0f}% of training labels flipped anew per seed (flagged: memorisation "
             "is measured on them)."]
    if data.get("reversed"):
        lines.append("The judge reversed " + ", ".join(f"{c['reversed']} of {c['pairs']} {name} pairs"
                                                        for name, c in data["reversed"].items()) + " of the data's labels.")
    return "\n".join(lines) + "\n\n"


def recipe_markdown(recipe: dict) -> str:
    lines = [f"Member recipe: **{recipe['chosen']}** ({recipe['rule']})", ""]
    if recipe.get("candidates"):
        lines += ["| recipe | overrides | connected on selection | loss barrier (selection) "
                  "| mean member (selection) |",
                  "|---|---|---|---:|---:|"]
        for name, r in recipe["candidates"].items():
            over = ", ".join(f"`{o}`" for o in recipe["grid"][name]) or "(defaults)"
            lines.append(f"| {name} | {over} | {'yes' if r['connected'] else 'no'} | "
                         f"{r['loss_barrier_selection']:+.4f} | {r['mean_member_selection']:.3f} |")
    return "\n".join(lines) + "\n\n"


# ------------------------------------------------------------------------------------------
# Tables: mean over seeds ± half-width of the t-interval, one table per part that ran
# ------------------------------------------------------------------------------------------


def _mean_ci(values: list[float], level: float) -> str:
    s = stats.summarise_over_seeds(values, level)
    if s["n"] < 2:
        return f"{s['mean']:.3f}"
    return f"{s['mean']:.3f} ± {(s['ci_high'] - s['ci_low']) / 2:.3f}"


def _cell(vals: list, level: float) -> str:
    """Mean ± CI over the seeds that have a number, and how many do."""
    n = len(vals)
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return (_mean_ci(vals, level) + (f" ({len(vals)}/{n})" if len(vals) < n else "")) if vals else "–"


def _mean(vals: list, fmt: str = ".2f") -> str:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return format(float(np.mean(vals)), fmt) if vals else "–"


def report_tables(config: Config, seeds: dict[int, dict]) -> str:
    """The per-seed tables of ``results.md``: reward models, their connectivity, then Best-of-N, RL and
    WARP where those parts ran, and the seconds each part took."""
    study = config.study
    lines = (_rm_lines(seeds, study.level) + _lmc_lines(seeds, study.level) + _bon_lines(seeds, study.level)
             + _rl_lines(seeds, study) + _warp_lines(seeds, study) + _seconds_lines(seeds))
    return "\n".join(lines) + "\n"


def _rm_lines(seeds: dict[int, dict], level: float) -> list[str]:
    lines = [f"Pairwise accuracy, mean over {len(seeds)} seed(s) ± half-width of the {level:.0%} t-interval "
             "(train_corrupted: agreement with the flipped label, i.e. memorisation; lower is better):", "",
             "| model | " + " | ".join(RM_COLS) + " |", "|---|" + "---:|" * len(RM_COLS)]
    for model in RM_ROWS:
        cells = [_cell([_acc(s, model, c) for s in seeds.values()], level) for c in RM_COLS]  # "–": no OOD set
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def _lmc_lines(seeds: dict[int, dict], level: float) -> list[str]:
    with_lmc = {k: s["rm"]["lmc"] for k, s in seeds.items() if s["rm"].get("lmc")}
    if not with_lmc:
        return []
    sets = list(next(iter(with_lmc.values()))["summary"])
    lines = ["", "WARM's precondition, per seed: the largest Bradley-Terry loss barrier (nats) over every member "
             "pair along the line between them (> 0: the interpolation's loss rises above the straight line), "
             "and WARM's loss minus its mean member's (the barrier at the average itself):", "",
             "| seed | connected on selection | " + " | ".join(f"barrier {k}" for k in sets)
             + " | " + " | ".join(f"WARM − mean member {k}" for k in sets) + " |",
             "|---|---|" + "---:|" * (2 * len(sets))]
    for k, lmc_s in with_lmc.items():
        lines.append(f"| {k} | {'yes' if lmc_s['connected'] else 'no'} | "
                     + " | ".join(f"{lmc_s['summary'][n]['loss_barrier_max']:+.4f}" for n in sets) + " | "
                     + " | ".join(f"{lmc_s['average_gap'][n]['loss']:+.4f}" for n in sets) + " |")
    lines.append(f"| mean | {sum(v['connected'] for v in with_lmc.values())}/{len(with_lmc)} | "
                 + " | ".join(_mean_ci([v["summary"][n]["loss_barrier_max"] for v in with_lmc.values()], level)
                              for n in sets) + " | "
                 + " | ".join(_mean_ci([v["average_gap"][n]["loss"] for v in with_lmc.values()], level)
                              for n in sets) + " |")
    return lines


def _bon_lines(seeds: dict[int, dict], level: float) -> list[str]:
    with_bon = [s for s in seeds.values() if "bon" in s]
    if not with_bon:
        return []
    b0 = with_bon[0]["bon"]
    ns = b0["n"]
    lines = ["", f"Best-of-N: expected gold reward of the selected completion ({b0['prompts']} held-out prompts, "
             f"K={b0['samples_per_prompt']} SFT samples each), mean over {len(with_bon)} seed(s):", "",
             "| selector | forward passes | " + " | ".join(f"N={n} (KL {stats.kl_bon(n):.2f})" for n in ns)
             + " | proxy-gold corr. |",
             "|---|---:|" + "---:|" * len(ns) + "---:|"]
    for name in b0["gold"]:
        cells = [_mean_ci([s["bon"]["gold"][name][str(n)] for s in with_bon], level) for n in ns]
        fp = b0["forward_passes"].get(name, "–")
        corr = (f"{np.mean([s['bon']['proxy_gold_corr'][name] for s in with_bon]):.3f}"
                if name in b0["proxy_gold_corr"] else "–")
        lines.append(f"| {name} | {fp} | " + " | ".join(cells) + f" | {corr} |")
    lines += _judged_lines(with_bon, "bon")
    ties = [s["bon"]["gold_ties"] for s in with_bon]
    lines += ["", f"Gold ties between two different samples of one prompt: {100 * float(np.mean(ties)):.2f}% "
              f"(max over seeds {100 * max(ties):.2f}%)."]
    return lines


def _judged_lines(with_part: list[dict], part: str) -> list[str]:
    """On the user's data: who plays gold in ``part``, on what scale, and the judge's work there."""
    judged = [s[part]["judged_by"] for s in with_part if "judged_by" in s[part]]
    if not judged:
        return []
    samples = {"bon": "Best-of-N SFT samples", "rl": "SFT samples, those the arms' rewards are standardised on",
               "warp": "SFT samples of the training prompts, as in the rl part"}[part]
    return ["", f"Gold is the judge {judged[0]['judge']}'s score, standardised on each seed's {samples} "
            f"(gold in SDs of the SFT policy's score); the judge scored {sum(j['scored'] for j in judged)} texts "
            f"({sum(j['cached'] for j in judged)} more from its cache) in {sum(j['seconds'] for j in judged):.1f}s."]


def _rl_lines(seeds: dict[int, dict], study) -> list[str]:
    """One row per RL run (arm and β), then, over more than one β, each arm's front pooled over them."""
    with_rl = [s for s in seeds.values() if "rl" in s]
    if not with_rl:
        return []
    level, kls = study.level, study.kl_targets
    lines = ["", f"RL (held-out evaluation every {study.eval_every} steps on two draws of "
             f"{study.eval_prompts} prompts), mean over {len(with_rl)} seed(s); peak gold: the step "
             "picked on draw A, its gold measured on draw B (max of points: the max of draw A's points, "
             "biased upwards); gold at a KL is interpolated on each run's curve, both draws pooled (– where "
             "a run never got there); adv. SD: the advantage's SD per step, mean over the run; reward SD: "
             "the standardisation's within-prompt SD over the global one on SFT samples; alarm: first step "
             "the members' spread exceeded its SFT multiple, and how many steps before the gold peak it "
             f"fired; β {POOLED}: each arm's front pooled over the β grid (the mean over β where every β "
             "has a number):", "",
             "| arm | β | forward passes | peak gold | max of points | "
             + " | ".join(f"gold @KL={k:g}" for k in kls)
             + " | final KL | adv. SD | reward SD within/global | alarm fired | alarm lead (steps) |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(kls) + "---:|---:|---:|---:|---:|"]
    for name, r0 in with_rl[0]["rl"]["runs"].items():
        runs = [s["rl"]["runs"][name] for s in with_rl]
        leads = [r["alarm_lead_steps"] for r in runs if r.get("alarm_lead_steps") is not None]
        sd = [r.get("reward_standardisation") or {} for r in runs]
        ratio = [d["std_within_prompt"] / d["std_global"] for d in sd if d.get("std_within_prompt")]
        lines.append(f"| {r0['arm']} | {r0['beta']:g} | {r0['forward_passes']} | "
                     f"{_cell([r['peak_gold'] for r in runs], level)} | "
                     f"{_cell([r.get('peak_gold_max_of_points') for r in runs], level)} | "
                     + " | ".join(_cell([_gold_at(r, k) for r in runs], level) for k in kls)
                     + f" | {_mean([r['final_kl'] for r in runs])} | "
                     f"{_mean([r.get('advantage_std_mean') for r in runs], '.3f')} | {_mean(ratio)} | "
                     f"{len(leads)}/{len(runs)} | " + (f"{np.mean(leads):.1f}" if leads else "–") + " |")
    betas = tuple(study.rl_betas)
    if len(betas) > 1:
        for arm in study.rl_arms:
            lines.append(f"| {arm} | {POOLED} | – | {_front_cell(with_rl, arm, betas, level)} | – | "
                         + " | ".join(_front_cell(with_rl, arm, betas, level, k) for k in kls)
                         + " | – | – | – | – | – |")
    return lines + _online_lines(with_rl) + _judged_lines(with_rl, "rl")


def _online_lines(with_rl: list[dict]) -> list[str]:
    """The online arms' refreshes (rl.online): label budget, versions, what a refresh cost, the loop's wait."""
    names = [n for n, r in with_rl[0]["rl"]["runs"].items() if r.get("online")]
    if not names:
        return []
    lines = ["", "Online arms (rl.online; mean over seeds): pairs labelled per run (by the labeller named), reward "
             "versions published, seconds from a refresh's labelling to its pull (it trains while the step scores, "
             "learns and syncs), and the loop's total wait on refreshes against the run's wall time:", "",
             "| run | labeller | labels per run | versions | refresh (s) | wait (s) | wait share of the run |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name in names:
        on = [s["rl"]["runs"][name]["online"] for s in with_rl if s["rl"]["runs"].get(name, {}).get("online")]
        share = [o["refresh_wait_seconds"] / o["run_seconds"] for o in on if o.get("run_seconds")]
        lines.append(f"| {name} | {on[0]['labeller']} | {_mean([o['labels'] for o in on], '.0f')} | "
                     f"{_mean([o['versions'] for o in on], '.1f')} | "
                     f"{_mean([o['refresh_seconds_mean'] for o in on], '.2f')} | "
                     f"{_mean([o['refresh_wait_seconds'] for o in on], '.1f')} | {_mean(share, '.1%')} |")
    return lines


def _front_cell(with_rl: list[dict], arm: str, betas: tuple[float, ...], level: float,
                kl: float | None = None) -> str:
    """``_cell`` of one arm's pooled front, over the seeds whose runs have every β."""
    vals = []
    for s in with_rl:
        try:
            vals.append(_rl_front(s, arm, betas, kl))
        except KeyError:
            vals.append(None)
    return _cell(vals, level)


def _warp_lines(seeds: dict[int, dict], study) -> list[str]:
    with_warp = [s for s in seeds.values() if "warp" in s]
    if not with_warp:
        return []
    kls = study.kl_targets
    lines = ["", f"WARP (last iteration's LITI fronts) against SFT-anchored REINFORCE, gold at matched KL, "
             f"mean over {len(with_warp)} seed(s):", "",
             "| front | " + " | ".join(f"gold @KL={k:g}" for k in kls) + " |", "|---|" + "---:|" * len(kls)]
    for front in ("slerp", "lerp", "reinforce"):
        cells = []
        for k in kls:
            vals = [s["warp"]["gold_at_kl"][front][f"{k:g}"] for s in with_warp]
            vals = [v for v in vals if v is not None and math.isfinite(v)]
            cells.append(_mean_ci(vals, study.level) if vals else "–")
        lines.append(f"| {front} | " + " | ".join(cells) + " |")
    geo = [g for s in with_warp for g in s["warp"]["geometry"] if g.get("angle_deg") is not None]
    if geo:
        def spread(g: dict) -> str:  # the per-tensor angles SLERP acts on (absent from older records)
            t = g.get("per_tensor_angle_deg") or {}
            return "" if t.get("mean") is None else f" (per tensor {t['mean']:.1f} ± {t['sd']:.1f}°)"

        lines += ["", "Task vectors of the parallel runs (runs 0 and 1): angle " + ", ".join(
            f"{g['angle_deg']:.1f}°{spread(g)}" for g in geo) + "; norms " + ", ".join(
            "/".join(f"{n:.2f}" for n in g["norms"]) for g in geo) + " (per seed and iteration)."]
    return lines + _judged_lines(with_warp, "warp")


def _seconds_lines(seeds: dict[int, dict]) -> list[str]:
    """Seconds per seed and part (when the part was computed) and the Ray node it ran on this time
    (``reused``: read from the run dir)."""
    lines = ["", "Seconds per seed and part, and the Ray node it ran on (first 8 hex digits; `timeline.png`):", "",
             "| seed | " + " | ".join(PART_ORDER) + " |", "|---:|" + "---:|" * len(PART_ORDER)]
    for s in seeds.values():
        cells = []
        for p in PART_ORDER:
            unit = s.get("units", {}).get(p)
            where = "" if unit is None else " (reused)" if unit.get("reused") else f" on {unit['node']}"
            cells.append(f"{s['seconds'][p]}{where}" if p in s["seconds"] else "–")
        lines.append(f"| {s['seed']} | " + " | ".join(cells) + " |")
    return lines


# ------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------


def plot_bon(seeds: dict[int, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_bon = [s["bon"] for s in seeds.values() if "bon" in s]
    if not with_bon:
        return
    kl = with_bon[0]["kl"]
    ns = with_bon[0]["n"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name in with_bon[0]["gold"]:
        vals = np.array([[b["gold"][name][str(n)] for n in ns] for b in with_bon])  # [seeds, N]
        mean = vals.mean(0)
        style = ":" if name.startswith("oracle") else "-"
        (line,) = ax.plot(kl, mean, style, marker="o", ms=3, label=name)
        if len(vals) > 1:
            half = np.array([(lambda c: (c["ci_high"] - c["ci_low"]) / 2)(stats.summarise_over_seeds(vals[:, j]))
                             for j in range(len(ns))])
            ax.fill_between(kl, mean - half, mean + half, color=line.get_color(), alpha=0.12)
    ax.set_xlabel("KL(BoN ‖ SFT) = log N - (N-1)/N")
    ax.set_ylabel("gold reward of the selected sample")
    ax.set_title(f"Best-of-N, mean over {len(with_bon)} seed(s) (band: 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_rm(seeds: dict[int, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(RM_ROWS)
    for j, model in enumerate(RM_ROWS):
        vals = np.array([[_acc(s, model, c) for c in RM_COLS] for s in seeds.values()])
        x = np.arange(len(RM_COLS)) + (j - len(RM_ROWS) / 2 + 0.5) * width
        ax.bar(x, vals.mean(0), width, label=model)
        for row in vals:
            ax.plot(x, row, ".", color="k", ms=2)
    ax.set_xticks(np.arange(len(RM_COLS)), RM_COLS)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_ylim(0.3, 1.0)
    ax.set_ylabel("pairwise accuracy")
    ax.set_title(f"Reward models over {len(seeds)} seed(s) (dots: seeds)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------
# The demo's last screen
# ------------------------------------------------------------------------------------------


def demo_summary(results: dict, study_dir: Path) -> str:
    """The last screen of `warm-ray demo`: what was built and where, a few numbers of its one seed,
    and what one seed can and cannot say (the full single-seed tables stay in the run dir)."""
    seed, out = next(iter(results["seeds"].items()))
    seed_dir = Path(results["seeds_dir"]) / f"seed_{seed}"
    lines = [f"What the demo built (seed {seed}, member recipe {results['recipe']['chosen']}):"]
    rm = out["rm"]
    table = RS.WarmResults.from_json(rm)
    lmc = rm.get("lmc")
    lines.append(f"  {'WARM reward model':<33}{seed_dir / 'warm' / 'warm_rm'}  ({table.members} members averaged; "
                 + (f"linearly connected on selection: {'yes' if lmc['connected'] else 'NO'}, loss barrier "
                    f"{lmc['summary'][lmc['split']]['loss_barrier_max']:+.3f})"
                    if lmc else "connectivity not measured)"))
    for part, what in (("rl", "RL policies, one per reward arm"), ("warp", "WARP policies (LITI points)")):
        if part in out:
            lines.append(f"  {what:<33}{seed_dir / part}")
    lines.append(f"  {'plots':<33}{study_dir}/*.png, {seed_dir / 'warm' / 'lmc.png'}")
    lines += ["", "A few of its numbers (one seed):",
              f"  flipped training labels agreed with: WARM {table.acc(RS.WARM, RS.TRAIN_CORRUPTED):.2f}, "
              f"ENS {table.acc(RS.ENS, RS.TRAIN_CORRUPTED):.2f}, "
              f"mean member {table.acc(RS.MEAN_MEMBER, RS.TRAIN_CORRUPTED):.2f}"
              " (lower: less memorised noise)",
              f"  OOD pairwise accuracy: WARM {table.acc(RS.WARM, RS.TEST_OOD):.3f}, "
              f"ENS {table.acc(RS.ENS, RS.TEST_OOD):.3f}, "
              f"best member {table.acc(RS.BEST_MEMBER, RS.TEST_OOD):.3f}"]
    if "bon" in out:
        n = max(int(k) for k in out["bon"]["gold"]["warm"])
        g = out["bon"]["gold"]
        lines.append(f"  Best-of-{n} gold: WARM {g['warm'][str(n)]:.3f}, ENS {g['ens'][str(n)]:.3f}, best single "
                     f"{g['single'][str(n)]:.3f} (gold itself picking: {g['oracle (gold)'][str(n)]:.3f})")
    if "rl" in out:
        lines.append("  RL peak gold on held-out prompts: " + ", ".join(
            f"{name} {r['peak_gold']:.3f}" for name, r in out["rl"]["runs"].items()
            if r.get("peak_gold") is not None))
        lines.append("  reward-hacking alarm (default rule, signals logged at every check): " + ", ".join(
            f"{name} " + ("quiet" if r.get("first_alarm") is None else f"step {r['first_alarm']}")
            + f" (gold peak step {r.get('peak_step')})" for name, r in out["rl"]["runs"].items())
            + "; calibrating it takes several seeds (study.alarm_seeds)")
    lines += ["", "One seed proves nothing: every difference above is within seed-to-seed noise until it is "
              "replicated.",
              "`warm-ray study --run-dir runs/study` replicates it over 5 seeds and reports each claim as a paired",
              f"difference with a 95% CI; this seed's full tables: {study_dir / 'results.md'}"]
    return "\n".join(lines)
