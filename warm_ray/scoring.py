"""Scoring many reward models on the same texts: each text tokenized once, every forward pass a job.

The evaluation of a WARM run scores M members, WARM and the greedy soup on five sets, every point of
every member pair's interpolation line on four, and a Best-of-N pool of 8,192 completions with every
selector. On CPU that is the run's largest cost after training, and it used to lose time three ways:
every model tokenized every set again; texts were batched in order of their length in characters,
which on the benchmark's short texts left ~40% of a batch's tokens padding; and (model, set) jobs of
very different sizes (2,250 clean training pairs beside 500 selection pairs) left a core idle at the
end of each round. Here the texts are tokenized once and batched in order of their token length (2-10%
padding), and each (model, batch) forward pass is one job of ``models.thread_map``: jobs of like size,
on every core, one torch thread each. A text's score does not depend on its batch but for the last
bits of float arithmetic (right padding, the score read at the last real token), and a forward pass
gives the same numbers whichever thread runs it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


def texts_of(rows: Sequence[dict], column: str) -> list[str]:
    """The full texts (prompt + completion) of one side (``chosen`` or ``rejected``) of preference rows."""
    return [r["prompt"] + r[column] for r in rows]


def encode(tokenizer, texts: Sequence[str], max_length: int, device="cpu") -> dict[str, torch.Tensor]:
    """One padded, truncated batch of ``texts`` on ``device``."""
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    return {k: v.to(device) for k, v in enc.items()}


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in order of ``lengths`` (ties in their given order), cut into batches of ``batch_size``."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


@dataclass(frozen=True)
class Encoded:
    """Texts tokenized once, in batches of like length: (indices into the texts, encoding) per batch."""

    n: int
    batches: tuple[tuple[list[int], dict[str, torch.Tensor]], ...]


def encode_texts(tokenizer, texts: Sequence[str], max_length: int, batch_size: int, device="cpu",
                 by_length: bool = True) -> Encoded:
    """``texts`` in batches of ``batch_size``, each padded to its longest text: in order of token length
    (``by_length``; ~2-10% padding on the benchmark's sets, against ~40% when sorted by characters), else
    as given."""
    texts = list(texts)
    if not by_length:
        cuts = [list(range(s, min(s + batch_size, len(texts)))) for s in range(0, len(texts), batch_size)]
        return Encoded(len(texts), tuple((idx, encode(tokenizer, [texts[i] for i in idx], max_length, device))
                                         for idx in cuts))
    enc = tokenizer(texts, truncation=True, max_length=max_length) if texts else {"input_ids": []}
    batches = []
    for idx in length_batches([len(ids) for ids in enc["input_ids"]], batch_size):
        padded = tokenizer.pad({k: [v[i] for i in idx] for k, v in enc.items()}, return_tensors="pt")
        batches.append((idx, {k: v.to(device) for k, v in padded.items()}))
    return Encoded(len(texts), tuple(batches))


def score_encoded(models: Sequence, encoded: Sequence[Encoded], threads: bool = True) -> list[list[torch.Tensor]]:
    """Rewards of every model on every text list: ``out[j][k]`` is model j on ``encoded[k]``, float32 on
    CPU in the texts' order. ``threads``: the (model, batch) passes spread over ``models.thread_map``;
    else one after another on this thread (as ``reward.score`` does)."""
    from warm_ray.models import thread_map

    for model in models:
        model.eval()
    jobs = [(j, k, b) for j in range(len(models)) for k, enc in enumerate(encoded) for b in range(len(enc.batches))]

    def one(job) -> torch.Tensor:
        j, k, b = job
        with torch.no_grad():  # grad mode is per thread: set here, not by the caller
            return models[j](**encoded[k].batches[b][1]).logits.squeeze(-1).float().cpu()

    done = thread_map(one, jobs) if threads else [one(job) for job in jobs]
    out = [[torch.empty(enc.n) for enc in encoded] for _ in models]
    for (j, k, b), scores in zip(jobs, done):
        out[j][k][encoded[k].batches[b][0]] = scores
    return out


def encode_pairs(tokenizer, sets: Mapping[str, Sequence[dict]], max_length: int, batch_size: int,
                 device="cpu") -> dict[str, tuple[Encoded, Encoded]]:
    """Each set's chosen and rejected texts (prompt + completion), tokenized once."""
    return {name: (encode_texts(tokenizer, texts_of(rows, "chosen"), max_length, batch_size, device),
                   encode_texts(tokenizer, texts_of(rows, "rejected"), max_length, batch_size, device))
            for name, rows in sets.items()}


def pair_margins(models: Sequence, pairs: Mapping[str, tuple[Encoded, Encoded]],
                 threads: bool = True) -> list[dict[str, torch.Tensor]]:
    """r(chosen) - r(rejected) of every model on every set: ``out[j][set]``, one model's own margins."""
    names = list(pairs)
    scored = score_encoded(models, [enc for name in names for enc in pairs[name]], threads)
    return [{name: row[2 * i] - row[2 * i + 1] for i, name in enumerate(names)} for row in scored]


def head_inputs(model, head: torch.nn.Module, encoded: Encoded, padding_side: str,
                threads: bool = True) -> torch.Tensor:
    """What ``head`` sees for each text, pooled at the last real token for a decoder: [N, D] float32,
    in the texts' order; the batches' passes spread over threads like ``score_encoded``'s."""
    from warm_ray.models import thread_map

    seen = threading.local()  # a forward hook runs on the thread of its pass

    def hook(_module, inputs, _output):
        seen.x = inputs[0].detach().float().cpu()

    def one(b: int) -> torch.Tensor:
        with torch.no_grad():
            model(**encoded.batches[b][1])
        x = seen.x
        if x.dim() == 3:  # decoder RMs apply the head to every position: pool at the last real token
            mask = encoded.batches[b][1]["attention_mask"].cpu()
            last = mask.sum(-1) - 1 if padding_side == "right" else torch.full_like(mask[:, 0], -1)
            x = x[torch.arange(x.shape[0]), last]
        return x

    model.eval()
    handle = head.register_forward_hook(hook)
    try:
        ids = range(len(encoded.batches))
        done = thread_map(one, ids) if threads else [one(b) for b in ids]
    finally:
        handle.remove()
    out = torch.empty(encoded.n, done[0].shape[-1]) if done else torch.zeros(0, 0)
    for b, x in zip(ids, done):
        out[encoded.batches[b][0]] = x
    return out
