"""The real-model preset: SmolLM2-135M-Instruct converted once from the shipped GGUF (slow)."""

import pytest
import torch

pytestmark = pytest.mark.slow


def test_smollm2_converts_loads_and_samples(tmp_path):
    from warm_ray import models as M
    from warm_ray.policy import sample

    path = M.smollm2_dir(cache=tmp_path)
    assert (path / "model.safetensors").exists()
    policy = M.load_policy(path)
    assert 100e6 < sum(p.numel() for p in policy.parameters()) < 200e6
    tok = M.load_tokenizer(path)
    out = sample(policy, tok, ["The nation"], n=2, max_new_tokens=8, seed=0)
    assert len(out[0]) == 2 and all(isinstance(t, str) for t in out[0])
    rm = M.build_reward_model(path)
    enc = tok(["The nation is strong."], return_tensors="pt")
    assert rm(**enc).logits.shape == (1, 1)
    assert torch.isfinite(rm(**enc).logits).all()
