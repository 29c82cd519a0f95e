import torch

from warm_ray import files
from warm_ray import models as M
from warm_ray.data import corpus


def _tiny(tmp_path, arch="gpt2"):
    tok = M.train_tokenizer(corpus()[:500], 512)
    cfg = M.tiny_policy_config(tok, arch=arch, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    pol = M.build_policy(cfg, seed=0)
    M.save_model(pol, tmp_path / "pol", tok)
    return tok, pol


def test_tokenizer_adds_bos_and_round_trips(tmp_path):
    tok, _ = _tiny(tmp_path)
    ids = tok("The Congress shall act.")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "The Congress shall act."
    again = M.load_tokenizer(tmp_path / "pol")
    assert again("The Congress shall act.")["input_ids"] == ids


def test_policy_and_reward_model_from_a_local_dir(tmp_path):
    tok, pol = _tiny(tmp_path)
    loaded = M.load_policy(tmp_path / "pol")
    for (k, a), b in zip(pol.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    rm = M.build_reward_model(tmp_path / "pol", dropout=0.2, seed=1)
    assert rm.config.resid_pdrop == 0.2
    enc = tok(["a b", "the nation is strong"], return_tensors="pt", padding=True)
    assert rm(**enc).logits.shape == (2, 1)
    # the featurizer is the policy's
    assert torch.equal(rm.transformer.wte.weight, pol.transformer.wte.weight)
    M.save_model(rm, tmp_path / "rm", tok)
    assert sorted(p.name for p in (tmp_path / "rm").glob("*.safetensors")) == ["model.safetensors"]
    assert not list((tmp_path / "rm").glob("*.bin"))
    rm2 = M.load_reward_model(tmp_path / "rm")
    rm.eval()
    rm2.eval()
    assert torch.allclose(rm(**enc).logits, rm2(**enc).logits)


def test_reward_models_use_the_fused_gelu_and_score_as_gpt2s_own_does(tmp_path):
    from transformers import AutoModelForSequenceClassification

    tok, pol = _tiny(tmp_path)
    assert pol.config.activation_function == "gelu_new"  # the policy keeps GPT-2's own
    rm = M.build_reward_model(tmp_path / "pol", dropout=0.0, seed=1)
    assert rm.config.activation_function == "gelu_pytorch_tanh"
    M.save_model(rm, tmp_path / "rm", tok)
    # the same weights through GPT-2's unfused "gelu_new": the same scores within float32 rounding
    unfused = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm"), activation_function="gelu_new")
    assert type(unfused.transformer.h[0].mlp.act).__name__ == "NewGELUActivation"
    loaded = M.load_reward_model(tmp_path / "rm")
    assert type(loaded.transformer.h[0].mlp.act).__name__ == "GELUTanh"
    enc = tok(["a b", "the nation is strong and the people are free"], return_tensors="pt", padding=True)
    unfused.eval()
    loaded.eval()
    with torch.no_grad():
        a, b = unfused(**enc).logits, loaded(**enc).logits
    assert not torch.equal(a, torch.zeros_like(a))
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_llama_arch_builds(tmp_path):
    tok, pol = _tiny(tmp_path, arch="llama")
    assert pol(**tok(["hello"], return_tensors="pt")).logits.shape[-1] == len(tok)


def test_dtype_resolution_covers_gpu_and_cpu():
    assert M.resolve_dtype("auto", "cpu") == torch.float32
    assert M.resolve_dtype("bf16", "cpu") == torch.bfloat16
    if not torch.cuda.is_available():
        assert M.resolve_device("auto").type == "cpu"
    import pytest

    with pytest.raises(ValueError, match="unknown dtype"):
        M.resolve_dtype("float8", "cpu")


def test_bf16_load_keeps_bf16(tmp_path):
    _tiny(tmp_path)
    pol = M.load_policy(tmp_path / "pol", dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in pol.parameters())
    rm = M.load_reward_model(tmp_path / "pol", dtype=torch.bfloat16)
    assert rm.score.weight.dtype == torch.bfloat16


def test_atomic_dir_leaves_old_content_on_failure(tmp_path):
    target = tmp_path / "ckpt"
    with files.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    try:
        with files.atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("v2")
            raise RuntimeError("crash mid-write")
    except RuntimeError:
        pass
    assert (target / "a.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_scores_come_back_in_the_callers_order_whatever_the_batching(tmp_path):
    from warm_ray import reward as R

    tok, _ = _tiny(tmp_path)
    rm = M.build_reward_model(tmp_path / "pol", seed=3)
    # lengths out of order, so the length-sorted batches mix texts from everywhere
    texts = [" ".join(["word"] * n) + f" {i}" for i, n in enumerate([9, 1, 30, 4, 4, 17, 2, 25, 11])]
    one_by_one = torch.cat([R.score(rm, tok, [t], max_length=48) for t in texts])
    for batch_size in (2, 4, len(texts)):
        assert torch.allclose(R.score(rm, tok, texts, max_length=48, batch_size=batch_size), one_by_one, atol=1e-5)
    assert R.score(rm, tok, [], max_length=48).shape == (0,)


def test_length_grouped_pair_rewards_equal_one_pass_with_the_same_gradients(tmp_path):
    from warm_ray import reward as R

    tok, _ = _tiny(tmp_path)
    rm = M.build_reward_model(tmp_path / "pol", dropout=0.0, seed=2)
    # chosen and rejected texts of very different lengths, in no order
    rows = [{"prompt": f"p{i} ", "chosen": " ".join(["yes"] * n), "rejected": " ".join(["no"] * (31 - n))}
            for i, n in enumerate([1, 30, 7, 15, 3, 22, 11])]
    grads, rewards = [], []
    for groups in (1, 2, 3, 14):
        rm.zero_grad()
        chosen, rejected = R.pair_rewards(rm, tok, rows, max_length=48, length_groups=groups)
        R.bradley_terry_loss(chosen, rejected).backward()
        rewards.append(torch.cat([chosen, rejected]).detach())
        grads.append(torch.cat([p.grad.reshape(-1) for p in rm.parameters() if p.grad is not None]))
    for r, g in zip(rewards[1:], grads[1:]):
        assert torch.allclose(r, rewards[0], atol=1e-5)
        assert torch.allclose(g, grads[0], rtol=1e-4, atol=1e-6)


def test_thread_map_scores_as_one_thread_does_and_restores_torch_threads(tmp_path):
    import copy

    from warm_ray import reward as R

    tok, _ = _tiny(tmp_path)
    rms = [M.build_reward_model(tmp_path / "pol", seed=s) for s in range(3)]
    texts = [" ".join(["word"] * n) for n in range(1, 40)]
    one_by_one = [R.score(rm, tok, texts, max_length=48, batch_size=8) for rm in rms]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threaded = M.thread_map(lambda rm: R.score(rm, copy.deepcopy(tok), texts, max_length=48, batch_size=8), rms)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(threaded) == 3
    for a, b in zip(threaded, one_by_one):  # in the order of the items
        assert torch.allclose(a, b, atol=1e-5)


def test_use_threads_zero_means_every_core_of_the_process():
    import os

    before = torch.get_num_threads()
    try:
        assert M.use_threads(1) == 1 and torch.get_num_threads() == 1
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        assert M.use_threads(0) == cores and torch.get_num_threads() == cores
    finally:
        torch.set_num_threads(before)


def test_adam_uses_the_fused_kernel_on_cpu_and_steps_as_the_foreach_kernel_does():
    torch.manual_seed(0)
    a = torch.nn.Linear(16, 4)
    b = torch.nn.Linear(16, 4)
    b.load_state_dict(a.state_dict())
    start = a.weight.detach().clone()
    fused = M.adam(a.parameters(), lr=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1, foreach=True)
    assert fused.defaults["fused"] is True and type(fused) is torch.optim.AdamW
    # exact types: AdamW subclasses Adam, so isinstance could not tell them apart
    assert type(M.adam(a.parameters(), lr=1e-2, decoupled=False)) is torch.optim.Adam
    x = torch.randn(8, 16)
    for _ in range(5):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert (a.weight - start).abs().min() > 1e-4  # five steps of lr 1e-2 moved every weight


def test_many_models_scored_over_threads_equal_each_scored_alone(tmp_path):
    from warm_ray import reward as R
    from warm_ray import scoring as S

    tok, _ = _tiny(tmp_path)
    rms = [M.build_reward_model(tmp_path / "pol", seed=s) for s in range(3)]
    lists = [[" ".join(["word"] * n) + f" {n}" for n in (7, 1, 30, 3, 19, 2, 11)], [" ".join(["no"] * n) for n in range(1, 20)]]
    encoded = [S.encode_texts(tok, texts, 48, 4) for texts in lists]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threaded = S.score_encoded(rms, encoded)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    for j, rm in enumerate(rms):  # out[model][list], each in its texts' own order
        for k, texts in enumerate(lists):
            assert threaded[j][k].shape == (len(texts),)
            assert torch.allclose(threaded[j][k], R.score(rm, tok, texts, max_length=48, batch_size=4), atol=1e-5)
    assert not torch.allclose(threaded[0][0], threaded[1][0])  # three different models, three answers

    rows = [{"prompt": f"q{i} ", "chosen": " ".join(["yes"] * n), "rejected": " ".join(["no"] * (20 - n))}
            for i, n in enumerate([1, 14, 5, 9, 17])]
    margins = S.pair_margins(rms, S.encode_pairs(tok, {"a": rows, "b": rows[:2]}, 48, 2))
    for j, rm in enumerate(rms):
        assert torch.allclose(margins[j]["a"], R.pair_margins([rm], tok, rows, max_length=48), atol=1e-5)
        assert torch.allclose(margins[j]["b"], margins[j]["a"][:2], atol=1e-5)


def test_head_features_over_threads_equal_one_thread_in_the_texts_order(tmp_path):
    from warm_ray import reward as R

    tok, _ = _tiny(tmp_path)
    rm = M.build_reward_model(tmp_path / "pol", dropout=0.0, seed=1)
    texts = [" ".join(["word"] * n) for n in (12, 1, 25, 4, 8, 3, 30)]
    serial = R.head_features(rm, tok, texts, max_length=48, batch_size=3)
    threaded = R.head_features(rm, tok, texts, max_length=48, batch_size=3, threads=True)
    assert serial.shape == (len(texts), 32)
    assert torch.allclose(threaded, serial, atol=1e-5)
    # the features are what the head turns into the score: head(feature of text i) == score of text i
    head = R.head_module(rm)
    assert torch.allclose(head(serial).squeeze(-1), R.score(rm, tok, texts, max_length=48), atol=1e-4)


def test_best_of_n_scores_each_rm_dir_with_its_own_tokenizer(tmp_path):
    from warm_ray import reward as R
    from warm_ray.bon import score_dirs

    tok, _ = _tiny(tmp_path)  # two RMs on one tokenizer, a third on a tokenizer of its own
    other_tok = M.train_tokenizer(corpus()[500:900], 300)
    other = M.build_policy(M.tiny_policy_config(other_tok, n_layer=1, n_embd=32, n_head=2, n_positions=64), seed=1)
    M.save_model(other, tmp_path / "other", other_tok)
    dirs = []
    for name, base, seed in (("a", "pol", 0), ("b", "pol", 1), ("c", "other", 2)):
        M.save_model(M.build_reward_model(tmp_path / base, seed=seed), tmp_path / name, M.load_tokenizer(tmp_path / base))
        dirs.append(tmp_path / name)
    prompts = ["the cat ", "a dog "]
    completions = [["sat", "ran far away", "is"], ["barked at the moon", "slept", "ate"]]
    got = score_dirs(dirs, prompts, completions, max_length=48, batch_size=2)
    assert got.shape == (3, 2, 3)
    texts = [p + c for p, row in zip(prompts, completions) for c in row]
    for i, d in enumerate(dirs):
        alone = R.score(M.load_reward_model(d), M.load_tokenizer(d), texts, max_length=48).numpy().reshape(2, 3)
        assert abs(got[i] - alone).max() < 1e-5


def test_machine_record_names_what_computed_the_numbers():
    import transformers

    record = M.machine()
    assert record["torch"] == torch.__version__ and record["transformers"] == transformers.__version__
    assert record["cores"] >= 1 and record["cpu"] and isinstance(record["gpus"], list)
    assert record["gpus"] == ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                              if torch.cuda.is_available() else [])
    line = M.machine_line(record)
    assert record["cpu"] in line and f"torch {torch.__version__}" in line
    assert "no GPU" in M.machine_line({**record, "gpus": []})
    assert "NVIDIA H100" in M.machine_line({**record, "gpus": ["NVIDIA H100"]})
