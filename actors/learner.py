"""PolicyLearner: one REINFORCE step with a KL penalty to an anchor policy, and its checkpoints.

The step, in the order WARM Sec. 5.2 / App. B.4 and WARP Sec. 3.1 write it:

    1. log π_θ(y|x)       = Σ_t log softmax(logits_θ / T)[y_t]          (T = sampling temperature)
    2. log π_anchor(y|x)  the same under the anchor (frozen SFT policy, or WARP's EMA θ_ema)
    3. r_β(x, y)          = r(x, y) - β · (log π_θ(y|x) - log π_anchor(y|x))     (WARP Eq. 1)
    4. b(x)               leave-one-out mean of r_β over the n samples of x, a moving
                            average of past r_β, or 0
    5. loss               = -E[(r_β(x, y) - b(x)) · log π_θ(y|x)]              (REINFORCE)
    6. Adam step on θ; then, for the EMA anchor, θ_ema ← (1-μ)·θ_ema + μ·θ  (WARP Algorithm 1)

Logprobs are recomputed here under logits / T, which is what ``Sample.logprobs`` holds, so the
gap between the two is a health metric: on-policy REINFORCE needs it to be ~0 (a large gap means
the sampler and the learner disagree about the policy: stale weights, a dtype or a padding bug).

``PolicyLearner`` is a plain class; the RL driver makes it a Ray actor with the resources of
``rl.learner`` (``reset`` readies the same actor for another run). On CUDA the master weights stay
float32 and forward passes run under bf16 autocast; on CPU everything is float32. Checkpoints (policy and anchor weights as safetensors,
Adam's state, the baseline, the step) are written by ``save_checkpoint`` as one atomic dir.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from actors.rollout import Sample
from warm_ray import hide_unused_packages, merge, quiet_transformers
from warm_ray.config import RLConfig
from warm_ray.files import atomic_dir
from warm_ray.names import ANCHORS, BASELINES
from warm_ray.models import (
    adam,
    load_policy,
    load_state_dict,
    load_tokenizer,
    resolve_dtype,
    save_model,
    save_state_dict,
)
from warm_ray.policy import (
    kl_penalised_reward,
    leave_one_out_baseline,
    make_batch,
    reinforce_loss,
    sequence_logprob,
    token_logprobs,
    truncated_is_weights,
)



@dataclass
class Scored:
    """Per-sample quantities of one forward pass over a batch of samples (all [B] or [B, T])."""

    seq_logp: torch.Tensor  # [B] Σ_t log π(y_t | x, y_<t), with grad when asked
    token_logp: torch.Tensor  # [B, T] per-token logprobs, aligned with the batch
    entropy: torch.Tensor  # [B, T] per-token entropy of π_T
    mask: torch.Tensor  # [B, T] 1 on completion tokens


def score_samples(model, samples: Sequence[Sample], temperature: float, pad_id: int,
                  device: torch.device, autocast_dtype: torch.dtype | None) -> Scored:
    """Teacher-forced logprobs of each sample's completion under ``model`` at ``temperature``."""
    batch = make_batch([s.prompt_ids for s in samples], [s.completion_ids for s in samples], pad_id, device)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logp, entropy = token_logprobs(model, batch, temperature)  # float32 whatever the autocast
    return Scored(sequence_logprob(logp, batch.completion_mask), logp, entropy, batch.completion_mask)


def sampler_logprobs(samples: Sequence[Sample], like: torch.Tensor) -> torch.Tensor:
    """The sampler's per-token logprobs laid out like ``make_batch`` lays out the tokens: [B, T]."""
    out = torch.zeros_like(like)
    for i, s in enumerate(samples):
        start = len(s.prompt_ids)
        out[i, start:start + len(s.logprobs)] = torch.tensor(s.logprobs, dtype=out.dtype)
    return out


