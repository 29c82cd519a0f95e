"""The claims `warm-ray study` tests: the papers' statements as paired differences over seeds.

``claim_specs(study)`` names every claim this config can test, each with the direction the paper claims and a
function of one seed's results; ``claims`` computes them over the seeds that ran their part (``stats.claim_row``:
mean, t-based CI, sign count, p, verdict), primary claims first, Holm-adjusted verdicts beside the secondary ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from actors.study_report import POOLED, _acc, _gold_at, _rl, _rl_front
from warm_ray import results as RS
from warm_ray import stats
from warm_ray.config import Config
from warm_ray.names import ONLINE_ARMS


# ------------------------------------------------------------------------------------------
# Claims: name -> (direction, extractor of one seed's number); the papers' statements
# ------------------------------------------------------------------------------------------


def _gap(seed: dict, split: str, a: str, b: str) -> float:
    """Accuracy of model ``a`` minus that of model ``b`` on ``split``, in one seed's WARM table."""
    return _acc(seed, a, split) - _acc(seed, b, split)


def _bon(seed: dict, selector: str, n: int) -> float:
    return seed["bon"]["gold"][selector][str(n)]


def claim_specs(study) -> dict[str, tuple[str, Callable[[dict], float]]]:
    """Every claim the study can test, for this config's N grid, arms and KL targets.

    The difference is always "first minus second"; direction is the sign the paper claims.
    """
    specs: dict[str, tuple[str, Callable[[dict], float]]] = {
        # WARM Fig. 4 and Sec. 4, on accuracies of the members' evaluation table
        "memorisation: WARM < ENS": ("less", lambda s: _gap(s, RS.TRAIN_CORRUPTED, RS.WARM, RS.ENS)),
        "memorisation: WARM < mean member": (
            "less", lambda s: _gap(s, RS.TRAIN_CORRUPTED, RS.WARM, RS.MEAN_MEMBER)),
        "clean train accuracy: WARM < ENS": ("less", lambda s: _gap(s, RS.TRAIN_CLEAN, RS.WARM, RS.ENS)),
        "ID accuracy: WARM ≈ ENS": ("approx", lambda s: _gap(s, RS.TEST_ID, RS.WARM, RS.ENS)),
        "ID accuracy: WARM > mean member": ("greater", lambda s: _gap(s, RS.TEST_ID, RS.WARM, RS.MEAN_MEMBER)),
        "OOD accuracy: WARM > ENS": ("greater", lambda s: _gap(s, RS.TEST_OOD, RS.WARM, RS.ENS)),
        "OOD accuracy: WARM > mean member": (
            "greater", lambda s: _gap(s, RS.TEST_OOD, RS.WARM, RS.MEAN_MEMBER)),
        "OOD accuracy: WARM > best single": (
            "greater", lambda s: _gap(s, RS.TEST_OOD, RS.WARM, RS.BEST_MEMBER)),
        # a check of the benchmark itself: the OOD split must be harder than ID
        "benchmark: OOD accuracy < ID accuracy (mean member)": (
            "less", lambda s: _acc(s, RS.MEAN_MEMBER, RS.TEST_OOD) - _acc(s, RS.MEAN_MEMBER, RS.TEST_ID)),
    }
    for n in study.bon_n:
        if n == 1:
            continue
        specs[f"BoN gold @N={n}: WARM > best single"] = (
            "greater", lambda s, n=n: _bon(s, "warm", n) - _bon(s, "single", n))
        specs[f"BoN gold @N={n}: WARM > ENS"] = ("greater", lambda s, n=n: _bon(s, "warm", n) - _bon(s, "ens", n))
    top = max(study.bon_n)
    if top > 1:
        specs[f"BoN gold @N={top}: WCO > ENS"] = ("greater", lambda s: _bon(s, "wco", top) - _bon(s, "ens", top))
        specs[f"BoN gold @N={top}: UWO > ENS"] = ("greater", lambda s: _bon(s, "uwo", top) - _bon(s, "ens", top))
    shown = {"single": "best single", "ens": "ENS", "wco": "WCO", "uwo": "UWO", "warm": "WARM",
             "warm_online": "online WARM", "single_online": "online single"}
    offline = [a for a in study.rl_arms if a not in ONLINE_ARMS]
    for beta in study.rl_betas:
        for other in [a for a in offline if a != "warm"]:
            if "warm" not in study.rl_arms:
                break
            specs[f"RL peak gold (β={beta:g}): WARM > {shown[other]}"] = (
                "greater", lambda s, b=beta, o=other: _rl(s, "warm", b, "peak_gold") - _rl(s, o, b, "peak_gold"))
            for kl in study.kl_targets:
                specs[f"RL gold @KL={kl:g} (β={beta:g}): WARM > {shown[other]}"] = (
                    "greater", lambda s, b=beta, o=other, kl=kl: _rl_at(s, "warm", b, kl) - _rl_at(s, o, b, kl))
        for cons in [a for a in ("wco", "uwo") if a in study.rl_arms and "ens" in study.rl_arms]:
            # Coste et al. 2023: the conservative objectives over-optimise less than the mean
            specs[f"RL peak gold (β={beta:g}): {cons.upper()} > ENS"] = (
                "greater", lambda s, b=beta, c=cons: _rl(s, c, b, "peak_gold") - _rl(s, "ens", b, "peak_gold"))
    if len(study.rl_betas) > 1:
        # the same pairs on each arm's front pooled over the β grid (``_rl_front``)
        betas = tuple(study.rl_betas)
        for other in [a for a in offline if a != "warm" and "warm" in study.rl_arms]:
            specs[f"RL peak gold ({POOLED}): WARM > {shown[other]}"] = (
                "greater", lambda s, o=other: _rl_front(s, "warm", betas) - _rl_front(s, o, betas))
            for kl in study.kl_targets:
                specs[f"RL gold @KL={kl:g} ({POOLED}): WARM > {shown[other]}"] = (
                    "greater", lambda s, o=other, kl=kl: _rl_front(s, "warm", betas, kl) - _rl_front(s, o, betas, kl))
        for cons in [a for a in ("wco", "uwo") if a in study.rl_arms and "ens" in study.rl_arms]:
            specs[f"RL peak gold ({POOLED}): {cons.upper()} > ENS"] = (
                "greater", lambda s, c=cons: _rl_front(s, c, betas) - _rl_front(s, "ens", betas))
    specs.update(_online_specs(study, shown))
    for kl in study.kl_targets:
        specs[f"WARP gold @KL={kl:g}: SLERP > LERP"] = (
            "greater", lambda s, kl=kl: _warp_at(s, "slerp", kl) - _warp_at(s, "lerp", kl))
        specs[f"WARP gold @KL={kl:g}: WARP front > SFT-anchored REINFORCE"] = (
            "greater", lambda s, kl=kl: _warp_at(s, "slerp", kl) - _warp_at(s, "reinforce", kl))
    # WARP Sec. 4: SLERP gives more reward than LERP "at slightly more KL". At M = 2, λ = 1/2 per-tensor
    # SLERP is LERP scaled by 1/cos(Ω/2), so at matched KL the fronts differ only through the spread of
    # per-tensor angles: compare the merged end points (η = 1, before LITI) and matched η as well.
    # A seed whose η grid lacks the η has no number (KeyError: left out).
    specs["WARP gold at the merged end point (η=1): SLERP > LERP"] = (
        "greater", lambda s: _warp_eta(s, "slerp", 1.0, "gold") - _warp_eta(s, "lerp", 1.0, "gold"))
    specs["WARP KL at the merged end point (η=1): SLERP > LERP"] = (
        "greater", lambda s: _warp_eta(s, "slerp", 1.0, "kl") - _warp_eta(s, "lerp", 1.0, "kl"))
    specs["WARP gold @η=0.5: SLERP > LERP"] = (
        "greater", lambda s: _warp_eta(s, "slerp", 0.5, "gold") - _warp_eta(s, "lerp", 0.5, "gold"))
    return specs


