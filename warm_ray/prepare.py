"""`warm-ray prepare`: the tiny base LM, its Baklava checkpoints, and the gold-labelled splits.

Output (``<run_dir>/prepare``):
    tokenizer/                 byte-level BPE trained on the shipped corpus
    lm/step_<k>/               base LM checkpoints (HF dirs): the diverse RM featurizer inits
    policy -> lm/step_<last>   the SFT policy that RL starts from (a path in prepare.json)
    data/                      datasets.DatasetDict: train, selection, test_id, test_ood
    prompts.json               RL prompts: train (ID), eval (held-out ID), ood
    prepare.json               paths, counts, corruption rate, timings
    config.yaml                the resolved config

The directory is one unit of the run-dir contract (``warm_ray.rundir``): a rerun under the same
prepare settings reuses it, under other settings rebuilds it; a stopped prepare keeps the parts it
finished (tokenizer, base LM, splits) when its settings are unchanged.

prepare.json names the files prepare built relative to the run dir (``prepare/lm/step_<k>``), so a
moved or copied run dir reads its own; ``prepare.base_model``, from outside, by its absolute path
and the fingerprint of its files. A finished prepare whose record names files that are not in this
dir (a run dir moved or copied while records held absolute paths) is not reused: its record is
built again from the parts that are here (the rest recomputed); one whose base model's files
changed is recomputed.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from warm_ray import data as D
from warm_ray import files
from warm_ray import models as M
from warm_ray import rundir
from warm_ray.config import Config, PrepareConfig, save_config
from warm_ray.policy import sample
from warm_ray.sources import PREPARED_PATHS, dir_fingerprint

log = logging.getLogger("warm_ray.prepare")


# prepare settings that do not change its outputs
NOT_FINGERPRINTED = ("resources", "sample_batch_size")


def fingerprint(cfg: PrepareConfig) -> str:
    """Fingerprint of every prepare setting that changes its outputs (resources do not)."""
    return rundir.fingerprint(rundir.without(asdict(cfg), NOT_FINGERPRINTED))


def _lm_batches(ids: torch.Tensor, seq_len: int, batch_size: int, gen: torch.Generator):
    """Random windows of the packed token stream."""
    while True:
        starts = torch.randint(0, ids.numel() - seq_len - 1, (batch_size,), generator=gen)
        yield torch.stack([ids[s:s + seq_len] for s in starts.tolist()])


def train_base_lm(cfg: PrepareConfig, tokenizer, out_dir: Path, texts: list[str], device: torch.device) -> list[Path]:
    """Train the tiny causal LM on the ID corpus; save an HF dir at each checkpoint step."""
    steps = sorted(cfg.checkpoint_steps)
    if not steps or steps[-1] > cfg.lm_steps or steps[0] <= 0:
        raise ValueError(f"prepare.checkpoint_steps {cfg.checkpoint_steps} must lie in [1, lm_steps={cfg.lm_steps}]")
    paths = [out_dir / f"step_{s}" for s in steps]
    if all((p / "config.json").exists() for p in paths):
        log.info("base LM checkpoints exist, skipping LM training")
        return paths
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += [eos] + ids
    stream_t = torch.tensor(stream, dtype=torch.long)
    mc = cfg.model
    config = M.tiny_policy_config(tokenizer, arch=mc.arch, n_layer=mc.n_layer, n_embd=mc.n_embd,
                                  n_head=mc.n_head, n_positions=mc.n_positions)
    model = M.build_policy(config, seed=cfg.seed).to(device)
    model.train()
    # the foreach AdamW kernel, as the base LM and the study's data were made with (fused would change
    # the LM by float rounding, and with it every sampled pair)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lm_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * max(0.1, 1 - s / cfg.lm_steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = _lm_batches(stream_t, cfg.lm_seq_len, cfg.lm_batch_size, gen)
    bar = tqdm(range(1, cfg.lm_steps + 1), desc="base LM", mininterval=2.0)
    for step in bar:
        x = next(batches).to(device)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if step in steps:
            M.save_model(model, out_dir / f"step_{step}", tokenizer)
            log.info("base LM step %d: loss %.3f, saved", step, loss.item())
    return paths


def sentiment_token_bias(tokenizer, strength: float) -> dict[int, float]:
    """Logit offsets for tokens that spell a positive word of the sentiment lexicon.

    The drift an RL policy takes against a sentiment-liking proxy, applied to the base LM to
    build the OOD split without any RL.
    """
    if strength == 0:
        return {}
    from warm_ray.gold import sentiment_lexicon

    lexicon = sentiment_lexicon()
    bias = {}
    for token, idx in tokenizer.get_vocab().items():
        word = tokenizer.convert_tokens_to_string([token]).strip().lower()
        if lexicon.get(word, 0.0) >= 1.0:
            bias[idx] = strength
    return bias


def _sample_pairs(model, tokenizer, sentences, n_pairs, cfg: PrepareConfig, temperature, rng, device, what,
                  drift: dict | None = None):
    """Sample until ``n_pairs`` labelled pairs pass the margin filter (at most 8 rounds)."""
    rows: list[dict] = []
    for round_ in range(8):
        need = n_pairs - len(rows)
        if need <= 0:
            break
        k = int(need * 2.5) + 16  # many pairs tie under the gold reward and are dropped
        prompts = D.prompts_from(sentences, cfg.prompt_words, k, rng)
        comps = sample(model, tokenizer, prompts, n=2, max_new_tokens=cfg.max_new_tokens,
                       temperature=temperature, batch_size=cfg.sample_batch_size,
                       seed=rng.randrange(2**31), device=device, **(drift or {}))
        new = D.label_pairs(prompts, comps, beta=cfg.bt_beta, min_margin=cfg.min_margin)
        rows += new
        log.info("%s: round %d kept %d/%d pairs (%d/%d)", what, round_, len(new), k, min(len(rows), n_pairs), n_pairs)
    if len(rows) < n_pairs:
        raise RuntimeError(f"{what}: only {len(rows)} of {n_pairs} pairs passed min_margin={cfg.min_margin}")
    return rows[:n_pairs]


def _damaged_checkpoints(out: Path, summary: dict) -> list[str]:
    """The base-LM checkpoints of a finished prepare whose weights no longer load."""
    return [f"{p}: {why}" for p in summary.get("checkpoints", [])
            if files.within(p, out) and (why := rundir.damaged_weights(p)) is not None]


def _not_here(cfg: PrepareConfig, out: Path, summary: dict) -> list[str]:
    """The files a finished prepare's record (paths resolved) names that this prepare dir does not
    hold: missing, or in another dir (a run dir moved or copied while records held absolute paths);
    and ``prepare.base_model`` when it is missing or its files changed since."""
    built = ("data", "prompts") if cfg.base_model is not None else PREPARED_PATHS
    named = [p for k in built for p in (summary.get(k) if isinstance(summary.get(k), list) else [summary.get(k)])]
    out_of_place = [f"{p}: missing" if not isinstance(p, str) or not Path(p).exists() else f"{p}: not in {out}"
                    for p in dict.fromkeys(named)
                    if not isinstance(p, str) or not Path(p).exists() or not files.within(p, out)]
    recorded = summary.get("base_model_fingerprint")  # absent in records from before it was kept
    if cfg.base_model is not None and recorded is not None and dir_fingerprint(summary["policy"],
                                                                               out.parent) != recorded:
        out_of_place.append(f"prepare.base_model {summary['policy']}: missing, or its files changed")
    return out_of_place


def _reuse_or_start(config: Config, out: Path, fp: str) -> dict | None:
    """The summary (paths resolved) of a prepare finished under fingerprint ``fp`` whose files are all
    in ``out``, with intact checkpoints; else None, with ``out`` started as a unit under ``fp``."""
    resume = True
    record = rundir.read_json(out / rundir.MARKER) or {}
    if record.get("fingerprint") == fp:
        elsewhere = _not_here(config.prepare, out, _resolved(record.get("result") or {}, config.run_dir))
        if elsewhere:
            # the parts that are here were built under this fingerprint (started.json) and are kept;
            # a changed base model changes what was sampled from it: everything is recomputed
            resume = not any(w.startswith("prepare.base_model") for w in elsewhere)
            more = f"; and {len(elsewhere) - 3} more" if len(elsewhere) > 3 else ""
            log.warning("prepare in %s: recomputed (its record names files that are not this run dir's: %s%s)",
                        out, "; ".join(elsewhere[:3]), more)
            rundir.forget(out)
    done = rundir.reuse(out, fp, f"prepare in {out}")
    summary = None if done is None else _resolved(done, config.run_dir)
    damaged = [] if summary is None else _damaged_checkpoints(out, summary)
    if summary is not None and not damaged:
        if files.portable_paths(summary, config.run_dir) != done:
            _write_summary(out, fp, summary, config.run_dir)  # a record of absolute paths: from now on relative
        save_config(config, out)
        return summary
    if damaged:
        # no intact copy of a base-LM checkpoint exists elsewhere: rebuild prepare (same seeds)
        log.warning("prepare in %s: damaged base-LM checkpoint(s) %s: rebuilding prepare", out, "; ".join(damaged))
        rundir.forget(out)
        resume = False
    # The tokenizer, the base LM and the splits are each written atomically: under the same
    # fingerprint a stopped prepare keeps the parts it finished; under another one it starts over.
    rundir.start(out, fp, f"prepare in {out}", resume=resume)
    save_config(config, out)
    return None


def _resolved(summary: dict, run_dir: str | Path) -> dict:
    """A prepare record with its paths resolved against ``run_dir`` (``files.in_run_dir``)."""
    return files.resolved_paths(summary, run_dir, PREPARED_PATHS)


def _write_summary(out: Path, fp: str, summary: dict, run_dir: str | Path) -> None:
    """prepare.json and the unit's record, with the paths inside the run dir relative to it."""
    record = files.portable_paths(summary, run_dir)
    files.atomic_write_json(out / "prepare.json", record)
    rundir.finish(out, fp, record)