def unique_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Floating parameters and buffers, each storage once.

    ``state_dict()`` lists a tied tensor under two names (GPT-2's wte and lm_head); an in-place
    EMA over it would update that storage twice.
    """
    out = {name: p.data for name, p in model.named_parameters()}
    out.update({name: b for name, b in model.named_buffers() if b.is_floating_point()})
    return out


class PolicyLearner:
    """REINFORCE with a baseline and a KL penalty to an SFT or EMA anchor (WARM Sec. 5.2, WARP Alg. 1).

    ``sft_dir``: the SFT policy (the KL-to-SFT metric, and the anchor when ``cfg.anchor == "sft"``).
    ``init_dir``: where θ (and the EMA anchor) start; the SFT policy by default. WARP's later
    iterations start from the LITI point while KL is still measured to the SFT policy.
    """

    def __init__(self, sft_dir: str, cfg: RLConfig, init_dir: str | None = None):
        hide_unused_packages()  # before transformers is imported
        quiet_transformers()  # this runs in its own process: silence per-load progress bars here too
        self.sft_key: tuple[str, str] | None = None  # (dir, device) of the loaded SFT policy
        self.sft = None
        self.reset(sft_dir, cfg, init_dir)

    def reset(self, sft_dir: str, cfg: RLConfig, init_dir: str | None = None) -> None:
        """Start a run: θ and the anchor from ``init_dir`` (default ``sft_dir``), new Adam state, no
        baseline history, step 0, ``cfg``'s settings.

        The constructor is this method, so a learner that a new run reuses (WARP's runs take turns on
        a few actors) is in exactly the state a new actor would be in. Only the SFT policy is kept
        when its dir and the device are unchanged: it is never trained, and loading it again would
        give the same tensors.
        """
        BASELINES.check(cfg.baseline)  # warm_ray.names: the config checked them too, a learner may be built alone
        ANCHORS.check(cfg.anchor)
        if cfg.temperature <= 0:
            raise ValueError("REINFORCE needs a sampling temperature > 0 (the policy must be stochastic)")
        if cfg.baseline == "loo" and cfg.samples_per_prompt < 2:
            raise ValueError("the leave-one-out baseline needs rl.samples_per_prompt >= 2")
        self.cfg = cfg
        res = cfg.learner
        torch.set_num_threads(max(1, res.num_threads))
        self.device = torch.device(res.device)
        # bf16/fp16 only as autocast: the master weights, the optimizer and the EMA stay float32.
        dtype = resolve_dtype(res.dtype, self.device)
        self.autocast_dtype = dtype if (dtype != torch.float32 and self.device.type == "cuda") else None

        # The last run's policy, anchor and Adam moments go before this run's are loaded: a reused
        # learner holds one run's tensors at a time.
        self.policy = self.anchor = self.optimizer = None
        self.policy = load_policy(init_dir or sft_dir, device=self.device, dtype=torch.float32)
        # Dropout off in every forward pass: the learner must score the policy the sampler ran.
        self.policy.eval()
        self.policy.requires_grad_(True)
        sft_key = (str(sft_dir), str(self.device))
        if sft_key != self.sft_key:
            self.sft = None
            if init_dir is None or Path(init_dir) == Path(sft_dir):
                self.sft = copy.deepcopy(self.policy)  # the same weights: no second load from disk
            else:
                self.sft = load_policy(sft_dir, device=self.device, dtype=torch.float32)
            self.sft.eval().requires_grad_(False)
            self.sft_key = sft_key
        if cfg.anchor == "sft":
            self.anchor = self.sft
        else:
            # θ_ema starts at θ_init (WARP Algorithm 1) and is its own copy, updated in place.
            self.anchor = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.pad_id = self.policy.config.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.policy.config.eos_token_id or 0  # masked out of every sum anyway
        self.optimizer = adam(self.policy.parameters(), lr=cfg.lr, decoupled=False)
        self.baseline_value: float | None = None  # the moving-average baseline's state
        self.step = 0

    # ------------------------------------------------------------------------------------------
    # One REINFORCE step
    # ------------------------------------------------------------------------------------------

    def learn(self, samples: Sequence[Sample], rewards: Sequence[float], off_policy: bool = False) -> dict[str, float]:
        """One step on prompt-major samples (``samples[i*n + j]``: sample j of prompt i) and their rewards.

        ``off_policy``: the samples come from an older policy than θ (``rl.overlap``: drawn while
        the learner took the previous step). Each token's log π_θ is then weighted by its truncated
        importance ratio min(π_θ / π_sampler, ``rl.is_cap``) in the REINFORCE term
        (``truncated_is_weights``); on-policy samples use log π_θ(y|x) as it is.
        """
        cfg, n = self.cfg, self.cfg.samples_per_prompt
        if len(samples) != len(rewards) or len(samples) == 0 or len(samples) % n:
            raise ValueError(f"need a multiple of n={n} samples with one reward each, "
                             f"got {len(samples)} samples and {len(rewards)} rewards")
        for i in range(0, len(samples), n):
            if len({s.prompt for s in samples[i:i + n]}) != 1:
                raise ValueError(f"samples {i}..{i + n - 1} are not the n samples of one prompt")
        reward = torch.tensor(list(rewards), dtype=torch.float32, device=self.device)  # [B]

        # 1. log π_θ(y|x) under logits / T, with grad
        policy = score_samples(self.policy, samples, cfg.temperature, self.pad_id, self.device, self.autocast_dtype)
        # 2. log π_anchor(y|x), and log π_sft(y|x) for the KL-to-SFT metric
        with torch.no_grad():
            anchor = score_samples(self.anchor, samples, cfg.temperature, self.pad_id, self.device,
                                   self.autocast_dtype)
            sft = anchor if self.anchor is self.sft else score_samples(
                self.sft, samples, cfg.temperature, self.pad_id, self.device, self.autocast_dtype)
        # 3. r_β = r - β · (log π_θ - log π_anchor), the sampled-sequence KL estimate, held constant
        r_beta = kl_penalised_reward(reward, policy.seq_logp, anchor.seq_logp, cfg.beta)
        # 4. baseline b(x)
        baseline = self._baseline(r_beta)
        # 5. REINFORCE: -E[(r_β - b) · log π_θ(y|x)]
        advantage = r_beta - baseline
        mask = policy.mask
        tokens = mask.sum().clamp_min(1.0)
        behaviour = sampler_logprobs(samples, policy.token_logp)
        if off_policy:
            weights = truncated_is_weights(policy.token_logp, behaviour, mask, cfg.is_cap)
            loss = reinforce_loss(sequence_logprob(policy.token_logp, weights), advantage)
            is_weight = (weights.sum() / tokens).item()
            is_capped = (((weights >= cfg.is_cap) & (mask > 0)).sum() / tokens).item()
        else:
            loss = reinforce_loss(policy.seq_logp, advantage)
            is_weight, is_capped = 1.0, 0.0
        # 6. Adam step, then the EMA anchor follows the new θ
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.get_total_norm(
            [p.grad for p in self.policy.parameters() if p.grad is not None])
        self.optimizer.step()
        if cfg.anchor == "ema":
            with torch.no_grad():
                merge.ema_update(unique_params(self.anchor), unique_params(self.policy), cfg.ema_mu)
        self.step += 1

        gap = ((policy.token_logp.detach() - behaviour).abs() * mask).sum() / tokens
        return {
            "step": self.step,
            "loss": loss.item(),
            "reward": reward.mean().item(),
            "reward_kl_penalised": r_beta.mean().item(),
            "baseline": baseline.mean().item(),
            "advantage_std": advantage.std().item() if advantage.numel() > 1 else 0.0,
            "kl_anchor": (policy.seq_logp.detach() - anchor.seq_logp).mean().item(),
            "kl_sft": (policy.seq_logp.detach() - sft.seq_logp).mean().item(),
            "entropy": ((policy.entropy.detach() * mask).sum() / tokens).item(),
            "logprob_gap": gap.item(),
            # mean truncated importance weight per completion token, and the share at the cap
            "is_weight": is_weight,
            "is_capped": is_capped,
            "grad_norm": float(grad_norm),
        }

    def _baseline(self, r_beta: torch.Tensor) -> torch.Tensor:
        """b: leave-one-out over a prompt's n samples, a moving average of past batches, or 0."""
        kind = self.cfg.baseline
        if kind == "loo":
            n = self.cfg.samples_per_prompt
            return leave_one_out_baseline(r_beta.view(-1, n)).reshape(-1)  # [P, n] -> [B]
        if kind == "ema":
            # The baseline of this step comes from earlier steps only (it must not depend on the
            # sample it centres); the very first batch has no past and uses its own mean.
            mean = r_beta.mean().item()
            b = mean if self.baseline_value is None else self.baseline_value
            rate = self.cfg.baseline_ema
            self.baseline_value = rate * b + (1.0 - rate) * mean
            return torch.full_like(r_beta, b)
        return torch.zeros_like(r_beta)

    # ------------------------------------------------------------------------------------------
    # Metrics, weights and state
    # ------------------------------------------------------------------------------------------

    def get_weights(self) -> dict[str, torch.Tensor]:
        """The policy's full state dict on CPU (tied tensors under both names: vLLM wants them all).

        Through Ray the result is serialised, i.e. a snapshot; called in-process on CPU, its
        tensors are the live parameters.
        """
        return {k: v.detach().cpu() for k, v in self.policy.state_dict().items()}

    def save_policy(self, path: str, tokenizer_dir: str, card: str | None = None) -> str:
        """Write θ as a Hugging Face model dir (float32 safetensors, the tokenizer of
        ``tokenizer_dir``, ``card`` as its README) and return its path.

        The learner holds θ and has transformers loaded, so the driver neither loads the policy
        nor pulls its weights through Ray to save a run's result (on more than one node the run dir
        is a shared filesystem, as for every role: ``cluster.yaml``).
        """
        save_model(self.policy, path, load_tokenizer(tokenizer_dir), card)
        return path

    def get_anchor_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.anchor.state_dict().items()}

    def state(self) -> dict:
        """Everything a resumed run needs: policy, anchor (EMA only), Adam, baseline, step."""
        return {
            "policy": self.get_weights(),
            "anchor": self.get_anchor_weights() if self.cfg.anchor == "ema" else None,
            "optimizer": _to_cpu(self.optimizer.state_dict()),  # a driver without a GPU can save it
            "baseline_value": self.baseline_value,
            "step": self.step,
        }

    def load_state(self, state: dict) -> int:
        """Restore a ``state()``; returns the step it was taken at."""
        self.policy.load_state_dict({k: v.to(self.device) for k, v in state["policy"].items()})
        if self.cfg.anchor == "ema":
            if state.get("anchor") is None:
                raise ValueError("checkpoint has no EMA anchor but rl.anchor is 'ema'")
            self.anchor.load_state_dict({k: v.to(self.device) for k, v in state["anchor"].items()})
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline_value = state["baseline_value"]
        self.step = int(state["step"])
        return self.step