def _online_specs(study, shown: dict[str, str]) -> dict[str, tuple[str, Callable[[dict], float]]]:
    """Online WARM (rl.online) against offline WARM (the same members, never refreshed), against the best single
    member refreshed on the same label budget, and online single against offline single: per β and pooled."""
    specs: dict[str, tuple[str, Callable[[dict], float]]] = {}
    pairs = [(a, b) for a, b in (("warm_online", "warm"), ("warm_online", "single_online"), ("single_online", "single"))
             if a in study.rl_arms and b in study.rl_arms]
    # (the front's name, its β; None: pooled over the β grid)
    fronts = [(f"β={beta:g}", beta) for beta in study.rl_betas] + ([(POOLED, None)] if len(study.rl_betas) > 1 else [])
    for a, b in pairs:
        for front, beta in fronts:
            specs[f"RL peak gold ({front}): {shown[a]} > {shown[b]}"] = (
                "greater", lambda s, a=a, b=b, beta=beta: _arm_peak(s, a, beta, study.rl_betas) - _arm_peak(
                    s, b, beta, study.rl_betas))
            for kl in study.kl_targets:
                specs[f"RL gold @KL={kl:g} ({front}): {shown[a]} > {shown[b]}"] = (
                    "greater", lambda s, a=a, b=b, beta=beta, kl=kl: _arm_peak(s, a, beta, study.rl_betas, kl)
                    - _arm_peak(s, b, beta, study.rl_betas, kl))
    return specs