def _tokenizer_and_lm(cfg: PrepareConfig, out: Path, lm_text: list[str], device: torch.device) -> tuple:
    """(tokenizer, base-LM checkpoint paths): ``prepare.base_model`` as is, else the tokenizer and LM
    trained here (each kept when a stopped prepare already finished it)."""
    if cfg.base_model is not None:
        base = M.resolve_model_dir(cfg.base_model)
        return M.load_tokenizer(base), [Path(base)]
    tok_dir = out / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        tokenizer = M.load_tokenizer(tok_dir)
    else:
        tokenizer = M.train_tokenizer(lm_text, cfg.model.vocab_size)
        with files.atomic_dir(tok_dir) as tmp:
            tokenizer.save_pretrained(str(tmp))
    return tokenizer, train_base_lm(cfg, tokenizer, out / "lm", lm_text, device)


def _sample_splits(cfg: PrepareConfig, tokenizer, lm_path: Path, id_text: list[str], ood_text: list[str],
                   device: torch.device) -> dict[str, list[dict]]:
    """The four labelled splits, sampled from the last base-LM checkpoint; only train's labels are flipped."""
    rng = random.Random(cfg.seed)
    policy = M.load_policy(lm_path, device=device, dtype="float32")
    train = _sample_pairs(policy, tokenizer, id_text[D.LM_TEXT], cfg.n_train, cfg, cfg.temperature, rng, device,
                          "train")
    selection = _sample_pairs(policy, tokenizer, id_text[D.SELECTION_PROMPTS], cfg.n_selection, cfg,
                              cfg.temperature, rng, device, "selection")
    test_id = _sample_pairs(policy, tokenizer, id_text[D.TEST_PROMPTS], cfg.n_test, cfg, cfg.temperature, rng,
                            device, "test_id")
    drift = {"repetition_penalty": cfg.ood_repetition_penalty,
             "token_bias": sentiment_token_bias(tokenizer, cfg.ood_sentiment_bias)}
    test_ood = _sample_pairs(policy, tokenizer, ood_text, cfg.n_ood, cfg, cfg.ood_temperature, rng, device,
                             "test_ood", drift)
    return {
        "train": D.corrupt(train, cfg.label_noise, rng),
        "selection": D.corrupt(selection, 0.0, rng),
        "test_id": D.corrupt(test_id, 0.0, rng),
        "test_ood": D.corrupt(test_ood, 0.0, rng),
    }


