"""Policy maths in plain PyTorch, on a tiny real transformers model."""

import torch

from warm_ray import models as M
from warm_ray import policy as P
from warm_ray.data import corpus


def test_leave_one_out_baseline_is_the_mean_of_the_others():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 4.0]])
    b = P.leave_one_out_baseline(r)
    assert torch.allclose(b[0], torch.tensor([11 / 3, 10 / 3, 3.0, 2.0]))
    # advantages of a prompt sum to zero up to the n/(n-1) scale: the baseline adds no bias
    assert torch.allclose((r - b).sum(-1), torch.zeros(2), atol=1e-6)


def test_kl_penalised_reward_and_reinforce_gradient_sign():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    anchor = torch.tensor([-1.5, -1.0])
    r = P.kl_penalised_reward(torch.tensor([1.0, 1.0]), logp, anchor, beta=0.5)
    assert torch.allclose(r, torch.tensor([1.0 - 0.25, 1.0 + 0.5]))
    loss = P.reinforce_loss(logp, torch.tensor([1.0, -1.0]))
    loss.backward()
    # gradient descent raises the logprob of the positive-advantage sample, lowers the other
    assert logp.grad[0] < 0 < logp.grad[1]


def test_truncated_is_weights_are_capped_ratios_on_completion_tokens_only():
    logp = torch.tensor([[0.0, -1.0, -2.0, -0.5], [0.0, -3.0, -0.1, 0.0]], requires_grad=True)
    behaviour = torch.tensor([[0.0, -1.0, -3.0, -0.2], [0.0, -0.1, -3.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    w = P.truncated_is_weights(logp, behaviour, mask, cap=2.0)
    ratio = (logp.detach() - behaviour).exp()
    want = torch.tensor([[0.0, 1.0, 2.0, ratio[0, 3].item()], [0.0, ratio[1, 1].item(), 2.0, 0.0]])
    assert torch.allclose(w, want)  # same policy: 1; above the cap: the cap; below 1: kept; off the mask: 0
    assert not w.requires_grad  # constants: the gradient flows through log π_θ alone
    # on-policy samples (behaviour = π_θ) weight every completion token by exactly 1
    assert torch.equal(P.truncated_is_weights(logp, logp.detach(), mask, cap=2.0), mask)


def test_token_logprobs_align_with_a_manual_forward():
    tok = M.train_tokenizer(corpus()[:300], 400)
    model = M.build_policy(M.tiny_policy_config(tok, n_layer=1, n_embd=32, n_head=1), seed=0).eval()
    prompt = tok("The nation")["input_ids"]
    comp = tok(" is strong", add_special_tokens=False)["input_ids"]
    batch = P.make_batch([prompt, prompt[:2]], [comp, comp[:1]], tok.pad_token_id)
    logp, ent = P.token_logprobs(model, batch, temperature=0.9)
    ids = torch.tensor([prompt + comp])
    ref = torch.log_softmax(model(ids).logits[0, :-1] / 0.9, -1).gather(-1, ids[0, 1:, None])[:, 0]
    seq = P.sequence_logprob(logp, batch.completion_mask)
    assert torch.allclose(seq[0], ref[len(prompt) - 1:].sum(), atol=1e-5)
    assert batch.completion_mask[1].sum() == 1
    assert (ent[batch.completion_mask.bool()] > 0).all()
