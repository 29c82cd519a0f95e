"""`warm-ray merge`: one model from Hugging Face model dirs of one architecture.

Reward models trained elsewhere (TRL's RewardTrainer, OpenRLHF: sequence-classification dirs) or
causal-LM policies, merged with warm-ray's kernels (``warm_ray.merge``) and written as a Hugging
Face dir with the first model's tokenizer and a model card:

- ``average``: Σ_i w_i θ_i (WARM Eq. 4; uniform unless ``merge.weights``);
- ``greedy_soup``: the models sorted by pairwise accuracy on ``merge.selection``, each kept if the
  soup's accuracy there does not fall (model soups); reward models with one label only;
- ``slerp``: SLERP of the task vectors θ_i - θ_base, each tensor with its own angle (WARP Eq. 3;
  λ = ``merge.lam`` for two models, recursive 1/m for more);
- ``liti``: (1-η)·θ_base + η·slerp (WARP Eq. 4).

The score head is merged like every other tensor; a tied weight (GPT-2's ``lm_head.weight`` is
``transformer.wte.weight``) is merged once. Everything is checked before any tensor is merged:
one architecture, one vocabulary (config and tokenizer), the same tensor names and shapes; a
mismatch is one line naming the model and what differs. No Ray: a merge is one process.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from warm_ray import files, rundir
from warm_ray import merge as MG
from warm_ray.config import CAUSAL_LM, Config, MergeConfig, UserError, save_config
from warm_ray.geometry import task_vector_geometry, unique_float_keys

log = logging.getLogger(__name__)

CARD_LOAD = {"reward-model": "AutoModelForSequenceClassification", "policy": "AutoModelForCausalLM"}


def greedy_soup(order: list[str], start_acc: float, accuracy_of: Callable[[list[str]], float]) -> tuple[list[str], float]:
    """Model soups' greedy recipe: walk the models best-first, keep one if the soup does not get worse.

    ``accuracy_of(ids)`` must score the average of ``ids`` on the selection data only.
    """
    soup, best = [order[0]], start_acc
    for cand in order[1:]:
        acc = accuracy_of(soup + [cand])
        if acc >= best:
            soup, best = soup + [cand], acc
    return soup, best


# ------------------------------------------------------------------------------------------
# Checks, before any tensor is merged
# ------------------------------------------------------------------------------------------


def _config(path: str) -> dict:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return {**config.to_dict(), "num_labels": config.num_labels}  # to_dict() keeps only id2label


def _names(cfg: MergeConfig) -> list[tuple[str, str]]:
    """(config key, path) of every input, the base last."""
    out = [(f"merge.models[{i}]", p) for i, p in enumerate(cfg.models)]
    return out + ([("merge.base", cfg.base)] if cfg.base else [])


def check_inputs(cfg: MergeConfig) -> str:
    """The kind of the models ("reward-model" or "policy") after checking that the inputs are of one
    architecture and one vocabulary; a UserError naming the input and what differs otherwise."""
    inputs = _names(cfg)
    if len(cfg.models) < (1 if cfg.method == "liti" else 2):
        raise UserError(f"merge.models = {cfg.models}: merge.method = {cfg.method!r} needs at least "
                        f"{1 if cfg.method == 'liti' else 2} models (warm-ray merge DIR DIR ...)")
    configs = {key: _config(path) for key, path in inputs}
    key0, path0 = inputs[0]
    ref = configs[key0]
    arch0 = (ref.get("architectures") or ["?"])[0]
    for key, path in inputs[1:]:
        arch = (configs[key].get("architectures") or ["?"])[0]
        if arch != arch0:
            raise UserError(f"{key} = {path}: architecture {arch}, but {key0} = {path0} is {arch0}: "
                            "models of one architecture only")
        for field in ("model_type", "vocab_size", "num_labels"):
            if configs[key].get(field) != ref.get(field):
                raise UserError(f"{key} = {path}: {field} {configs[key].get(field)!r}, but {key0} = {path0} has "
                                f"{ref.get(field)!r}: models of one architecture and vocabulary only")
    _check_vocabularies(inputs)
    kind = "policy" if arch0.endswith(CAUSAL_LM) else "reward-model"
    if cfg.method == "greedy_soup" and (kind != "reward-model" or ref.get("num_labels", 2) != 1):
        raise UserError(f"merge.method = 'greedy_soup': {key0} = {path0} is {arch0} with "
                        f"{ref.get('num_labels')} label(s); the soup is chosen by pairwise accuracy, which needs "
                        "reward models (a sequence-classification model with one label)")
    return kind


def _check_vocabularies(inputs: Sequence[tuple[str, str]]) -> None:
    from transformers import AutoTokenizer

    key0, path0 = inputs[0]
    vocab0 = AutoTokenizer.from_pretrained(path0).get_vocab()
    for key, path in inputs[1:]:
        vocab = AutoTokenizer.from_pretrained(path).get_vocab()
        if vocab != vocab0:
            diff = sorted(set(vocab.items()) ^ set(vocab0.items()), key=lambda kv: kv[1])[:1]
            shown = f"; e.g. token {diff[0][0]!r} (id {diff[0][1]})" if diff else ""
            raise UserError(f"{key} = {path}: its tokenizer's vocabulary ({len(vocab)} tokens) differs from "
                            f"{key0} = {path0} ({len(vocab0)} tokens){shown}: models of one vocabulary only")


def _load(path: str, kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForCausalLM if kind == "policy" else AutoModelForSequenceClassification
    return cls.from_pretrained(path, dtype="auto").eval()


def merge_keys(model: torch.nn.Module) -> list[str]:
    """The state-dict names merged: every tensor once (a tied weight under its first name)."""
    sd = model.state_dict()
    floats = set(unique_float_keys(sd))
    return [k for k, t in sd.items() if k in floats or not t.is_floating_point()]


def _check_shapes(sds: dict[str, dict[str, torch.Tensor]], paths: dict[str, str]) -> None:
    (key0, ref), *rest = sds.items()
    for key, sd in rest:
        missing, extra = sorted(set(ref) - set(sd)), sorted(set(sd) - set(ref))
        if missing or extra:
            what = f"lacks tensor {missing[0]!r}" if missing else f"has tensor {extra[0]!r}"
            raise UserError(f"{key} = {paths[key]}: {what} where {key0} = {paths[key0]} does not match: "
                            "models of one architecture and size only")
        for name, t in ref.items():
            if sd[name].shape != t.shape:
                raise UserError(f"{key} = {paths[key]}: tensor {name!r} has shape {list(sd[name].shape)}, but "
                                f"{key0} = {paths[key0]} has {list(t.shape)}: models of one size only")


# ------------------------------------------------------------------------------------------
# The methods
# ------------------------------------------------------------------------------------------


def _selection_rows(cfg: MergeConfig, tokenizer) -> list[dict]:
    """The standardised pairs of ``merge.selection`` (its selection split when it has named splits)."""
    from warm_ray.data import SPLIT_NAMES, DataError, chat_renderer, read_preference_source, standardise

    by_split = read_preference_source(cfg.selection)
    if set(by_split) == {""}:
        name = ""
    else:
        name = next((n for n in SPLIT_NAMES["selection"] if n in by_split), None)
        if name is None:
            raise DataError(f"merge.selection = {cfg.selection}: splits {sorted(by_split)} and none of them is a "
                            f"selection split ({', '.join(SPLIT_NAMES['selection'])}); give a file of selection pairs")
    render = chat_renderer(tokenizer, cfg.chat_template, f"the tokenizer of {cfg.models[0]}", "merge.chat_template")
    rows, _ = standardise(by_split[name], f"{cfg.selection}" + (f" (split {name})" if name else ""), render)
    if not rows:
        raise DataError(f"merge.selection = {cfg.selection}: no pair to choose the soup on")
    return rows


def _soup(cfg: MergeConfig, sds: list[dict], template, tokenizer) -> tuple[list[float], dict]:
    """Greedy soup on the selection pairs: (weights per model, record)."""
    from warm_ray import reward as R

    rows = _selection_rows(cfg, tokenizer)

    def accuracy_of(sd) -> float:
        template.load_state_dict(sd, strict=False)
        return R.accuracy(R.pair_margins([template], tokenizer, rows, cfg.max_length))

    ids = [str(i) for i in range(len(sds))]
    own = {i: accuracy_of(sds[int(i)]) for i in ids}
    order = sorted(ids, key=lambda i: (-own[i], int(i)))
    chosen, acc = greedy_soup(order, own[order[0]], lambda soup: accuracy_of(MG.average([sds[int(i)] for i in soup])))
    weights = [1 / len(chosen) if i in chosen else 0.0 for i in ids]
    log.info("greedy soup on %d selection pairs: models %s (accuracy %.4f; best single %.4f)",
             len(rows), ", ".join(chosen), acc, own[order[0]])
    return weights, {"selection_pairs": len(rows), "selection_accuracy": own, "order": order, "chosen": chosen,
                     "soup_selection_accuracy": acc}


def _merge(cfg: MergeConfig, sds: list[dict], base: dict | None, template, tokenizer) -> tuple[dict, dict]:
    """The merged state dict and what the record says about it (weights, soup)."""
    try:
        if cfg.method == "average":
            weights = MG.normalise_weights(cfg.weights or None, len(sds))
            return MG.average(sds, weights), {"weights": weights}
        if cfg.method == "greedy_soup":
            weights, soup = _soup(cfg, sds, template, tokenizer)
            return MG.average([sd for sd, w in zip(sds, weights) if w > 0]), {"weights": weights, "soup": soup}
        slerped = (sds[0] if len(sds) == 1 else MG.slerp(base, sds[0], sds[1], cfg.lam) if len(sds) == 2
                   else MG.slerp_many(base, sds))
        if cfg.method == "slerp":
            return slerped, {"lam": cfg.lam if len(sds) == 2 else "recursive 1/m"}
        return MG.liti(base, slerped, cfg.eta), {"eta": cfg.eta, "lam": cfg.lam if len(sds) == 2 else "recursive 1/m"}
    except ValueError as e:  # a non-finite input, an overflow: the kernels' own one-line reasons
        raise UserError(f"merge.method = {cfg.method!r}: {e}") from None


def _card(cfg: MergeConfig, kind: str, record: dict, shown: Callable[[str], str]) -> str:
    from warm_ray import models as M

    weights = record.get("weights")
    rows = ["| model | weight |", "|---|---:|",
            *[f"| {shown(p)} | {'per tensor (SLERP)' if weights is None else f'{weights[i]:.4g}'} |"
              for i, p in enumerate(cfg.models)]]
    how = [f"- method: `{cfg.method}`"]
    if cfg.base:
        how.append(f"- base (the task vectors' init): {shown(cfg.base)}")
    how += [f"- {k}: {record[k]}" for k in ("lam", "eta") if k in record]
    soup = record.get("soup")
    if soup:
        how.append(f"- soup chosen on {soup['selection_pairs']} pairs of {shown(cfg.selection)}: models "
                   f"{', '.join(soup['chosen'])}, selection accuracy {soup['soup_selection_accuracy']:.4f} (each model: "
                   + ", ".join(f"{i}: {a:.4f}" for i, a in soup["selection_accuracy"].items()) + ")")
    geo = record.get("geometry")
    if geo:
        how.append(f"- task vectors from the base ({geo['parameters']:,} parameters, tied weights once): norms "
                   + ", ".join(f"{n:.4g}" for n in geo["norms"]) + "; pairwise angles "
                   + ", ".join(f"{p['runs'][0]}-{p['runs'][1]}: {p['angle_deg']:.1f}°" for p in geo["pairs"]
                               if p["angle_deg"] is not None))
    snippet = M.RM_LOAD_SNIPPET if kind == "reward-model" else M.POLICY_LOAD_SNIPPET
    return M.model_card(
        f"Merged {kind.replace('-', ' ')} ({cfg.method}, {len(cfg.models)} models)", kind,
        f"{len(cfg.models)} Hugging Face models of one architecture merged by `warm-ray merge` "
        f"({cfg.method}); every tensor merged in float32 and stored in the inputs' dtype, the score head "
        "included, a tied weight once.",
        {"Inputs": rows, "Method": how}, snippet.replace("max_length=max_length", "max_length=512"))


# ------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------


def merge_fingerprint(cfg: MergeConfig, run_dir: str) -> str:
    from warm_ray.sources import dir_fingerprint

    fields = json.loads(json.dumps(cfg.__dict__))
    fields["inputs"] = {key: dir_fingerprint(path, run_dir) for key, path in _names(cfg)}
    if cfg.selection:
        path = Path(cfg.selection)
        fields["selection_file"] = (dir_fingerprint(path, run_dir) if path.is_dir() else rundir.fingerprint(
            {"path": files.portable(path, run_dir), "size": path.stat().st_size, "mtime": path.stat().st_mtime_ns}))
    return rundir.fingerprint(fields)


def run_merge(config: Config) -> dict:
    """Check the inputs, merge, write ``run_dir/merge/model`` (a Hugging Face dir) and its record."""
    cfg = config.merge
    out = Path(config.run_dir) / "merge"
    if not cfg.models:
        raise UserError("merge.models is empty: name the models to merge (warm-ray merge DIR DIR ...)")
    kind = check_inputs(cfg)
    fp = merge_fingerprint(cfg, config.run_dir)
    done = rundir.reuse(out, fp, f"merge in {out}")
    if done is not None and rundir.damaged_weights(out / "model") is None:
        _report(out, done)
        return done
    t0 = time.perf_counter()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.models[0])
    log.info("merging %d %s dirs (%s)", len(cfg.models), kind, cfg.method)
    models = [_load(p, kind) for p in cfg.models]
    # the model the merge is loaded into (and the soup scored with): a copy, since the state dicts
    # below share memory with the inputs' own parameters
    template = copy.deepcopy(models[0])
    keys = merge_keys(template)
    sds = [{k: m.state_dict()[k] for k in keys} for m in models]
    paths = {key: path for key, path in _names(cfg)}
    base = None
    if cfg.base:
        base_sd = _load(cfg.base, kind).state_dict()
        base = {k: base_sd[k] for k in keys if k in base_sd}
    _check_shapes({**{f"merge.models[{i}]": sd for i, sd in enumerate(sds)},
                   **({"merge.base": base} if base is not None else {})}, paths)
    merged, record = _merge(cfg, sds, base, template, tokenizer)
    if base is not None:
        record["geometry"] = task_vector_geometry(base, sds, [k for k in keys if sds[0][k].is_floating_point()])
    missing, unexpected = template.load_state_dict(merged, strict=False)
    tied = set(template.state_dict()) - set(keys)
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"merged state dict does not fit the model: missing {missing}, unexpected {unexpected}")
    out.mkdir(parents=True, exist_ok=True)
    from warm_ray import models as M

    M.save_model(template, out / "model", tokenizer,
                 _card(cfg, kind, record, lambda p: files.shown(p, config.run_dir)))
    named = {"models": [files.portable(p, config.run_dir) for p in cfg.models],
             "base": files.portable(cfg.base, config.run_dir) if cfg.base else ""}
    result = files.portable_paths({"kind": kind, "method": cfg.method, **named, "model_dir": str(out / "model"),
                                   **record, "seconds": round(time.perf_counter() - t0, 2)}, config.run_dir)
    save_config(config, out)
    _report(out, result)
    rundir.finish(out, fp, result)
    return result


def largest_difference(dir_a: str | Path, dir_b: str | Path) -> float:
    """max |a - b| over the tensors of two saved model dirs of one architecture (their safetensors)."""
    from warm_ray.models import load_state_dict

    a, b = (load_state_dict(Path(d) / "model.safetensors") for d in (dir_a, dir_b))
    if set(a) != set(b):
        raise UserError(f"{dir_a} and {dir_b} hold different tensors")
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()), default=0.0)


def _report(out: Path, result: dict) -> None:
    weights = result.get("weights")
    lines = ["| model | weight |", "|---|---:|",
             *[f"| {p} | {'per tensor' if weights is None else f'{weights[i]:.4g}'} |"
               for i, p in enumerate(result["models"])]]
    soup = result.get("soup")
    extra = (f"\nGreedy soup on {soup['selection_pairs']} selection pairs: models {', '.join(soup['chosen'])}, "
             f"accuracy {soup['soup_selection_accuracy']:.4f}\n") if soup else ""
    files.publish(out, result, "\n".join(lines) + "\n" + extra,
                  f"Merged {len(result['models'])} {result['kind']} dirs ({result['method']}):",
                  f"model: {out / 'model'}   ({result['seconds']}s)")
