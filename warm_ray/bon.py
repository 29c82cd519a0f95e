"""Best-of-N: the cheap, low-variance downstream test of a reward model (WARM Sec. 5.1).

For each held-out prompt the SFT policy samples K completions once; every reward model (or
way of combining members) scores all of them; best-of-N keeps the completion a selector scores
highest among N. Its gold reward, in expectation over which N of the K samples were drawn,
comes exactly from order statistics (``stats.bon_expected_gold_per_prompt``), and its KL to
the policy is log N - (N-1)/N. An RM that is hacked picks completions it likes and the gold
reward does not: gold stops rising, or falls, as N grows.

Selectors: ``single`` (the best member on the selection split), ``ens`` (the mean of
the members' normalised scores: the same ENS as RL's reward mode), ``warm`` (the weight average),
``soup`` (the greedy soup), the conservative ensembles ``wco`` / ``uwo`` (Coste et al. 2023), and
``ens_raw`` (the mean of the members' raw logits, reported under its own name), and any other
reward mode of every member registered in ``warm_ray.names.REWARD_MODES``. Members are
normalised on the same SFT samples, which are exactly the reference the policy starts from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from warm_ray import ensemble as E
from warm_ray import models as M
from warm_ray import scoring as S
from warm_ray import stats
from warm_ray.gold import gold_rewards
from warm_ray.names import member_modes
from warm_ray.policy import sample

# the files a saved tokenizer may consist of (fast or slow, BPE or WordPiece)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "vocab.txt",
                   "merges.txt", "added_tokens.json")

def sample_completions(policy_dir: str | Path, prompts: Sequence[str], k: int, max_new_tokens: int,
                       temperature: float, seed: int, batch_size: int = 256, device="cpu") -> list[list[str]]:
    """K completions per prompt from the policy: [P][K]."""
    policy = M.load_policy(policy_dir, device=device, dtype="float32")
    tok = M.load_tokenizer(policy_dir)
    return sample(policy, tok, list(prompts), n=k, max_new_tokens=max_new_tokens, temperature=temperature,
                  batch_size=batch_size, seed=seed, device=device)


def score_dirs(dirs: Sequence[str | Path], prompts: Sequence[str], completions: Sequence[Sequence[str]],
               max_length: int, batch_size: int = 256) -> np.ndarray:
    """Raw scores of every RM dir on every (prompt, completion): [len(dirs), P, K]. The texts are
    tokenized once per tokenizer and every (RM, batch) pass is a job on every core (``warm_ray.scoring``)."""
    texts = [p + c for p, row in zip(prompts, completions) for c in row]
    p, k = len(completions), len(completions[0])
    models = [M.load_reward_model(d) for d in dirs]
    # the members of one WARM share their tokenizer: tokenize once per distinct one (by its files' bytes)
    by_tok: dict[str, list[int]] = {}
    for i, d in enumerate(dirs):
        found = [f for f in sorted(Path(d).glob("*")) if f.name in TOKENIZER_FILES]
        key = (hashlib.sha1(b"".join(f.name.encode() + b"\0" + f.read_bytes() for f in found)).hexdigest()
               if found else f"dir:{d}")  # no tokenizer files here (a hub id): its own
        by_tok.setdefault(key, []).append(i)
    out = np.empty((len(dirs), p, k), dtype=np.float32)
    for ids in by_tok.values():
        encoded = S.encode_texts(M.load_tokenizer(dirs[ids[0]]), texts, max_length, batch_size)
        for i, scores in zip(ids, S.score_encoded([models[i] for i in ids], [encoded])):
            out[i] = scores[0].numpy().reshape(p, k)
    return out


def selector_scores(members: np.ndarray, single: int, warm: np.ndarray, soup: np.ndarray,
                    uwo_lambda: float) -> dict[str, np.ndarray]:
    """Each selector's scores [P, K] from the members' raw scores [M, P, K] and the merged RMs'."""
    m, p, k = members.shape
    raw = torch.from_numpy(members.reshape(m, p * k)).float()
    normalised = E.Normaliser.fit(raw).apply(raw)
    out = {"single": members[single], "warm": warm, "soup": soup, "ens_raw": members.mean(0)}
    for mode in member_modes():  # every mode of the members' normalised scores (warm_ray.names)
        out[mode] = E.combine(normalised, mode, uwo_lambda).numpy().reshape(p, k)
    return out


def best_of_n(scores: dict[str, np.ndarray], gold: np.ndarray, ns: Sequence[int]) -> dict:
    """Expected gold of best-of-N for each selector and N: {selector: {N: [P] per-prompt values}}."""
    return {name: {n: stats.bon_expected_gold_per_prompt(s, gold, n) for n in ns} for name, s in scores.items()}


def gold_matrix(prompts: Sequence[str], completions: Sequence[Sequence[str]]) -> np.ndarray:
    """Gold rewards [P, K]."""
    k = len(completions[0])
    flat = gold_rewards([c for row in completions for c in row], [p for p in prompts for _ in range(k)])
    return np.asarray(flat, dtype=np.float64).reshape(len(prompts), k)