def _arm_peak(seed: dict, arm: str, beta: float | None, betas, kl: float | None = None) -> float:
    """One arm's peak gold (or gold at ``kl``) at β, or on its front pooled over ``betas`` (β None)."""
    if beta is None:
        return _rl_front(seed, arm, tuple(betas), kl)
    return _rl(seed, arm, beta, "peak_gold") if kl is None else _rl_at(seed, arm, beta, kl)


def _rl_at(seed: dict, arm: str, beta: float, kl: float) -> float:
    return _gold_at(seed["rl"]["runs"][f"{arm}_beta_{beta:g}"], kl)


def _warp_at(seed: dict, front: str, kl: float) -> float:
    return seed["warp"]["gold_at_kl"][front][f"{kl:g}"]


def _warp_eta(seed: dict, method: str, eta: float, key: str) -> float:
    """``key`` (gold, kl, proxy) of the last iteration's LITI point at η of the SLERP or LERP front."""
    v = seed["warp"]["at_eta"][method][f"{eta:g}"][key]
    return math.nan if v is None else v  # gold is None off the benchmark's prompts


def claims(config: Config, seeds: dict[int, dict]) -> list[dict]:
    """One row per claim whose numbers exist in every seed that ran its part (NaN seeds are dropped):
    ``stats.claim_row`` (CI, verdict, p) and, for the secondary claims, the Holm-adjusted p and
    verdict (``p_holm``, ``verdict_holm``; None on the primary rows)."""
    study = config.study
    specs = claim_specs(study)  # study.primary was checked against these by run_study
    rows = []
    for name, (direction, fn) in specs.items():
        diffs = []
        for s in seeds.values():
            try:
                v = fn(s)
            except KeyError:
                continue  # the part of this claim did not run
            if v is not None and math.isfinite(v):
                diffs.append(float(v))
        if not diffs:
            continue
        row = stats.claim_row(name, diffs, "approx" if direction == "approx" else direction,
                              tol=study.approx_tol if direction == "approx" else None, level=study.level)
        row["primary"] = name in study.primary
        row["seeds_missing"] = len(seeds) - len(diffs)
        rows.append(row)
    rows.sort(key=lambda r: not r["primary"])
    # multiplicity: Holm over the secondary claims at α = 1 - level, beside the raw verdicts; the
    # primary claims, declared before running, keep theirs (and show their raw p)
    return stats.adjust_holm(rows, study.level, family=[not r["primary"] for r in rows])