def _to_cpu(obj):
    """The same nested dicts/lists with every tensor moved to CPU (Adam's moments, on CUDA)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------------------
# Checkpoint files (written by the driver, so they land in the run dir of the driver's machine)
# ------------------------------------------------------------------------------------------


def save_checkpoint(ckpt_dir: str | Path, state: dict, extra: dict | None = None) -> Path:
    """One atomic dir: policy/anchor safetensors, Adam's state (safetensors + JSON), and a JSON of
    the rest (+ ``extra``). Nothing in it is a pickle: a checkpoint on a shared disk cannot run code."""
    from warm_ray.models import save_optimizer_state

    with atomic_dir(ckpt_dir) as tmp:
        save_state_dict(state["policy"], tmp / "policy.safetensors")
        if state.get("anchor") is not None:
            save_state_dict(state["anchor"], tmp / "anchor.safetensors")
        save_optimizer_state(state["optimizer"], tmp, "optimizer")
        meta = {"step": state["step"], "baseline_value": state["baseline_value"], "extra": extra or {}}
        (tmp / "learner.json").write_text(json.dumps(meta, indent=2))
    return Path(ckpt_dir)


def load_checkpoint(ckpt_dir: str | Path) -> tuple[dict, dict] | None:
    """(state for ``PolicyLearner.load_state``, extra) of a checkpoint dir, or None when there is none."""
    from warm_ray.models import load_optimizer_state

    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / "learner.json").exists():
        return None
    meta = json.loads((ckpt_dir / "learner.json").read_text())
    anchor = ckpt_dir / "anchor.safetensors"
    state = {
        "policy": load_state_dict(ckpt_dir / "policy.safetensors"),
        "anchor": load_state_dict(anchor) if anchor.exists() else None,
        "optimizer": load_optimizer_state(ckpt_dir, "optimizer"),
        "baseline_value": meta["baseline_value"],
        "step": meta["step"],
    }
    return state, meta["extra"]