def _rl_prompts(cfg: PrepareConfig, id_text: list[str], ood_text: list[str]) -> dict[str, list[str]]:
    """The RL prompts: train (ID), eval (held-out ID), ood; drawn with their own seed."""
    prompt_rng = random.Random(cfg.seed + 1)
    return {
        "train": D.prompts_from(id_text[D.LM_TEXT], cfg.prompt_words, 2000, prompt_rng),
        "eval": D.prompts_from(id_text[D.EVAL_PROMPTS], cfg.prompt_words, 256, prompt_rng),
        "ood": D.prompts_from(ood_text, cfg.prompt_words, 256, prompt_rng),
    }


def prepare(config: Config) -> dict:
    """The prepare unit of ``config.run_dir``: reused when finished under the same settings, else
    built (tokenizer and base LM, the labelled splits, the RL prompts); its summary (prepare.json)."""
    cfg = config.prepare
    out = Path(config.run_dir) / "prepare"
    out.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(cfg)
    done = _reuse_or_start(config, out, fp)
    if done is not None:
        return done
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.resources.num_threads)
    device = M.resolve_device(cfg.resources.device)
    id_text = D.corpus(D.ID_CORPUS)
    ood_text = D.corpus(D.OOD_CORPUS)
    tokenizer, lm_paths = _tokenizer_and_lm(cfg, out, id_text[D.LM_TEXT], device)
    t_lm = time.perf_counter() - t0

    data_dir = out / "data"
    if not (data_dir / "dataset_dict.json").exists():
        D.save_splits(_sample_splits(cfg, tokenizer, lm_paths[-1], id_text, ood_text, device), data_dir)
    splits = D.load_splits(data_dir)
    t_data = time.perf_counter() - t0 - t_lm

    files.atomic_write_json(out / "prompts.json", _rl_prompts(cfg, id_text, ood_text))
    train = splits["train"]
    run_dir = config.run_dir
    summary = {
        "fingerprint": fp,
        # relative to the run dir: later stages resolve them against the run dir wherever it is now
        # (sources.prepared_summary); prepare.base_model, from outside, stays absolute
        "tokenizer": files.portable(lm_paths[-1], run_dir),
        "checkpoints": [files.portable(p, run_dir) for p in lm_paths],
        "policy": files.portable(lm_paths[-1], run_dir),
        "data": files.portable(data_dir, run_dir),
        "prompts": files.portable(out / "prompts.json", run_dir),
        **({"base_model_fingerprint": dir_fingerprint(lm_paths[-1], run_dir)} if cfg.base_model is not None else {}),
        "rows": {k: len(v) for k, v in splits.items()},
        "corruption_rate": sum(r["corrupted"] for r in train) / len(train),
        "gold_mean": {k: sum(r["gold_chosen"] + r["gold_rejected"] for r in v) / (2 * len(v))
                      for k, v in splits.items()},
        "seconds": {"lm": round(t_lm, 1), "data": round(t_data, 1)},
    }
    _write_summary(out, fp, summary, run_dir)
    log.info("prepare done: %s", summary["rows"])
    return _resolved(summary, run_dir)
