"""Policy maths in plain PyTorch: sampling, per-token logprobs, REINFORCE with a baseline, KL.

REINFORCE (Williams 1992) as used by WARM Sec. 5.2 and WARP Sec. 4:
    r_β(x, y) = r(x, y) - β · log(π_θ(y|x) / π_anchor(y|x))
    loss      = -E[(r_β(x, y) - b(x)) · log π_θ(y|x)]
with b a leave-one-out baseline over the n samples of a prompt, or a moving average.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Batch:
    """Prompt + completion token ids, right-padded, with a mask over completion tokens."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    completion_mask: torch.Tensor  # [B, T]: 1 where token t is a completion token


def make_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
               device: torch.device | str = "cpu") -> Batch:
    rows = [p + c for p, c in zip(prompt_ids, completion_ids)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    comp = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        attn[i, :n] = 1
        comp[i, len(p):n] = 1.0
    return Batch(ids.to(device), attn.to(device), comp.to(device))


def token_logprobs(model, batch: Batch, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log π(y_t | x, y_<t) of each token under logits / temperature, and the per-token entropy.

    Returns two [B, T] tensors aligned with ``batch.input_ids`` (position 0 holds zeros). The
    entropy is a metric: computed without autograd (no graph over the [B, T, V] distribution).
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits = logits[:, :-1].float() / temperature  # [B, T-1, V] predicts token t+1
    logp_all = F.log_softmax(logits, dim=-1)
    target = batch.input_ids[:, 1:]
    logp = logp_all.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # [B, T-1]
    pad = torch.zeros_like(logp[:, :1])
    return torch.cat([pad, logp], dim=1), torch.cat([pad, entropy], dim=1)


def sequence_logprob(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t log π(y_t|...) over completion tokens: [B]."""
    return (logp * mask).sum(-1)


def leave_one_out_baseline(rewards: torch.Tensor) -> torch.Tensor:
    """b_i = mean of the other n-1 rewards of the same prompt. rewards: [P, n] → [P, n]."""
    n = rewards.shape[-1]
    if n < 2:
        raise ValueError("a leave-one-out baseline needs at least 2 samples per prompt")
    return (rewards.sum(-1, keepdim=True) - rewards) / (n - 1)


def reinforce_loss(seq_logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-E[A · log π(y|x)], advantages treated as constants."""
    return -(advantages.detach() * seq_logp).mean()


def truncated_is_weights(logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor,
                         cap: float) -> torch.Tensor:
    """Per-token importance weights min(π_θ(y_t|…) / π_behaviour(y_t|…), cap) on completion tokens
    (0 elsewhere), constants for autograd: [B, T].

    Truncated importance sampling for samples drawn by an older policy (the rollout one step
    behind the learner): Σ_t w_t · log π_θ(y_t|…) takes the place of log π_θ(y|x) in the REINFORCE
    loss. The cap bounds the variance a few unlikely tokens could add.
    """
    return (logp.detach() - behaviour_logp).exp().clamp(max=cap) * mask


def kl_penalised_reward(reward: torch.Tensor, seq_logp: torch.Tensor, anchor_seq_logp: torch.Tensor,
                        beta: float) -> torch.Tensor:
    """r_β = r - β · (log π_θ(y|x) - log π_anchor(y|x)) (the sampled-sequence KL estimate)."""
    return reward - beta * (seq_logp - anchor_seq_logp).detach()


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], n: int = 1, max_new_tokens: int = 20,
           temperature: float = 1.0, batch_size: int = 256, seed: int | None = None,
           device: torch.device | str = "cpu", repetition_penalty: float = 1.0,
           token_bias: dict[int, float] | None = None) -> list[list[str]]:
    """n completions per prompt with plain ancestral sampling (HF generate); texts only.

    ``repetition_penalty`` < 1 and ``token_bias`` (token id -> logit offset) make a *drifted*
    sampler, used to build preference pairs away from the base LM's distribution.
    Returns ``out[i][j]``: the j-th completion of prompt i.
    """
    if seed is not None:
        torch.manual_seed(seed)
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    flat = [p for p in prompts for _ in range(n)]
    texts: list[str] = []
    try:
        for start in range(0, len(flat), batch_size):
            chunk = flat[start:start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            out = model.generate(
                **enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, repetition_penalty=repetition_penalty,
                sequence_bias={(t,): b for t, b in token_bias.items()} if token_bias else None,
            )
            new = out[:, enc["input_ids"].shape[1]:]
            texts += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]
