"""ParameterServer buffers: versions are written into reused buffers, and a version already
handed out never changes, whether it was handed out by a direct call or through Ray."""

from __future__ import annotations

import pytest
import torch

from actors.parameter_server import ParameterServer
from warm_ray import merge

TIMEOUT = 120

torch.set_num_threads(1)


def member(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(6, 5, generator=g),
        "b": torch.randn(5, generator=g).to(torch.bfloat16),
        "steps": torch.tensor(seed),
    }


def expected_average(seeds: list[int], weights: list[float] | None = None) -> dict[str, torch.Tensor]:
    return merge.average([member(s) for s in seeds], weights)


def snapshot(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in sd.items()}


def assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def pointers(sd: dict[str, torch.Tensor]) -> dict[str, int]:
    return {k: v.data_ptr() for k, v in sd.items()}


def test_versions_alternate_between_two_kept_buffer_sets(tmp_path):
    ps = ParameterServer(str(tmp_path))
    ptrs, values = [], []
    for seed in range(4):
        ps.push(str(seed), member(seed))
        ptrs.append(pointers(ps.average))
        assert_equal(ps.average, expected_average(list(range(seed + 1))))
        values.append(snapshot(ps.average))
    ps._select(["0", "2"], [1.0, 3.0])
    assert_equal(ps.average, expected_average([0, 2], [1.0, 3.0]))
    # Version 1 allocates, version 2 allocates its pair, from then on the two sets alternate.
    assert ptrs[2] == ptrs[0] and ptrs[3] == ptrs[1] and pointers(ps.average) == ptrs[0]
    assert all(ptrs[0][k] != ptrs[1][k] for k in ptrs[0])


def test_a_version_handed_out_by_a_direct_call_never_changes(tmp_path):
    ps = ParameterServer(str(tmp_path))
    ps.push("0", member(0))
    ps.push("1", member(1))
    handed = ps.get_weights()  # version 2, the tensors themselves
    kept = snapshot(handed)
    for seed in range(2, 6):  # four more versions: double buffering alone would reach it twice
        ps.push(str(seed), member(seed))
        assert_equal(handed, kept)
        live = set(pointers(ps.average).values())
        assert live.isdisjoint(pointers(handed).values()), "a new version was written into a handed-out buffer"
    ps._select(["0", "1"])
    assert_equal(handed, kept)
    assert_equal(handed, expected_average([0, 1]))
    assert_equal(ps.get_weights(), expected_average([0, 1]))


def test_average_of_by_direct_call_returns_fresh_tensors(tmp_path):
    ps = ParameterServer(str(tmp_path))
    for seed in range(3):
        ps.push(str(seed), member(seed))
    first = ps.average_of(["0", "1"])
    kept = snapshot(first)
    second = ps.average_of(["1", "2"], [2.0, 1.0])
    assert_equal(first, kept)
    assert_equal(second, expected_average([1, 2], [2.0, 1.0]))
    assert set(pointers(first).values()).isdisjoint(pointers(ps.average).values())


def test_a_failed_version_leaves_the_served_one_intact(tmp_path):
    ps = ParameterServer(str(tmp_path))
    ps.push("0", member(0))
    ps.push("1", member(1))
    served = snapshot(ps.average)
    with pytest.raises(ValueError, match="unknown members"):
        ps._select(["0", "7"])
    assert_equal(ps.average, served)
    assert ps.version == 2


