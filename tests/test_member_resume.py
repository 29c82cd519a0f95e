"""A member stopped at a checkpoint and resumed by a new trainer equals an unbroken one bit for bit:
weights, AdamW state, step (data order and lr follow from it) and the RNG states dropout draws from."""

import logging

import pytest
import torch

from warm_ray.reward import RNG_FILE, restore_rng_state

from .conftest import tiny_member

STEPS, STOP = 6, 3


def _member(summary):
    # 16 pairs in batches of 4 over 2 epochs: 8 steps, so steps 4..6 cross into the second epoch's order
    return tiny_member(summary, 16, dropout=0.1, epochs=2, batch_size=4)


def _train(run, n: int) -> None:
    for _ in range(n):
        run.train_step()


def _differing(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def unbroken(prepared):
    run = _member(prepared[1])
    _train(run, STEPS)
    return run.weights()


@pytest.fixture
def stopped(prepared, tmp_path):
    """A member trained STOP steps and checkpointed; the object is then dropped."""
    run = _member(prepared[1])
    _train(run, STOP)
    run.save(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_resumed_member_is_bit_identical_to_an_unbroken_one(prepared, unbroken, stopped):
    assert (stopped / RNG_FILE).exists()
    resumed = _member(prepared[1])  # a new trainer: build_reward_model reseeds the RNG
    assert resumed.restore(stopped) and resumed.step == STOP
    _train(resumed, STEPS - STOP)
    assert resumed.step == STEPS
    assert _differing(unbroken, resumed.weights()) == []


def test_checkpoint_without_rng_state_still_loads_and_says_so(prepared, unbroken, stopped, caplog):
    (stopped / RNG_FILE).unlink()  # a checkpoint written before RNG states were saved
    caplog.set_level(logging.INFO, logger="warm_ray.reward")
    resumed = _member(prepared[1])
    assert resumed.restore(stopped) and resumed.step == STOP
    assert "no RNG state in this checkpoint" in caplog.text
    _train(resumed, STEPS - STOP)
    # the control: with dropout 0.1 the RNG state is what the test above depends on
    assert _differing(unbroken, resumed.weights()) != []


def test_damaged_rng_state_is_logged_and_skipped(prepared, stopped, caplog):
    data = (stopped / RNG_FILE).read_bytes()
    (stopped / RNG_FILE).write_bytes(data[: len(data) // 2])
    resumed = _member(prepared[1])
    assert resumed.restore(stopped) and resumed.step == STOP
    assert "RNG state unreadable" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only side of a GPU checkpoint")
def test_gpu_checkpoint_restores_on_a_cpu_only_host(tmp_path, caplog):
    from safetensors import safe_open

    from warm_ray.models import save_state_dict
    from warm_ray.reward import save_rng_state

    caplog.set_level(logging.INFO, logger="warm_ray.reward")
    path = tmp_path / RNG_FILE
    save_rng_state(path)
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    cuda_state = torch.zeros(16, dtype=torch.uint8)  # a CUDA (Philox) state: seed and offset
    save_state_dict({**tensors, "cuda.0": cuda_state}, path, metadata=meta)
    expected = torch.rand(4)
    assert restore_rng_state(path)
    assert torch.equal(torch.rand(4), expected)  # the CPU state was set
    assert "1 CUDA RNG state(s) saved on a GPU host are not restored" in caplog.text
