"""Judging policies after RL: held-out samples scored by gold and by proxies, and gold win rates."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from actors.learner import score_samples
from actors.rollout import HFBackend, Sample
from warm_ray.config import RLConfig
from warm_ray.gold import gold_rewards

RewardFn = Callable[[list[str], list[str]], list[float]]


def gold_reward(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """The benchmark's gold reward as an RL reward (reward "gold": an oracle run, no RM)."""
    return gold_rewards(list(completions), list(prompts))


def win_rate(gold_a: Sequence[float], gold_b: Sequence[float]) -> dict[str, float]:
    """Share of prompts where policy a's completion has the higher gold reward; a tie counts 1/2."""
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(gold_a, gold_b)]
    p = sum(wins) / len(wins)
    return {"win_rate": p, "stderr": math.sqrt(p * (1 - p) / len(wins)), "n": len(wins),
            "ties": sum(w == 0.5 for w in wins)}


@torch.no_grad()
def evaluate_policy(policy_dir: str, sft, prompts: list[str], cfg: RLConfig, scorers: dict[str, RewardFn],
                    seed: int, gold: bool | RewardFn = True) -> tuple[list[Sample], dict]:
    """One sample per held-out prompt at the training temperature; gold (``True``: the benchmark's gold
    reward, on its prompts; a reward fn: that judge, e.g. ``warm_ray.judge.JudgedGold``; ``False``: none),
    each proxy, KL to SFT."""
    backend = HFBackend(policy_dir)
    samples = backend.generate(prompts, n=1, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                               seed=seed)
    texts = [s.completion for s in samples]
    args = (cfg.temperature, sft.config.pad_token_id or 0, torch.device("cpu"), None)
    kl = score_samples(backend.model, samples, *args).seq_logp - score_samples(sft, samples, *args).seq_logp
    sample_prompts = [s.prompt for s in samples]
    judged = gold(sample_prompts, texts) if callable(gold) else gold_rewards(texts, sample_prompts) if gold else None
    row = {"gold": judged, "kl_sft": kl.mean().item()}
    for name, fn in scorers.items():
        row[name] = sum(fn([s.prompt for s in samples], texts)) / len(samples)
    backend.shutdown()
    return samples, row