def test_versions_handed_out_through_ray_never_change(ray_local, tmp_path):
    ray = ray_local
    ps = ray.remote(ParameterServer).options(num_cpus=0).remote(str(tmp_path))
    try:
        ray.get(ps.push.remote("0", member(0)), timeout=TIMEOUT)
        ray.get(ps.push.remote("1", member(1)), timeout=TIMEOUT)
        ref_v2 = ps.get_weights.remote()
        v2 = ray.get(ref_v2, timeout=TIMEOUT)
        kept = snapshot(v2)
        refs = {}
        for seed in range(2, 5):
            ray.get(ps.push.remote(str(seed), member(seed)), timeout=TIMEOUT)
            refs[seed] = ps.get_weights.remote()
        soup_a = ps.average_of.remote(["0", "1"])
        soup_b = ps.average_of.remote(["2", "3"], [1.0, 3.0])
        ray.get(ps._select.remote(["0", "4"]), timeout=TIMEOUT)
        # Every version read back after later versions were written into the reused buffers.
        assert_equal(v2, kept)
        assert_equal(ray.get(ref_v2, timeout=TIMEOUT), expected_average([0, 1]))
        for seed, ref in refs.items():
            assert_equal(ray.get(ref, timeout=TIMEOUT), expected_average(list(range(seed + 1))))
        assert_equal(ray.get(soup_a, timeout=TIMEOUT), expected_average([0, 1]))
        assert_equal(ray.get(soup_b, timeout=TIMEOUT), expected_average([2, 3], [1.0, 3.0]))
        assert_equal(ray.get(ps.get_weights.remote(), timeout=TIMEOUT), expected_average([0, 4]))
        # Handing out through Ray gave nothing away: the server kept reusing its two buffer sets.
        reused = ray.get(ps.__ray_call__.remote(lambda server: (server._given_away, server._spare is not None)), timeout=TIMEOUT)
        assert reused == (False, True)
    finally:
        ray.kill(ps)


def test_store_keeps_only_current_members_and_heals_damaged_files(tmp_path):
    """``retain`` drops members of another config; a restarted server drops a damaged member file
    (its driver pushes it again) and recomputes a damaged average from the members it kept."""
    ps = ParameterServer(str(tmp_path))
    for i in range(3):
        ps.push(str(i), member(i), {"fingerprint": f"fp{i}"})
    ps.retain({"0": "fp0", "1": "fp1", "2": "another spec"})
    assert sorted(ps.members) == ["0", "1"] and ps.selection == ["0", "1"]
    assert_equal(snapshot(ps.get_weights()), expected_average([0, 1]))
    assert not (tmp_path / "member_2.safetensors").exists()
    for name in ("member_1.safetensors", "average.safetensors"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
    restarted = ParameterServer(str(tmp_path))
    assert sorted(restarted.members) == ["0"]
    assert_equal(snapshot(restarted.get_weights()), expected_average([0]))
    restarted.push("1", member(1), {"fingerprint": "fp1"})
    assert_equal(snapshot(restarted.get_weights()), expected_average([0, 1]))


def test_the_average_does_not_depend_on_the_order_members_arrive_in(tmp_path):
    """Members finish training in any order: every average is summed in member order, so its
    bits are those of the members and weights alone (float addition is not associative)."""
    seeds = [3, 11, 7, 5, 2, 10]  # ids "2" and "10": ordered by value, not as text
    full, picked, subset = [], [], []
    for n, order in enumerate([seeds, seeds[::-1], [10, 2, 7, 3, 11, 5]]):
        ps = ParameterServer(str(tmp_path / str(n)))
        for s in order:
            ps.push(str(s), member(s))
        full.append(snapshot(ps.average))
        # the same members and weights listed in another order
        ids, weights = ([7, 11, 3, 5], [3.0, 2.0, 1.0, 4.0]) if n % 2 else ([3, 5, 7, 11], [1.0, 4.0, 3.0, 2.0])
        subset.append(snapshot(ps.average_of([str(i) for i in ids], weights)))
        ps._select([str(i) for i in ids], weights)
        picked.append(snapshot(ps.average))
    for got in full[1:]:
        assert_equal(got, full[0])
    for got in subset + picked:
        assert_equal(got, subset[0])
    # and they are the averages in member order
    assert_equal(full[0], expected_average(sorted(seeds)))
    assert_equal(subset[0], expected_average([3, 5, 7, 11], [1.0, 4.0, 3.0, 2.0]))
