"""A one-script check of the GPU paths, with torch and transformers only (no Ray, no vLLM).

    python bench/gpu_check.py [--small] [--device cuda|cpu]

On a CUDA device (CPU when there is none, with small sizes) it checks and measures:

- RM step: the Bradley-Terry step of ``warm_ray.reward.MemberTraining`` on a tiny GPT-2 RM,
  under bf16 autocast against float32 from the same weights and batch: loss difference and
  cosine of the two gradients; then RM training throughput (pairs/s) in both precisions;
- policy step: the REINFORCE loss of ``warm_ray.policy`` (token log-probs, leave-one-out
  baseline) on a tiny GPT-2 policy, the same comparison, then sequences/s;
- merges: ``warm_ray.merge.average`` (M=4, into reused buffers) and ``slerp_many`` (M=2) in
  float32 and bf16, in GB/s against the device's own copy bandwidth (``copy_`` between
  existing tensors).

It prints one markdown table, with the device named, and exits 1 when a precision check fails.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

# Runnable as a plain script from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from warm_ray import merge  # noqa: E402
from warm_ray.models import tiny_policy_config, train_tokenizer  # noqa: E402
from warm_ray.policy import leave_one_out_baseline, make_batch, reinforce_loss, sequence_logprob, token_logprobs  # noqa: E402
from warm_ray.reward import MemberTraining, bradley_terry_loss, pair_rewards  # noqa: E402

# bf16 autocast against float32, same weights and batch: bf16 keeps 8 significant bits, so
# losses agree to ~1% and gradients point the same way.
LOSS_RTOL = 0.03
GRAD_COS_MIN = 0.98

WORDS = ("the a good bad film movie story plot actor scene music long short happy sad slow fast "
         "great poor fine dull bright dark funny quiet loud warm cold old new").split()


def sizes(small: bool, device: torch.device) -> dict:
    if small or device.type != "cuda":
        return dict(n_layer=2, n_embd=64, n_head=2, batch=8, seq=24, samples=4, steps=3, merge_params=2e6)
    return dict(n_layer=8, n_embd=512, n_head=8, batch=64, seq=128, samples=4, steps=10, merge_params=500e6)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up run."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sentences(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(WORDS), (n, 12), generator=g).tolist()
    return [" ".join(WORDS[i] for i in row) + "." for row in idx]


def grad_vector(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.float().reshape(-1) for p in model.parameters() if p.grad is not None])


def compare(name: str, loss32: float, loss16: float, g32: torch.Tensor, g16: torch.Tensor, rows: list) -> bool:
    rel = abs(loss16 - loss32) / max(abs(loss32), 1e-6)
    cos = float(torch.nn.functional.cosine_similarity(g32, g16, dim=0))
    ok = rel <= LOSS_RTOL and cos >= GRAD_COS_MIN and math.isfinite(loss16)
    rows.append([f"{name}: loss", f"{loss32:.5f}", f"{loss16:.5f}", f"rel. diff {rel:.1e} (≤ {LOSS_RTOL})", "ok" if ok else "FAIL"])
    rows.append([f"{name}: gradient", "-", "-", f"cosine {cos:.5f} (≥ {GRAD_COS_MIN})", "ok" if ok else "FAIL"])
    return ok


# --------------------------------------------------------------------------------------------
# RM step
# --------------------------------------------------------------------------------------------


def rm_check(featurizer: Path, tokenizer, cfg: dict, device: torch.device, rows: list) -> bool:
    texts = sentences(4 * cfg["batch"], seed=1)
    pairs = [{"prompt": t[:20], "chosen": t[20:], "rejected": t[20:][::-1]} for t in texts]

    def trainer(dtype: torch.dtype) -> MemberTraining:
        return MemberTraining(pairs, tokenizer, featurizer, head=None, lr=1e-4, dropout=0.0, seed=0, epochs=100,
                              batch_size=cfg["batch"], max_length=cfg["seq"], device=device, dtype=dtype)

    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        t = trainer(dtype)
        # The pieces of MemberTraining.train_step: the same autocast region, then backward.
        batch = t._batch(0)
        t.model.train()
        with torch.autocast(device.type, dtype=t.autocast_dtype or torch.float32, enabled=t.autocast_dtype is not None):
            r_chosen, r_rejected = pair_rewards(t.model, tokenizer, batch, cfg["seq"], device)
            loss = bradley_terry_loss(r_chosen, r_rejected)
        loss.backward()
        results[dtype] = (float(loss.detach()), grad_vector(t.model))
        t.model.zero_grad(set_to_none=True)
        secs = timed(t.train_step, device, cfg["steps"])
        rows.append([f"RM step ({dtype_name(dtype)})", "-", "-", f"{cfg['batch'] / secs:.1f} pairs/s ({secs * 1e3:.1f} ms/step)", "-"])
        del t
    (l32, g32), (l16, g16) = results[torch.float32], results[torch.bfloat16]
    return compare("RM step, bf16 autocast vs fp32", l32, l16, g32, g16, rows)


# --------------------------------------------------------------------------------------------
# Policy step
# --------------------------------------------------------------------------------------------


def policy_check(config, cfg: dict, device: torch.device, rows: list) -> bool:
    from transformers import AutoModelForCausalLM

    g = torch.Generator().manual_seed(2)
    n_prompts, n = max(1, cfg["batch"] // cfg["samples"]), cfg["samples"]
    prompt_len, completion_len = cfg["seq"] // 2, cfg["seq"] // 2
    prompts = torch.randint(2, config.vocab_size, (n_prompts, prompt_len), generator=g).tolist()
    completions = torch.randint(2, config.vocab_size, (n_prompts * n, completion_len), generator=g).tolist()
    batch = make_batch([p for p in prompts for _ in range(n)], completions, pad_id=config.pad_token_id, device=device)
    rewards = torch.randn(n_prompts, n, generator=g).to(device)
    advantages = (rewards - leave_one_out_baseline(rewards)).reshape(-1)  # [P·n]

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def loss_of(dtype: torch.dtype) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logp, _ = token_logprobs(model, batch)
            return reinforce_loss(sequence_logprob(logp, batch.completion_mask), advantages)

    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        loss = loss_of(dtype)
        loss.backward()
        results[dtype] = (float(loss.detach()), grad_vector(model))
        model.zero_grad(set_to_none=True)

    for dtype in (torch.float32, torch.bfloat16):
        def step() -> None:
            loss = loss_of(dtype)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        secs = timed(step, device, cfg["steps"])
        rows.append([f"policy step ({dtype_name(dtype)})", "-", "-",
                     f"{batch.input_ids.shape[0] / secs:.1f} sequences/s ({secs * 1e3:.1f} ms/step)", "-"])
    (l32, g32), (l16, g16) = results[torch.float32], results[torch.bfloat16]
    return compare("policy step, bf16 autocast vs fp32", l32, l16, g32, g16, rows)


# --------------------------------------------------------------------------------------------
# Merges against the device's copy bandwidth
# --------------------------------------------------------------------------------------------


def merge_check(cfg: dict, device: torch.device, rows: list) -> bool:
    n = int(cfg["merge_params"])
    ok = True
    shapes = {"embed": (n // 2,), "block": (n // 4, 1), "rest": (n - n // 2 - n // 4,)}
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.Generator(device=device).manual_seed(3)
        init = {k: torch.randn(s, generator=g, device=device).mul_(0.02).to(dtype) for k, s in shapes.items()}
        models = [{k: (v.float() + 2e-3 * torch.randn(v.shape, generator=g, device=device)).to(dtype) for k, v in init.items()}
                  for _ in range(4)]
        mb = merge.state_dict_bytes(init)
        src = torch.cat([v.reshape(-1) for v in init.values()])
        dst = torch.empty_like(src)
        copy_s = timed(lambda: dst.copy_(src), device, 5)
        copy_gbs = 2 * mb / copy_s / 1e9
        name = dtype_name(dtype)
        rows.append([f"copy_ ({name})", "-", "-", f"{copy_gbs:.1f} GB/s", "-"])
        buffers = merge.average(models)
        avg_s = timed(lambda: merge.average(models, out=buffers), device, 5)
        gbs = 5 * mb / avg_s / 1e9
        rows.append([f"merge.average M=4, out= reused ({name})", "-", "-", f"{gbs:.1f} GB/s, {gbs / copy_gbs:.2f} of copy", "-"])
        # The result must match a float64 reference within the output dtype's rounding.
        ref = {k: sum(sd[k].double() for sd in models) / 4 for k in init}
        err = max(float((buffers[k].double() - ref[k]).abs().max() / ref[k].abs().max()) for k in init)
        tol = 2.0**-8 if dtype == torch.bfloat16 else 1e-6
        ok &= err <= tol
        rows.append([f"merge.average M=4 vs float64 ({name})", "-", "-", f"max rel. error {err:.1e} (≤ {tol:.0e})", "ok" if err <= tol else "FAIL"])
        sl_buffers = merge.slerp_many(init, models[:2])
        sl_s = timed(lambda: merge.slerp_many(init, models[:2], out=sl_buffers), device, 5)
        gbs = 4 * mb / sl_s / 1e9
        rows.append([f"merge.slerp_many M=2, out= reused ({name})", "-", "-", f"{gbs:.1f} GB/s, {gbs / copy_gbs:.2f} of copy", "-"])
        del init, models, buffers, sl_buffers, src, dst, ref
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return ok


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny sizes (the CPU smoke test)")
    ap.add_argument("--device", default="auto", help="cuda, cpu, or auto (cuda when available)")
    args = ap.parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    cfg = sizes(args.small, device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    t_start = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(sentences(500, seed=0), vocab_size=512)
        config = tiny_policy_config(tokenizer, n_layer=cfg["n_layer"], n_embd=cfg["n_embd"], n_head=cfg["n_head"],
                                    n_positions=max(128, 2 * cfg["seq"]))
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

        rows: list[list[str]] = []
        ok = rm_check(Path(tmp), tokenizer, cfg, device, rows)
        ok &= policy_check(config, cfg, device, rows)
        ok &= merge_check(cfg, device, rows)

    clean = not any(m == "ray" or m.startswith(("ray.", "vllm")) for m in sys.modules)
    ok &= clean
    rows.append(["imports", "-", "-", "no ray, no vllm" if clean else "ray or vllm imported", "ok" if clean else "FAIL"])
    n_params = config.vocab_size * cfg["n_embd"] + cfg["n_layer"] * 12 * cfg["n_embd"] ** 2
    header = ["check", "fp32", "bf16", "result", "status"]
    print(f"GPU check on {device_name}; torch {torch.__version__}; tiny GPT-2 {cfg['n_layer']}x{cfg['n_embd']} "
          f"(~{n_params / 1e6:.1f}M params), batch {cfg['batch']}, length {cfg['seq']}; merges of "
          f"{cfg['merge_params'] / 1e6:.0f}M params; {time.perf_counter() - t_start:.1f} s")
    print()
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" for _ in header) + " |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
