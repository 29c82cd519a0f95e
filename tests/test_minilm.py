"""The pretrained-featurizer preset: all-MiniLM-L6-v2 from the `minilm` extra, offline."""

import pytest
import torch

from warm_ray import models as M
from warm_ray import reward as R


@pytest.mark.minilm
def test_minilm_reward_model_lp_ft(prepared):
    from warm_ray.data import load_splits

    _, summary = prepared
    rows = load_splits(summary["data"])["train"][:16]
    path = M.minilm_dir()
    tok = M.load_tokenizer(path)
    rm = M.build_reward_model(path, dropout=0.1)
    assert sum(p.numel() for p in rm.parameters()) > 20_000_000
    fc = R.head_features(rm, tok, R.texts_of(rows, "chosen"), 32)
    fr = R.head_features(rm, tok, R.texts_of(rows, "rejected"), 32)
    assert fc.shape == (16, rm.config.hidden_size)
    head = R.fit_linear_probe(fc, fr, epochs=2)
    run = R.MemberTraining(rows, tok, path, head, lr=1e-4, dropout=0.1, seed=0, epochs=1, batch_size=8,
                           max_length=32)
    before = run.weights()
    assert torch.allclose(before["classifier.weight"], head["weight"])
    m = run.train_step()
    assert m["loss"] == m["loss"]
    after = run.weights()
    assert not torch.equal(before["bert.encoder.layer.0.attention.self.query.weight"],
                           after["bert.encoder.layer.0.attention.self.query.weight"])
