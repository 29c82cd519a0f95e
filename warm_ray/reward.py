"""Reward models in plain PyTorch: Bradley-Terry loss, LP-FT, scoring, ENS, pairwise accuracy.

An RM maps (prompt, completion) to one scalar. Training minimises the Bradley-Terry loss
(WARM Eq. 1):  -E log σ(r(x, y⁺) - r(x, y⁻)).
LP-FT (WARM Sec. 3.1): the linear head is first fitted on frozen features (linear probing),
once, and shared by all members; then every weight is fine-tuned.
ENS averages the members' predictions (M forward passes); WARM averages their weights (one).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from warm_ray.ensemble import Normaliser, check_mode, combine
from warm_ray.names import LR_SCHEDULES, REWARD_MODES
from warm_ray.scoring import encode, encode_texts, head_inputs, score_encoded, texts_of

HEAD_NAMES = ("score", "classifier")  # GPT-2 / Llama heads, BERT-style heads

log = logging.getLogger("warm_ray.reward")


def head_module(model) -> torch.nn.Module:
    """The final linear layer of a sequence-classification model."""
    for name in HEAD_NAMES:
        module = getattr(model, name, None)
        if module is not None:
            if isinstance(module, torch.nn.Linear):
                return module
            linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
            if linears:
                return linears[-1]
    raise ValueError(f"{type(model).__name__} has no scoring head among {HEAD_NAMES}")


def overlong(tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 1024) -> list[bool]:
    """Which of ``texts`` ``encode`` cuts: longer than ``max_length`` tokens, special tokens included
    (each text tokenized once, in batches; nothing past ``max_length + 1`` tokens is kept)."""
    out: list[bool] = []
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[start:start + batch_size]), truncation=True, max_length=max_length + 1)["input_ids"]
        out += [len(x) > max_length for x in ids]
    return out


def truncated_pairs(tokenizer, rows: Sequence[dict], max_length: int) -> int:
    """How many pairs of ``rows`` have a chosen or rejected text (prompt + completion, as the RM
    scores it) longer than ``max_length`` tokens: the pairs the RM sees cut."""
    chosen = overlong(tokenizer, texts_of(rows, "chosen"), max_length)
    rejected = overlong(tokenizer, texts_of(rows, "rejected"), max_length)
    return sum(a or b for a, b in zip(chosen, rejected))


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-E log σ(r⁺ - r⁻) (WARM Eq. 1)."""
    return -F.logsigmoid(r_chosen.float() - r_rejected.float()).mean()


def pair_rewards(model, tokenizer, rows: Sequence[dict], max_length: int, device="cpu", length_groups: int = 1):
    """Rewards of chosen and rejected texts: ([B], [B]).

    ``length_groups`` > 1 sorts the 2B texts by token length and runs one forward pass per group,
    each padded to its own longest text: the same rewards (and gradients) with fewer padding
    tokens. A chosen text and its rejected one often differ a lot in length, so ~30% of the tokens
    of one pass are padding on the tiny default; two groups cut the tokens a step computes by ~13%.
    """
    texts = texts_of(rows, "chosen") + texts_of(rows, "rejected")
    if length_groups <= 1:
        r = model(**encode(tokenizer, texts, max_length, device)).logits.squeeze(-1)
        return r[: len(rows)], r[len(rows):]
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    size = math.ceil(len(texts) / length_groups)
    parts = []
    for start in range(0, len(order), size):
        group = order[start:start + size]
        enc = tokenizer.pad({"input_ids": [ids[i] for i in group]}, return_tensors="pt")
        parts.append(model(**{k: v.to(device) for k, v in enc.items()}).logits.squeeze(-1))
    r = torch.cat(parts)[torch.argsort(torch.tensor(order))]
    return r[: len(rows)], r[len(rows):]


def score(model, tokenizer, texts: Sequence[str], max_length: int = 64, batch_size: int = 128,
          device="cpu") -> torch.Tensor:
    """Rewards of full texts (prompt + completion): float32 [N] on CPU, in the order of ``texts``.

    Texts are batched in order of length, so a batch pads to the length of texts like its own
    (evaluation sets and Best-of-N pools mix 5- and 60-token texts); the scores are put back in
    the caller's order. On this thread; ``warm_ray.scoring`` scores many models over threads.
    """
    return score_encoded([model], [encode_texts(tokenizer, texts, max_length, batch_size, device)], threads=False)[0][0]


def pair_margins(models: Sequence, tokenizer, rows: Sequence[dict], max_length: int = 64,
                 batch_size: int = 128, device="cpu") -> torch.Tensor:
    """r(chosen) - r(rejected) for each row, averaged over ``models`` (one model: itself; ENS: M)."""
    chosen, rejected = texts_of(rows, "chosen"), texts_of(rows, "rejected")
    total = torch.zeros(len(rows))
    for model in models:
        total += score(model, tokenizer, chosen, max_length, batch_size, device)
        total -= score(model, tokenizer, rejected, max_length, batch_size, device)
    return total / len(models)


def accuracy(margins: torch.Tensor) -> float:
    """Pairwise accuracy: the fraction of pairs where the labelled chosen scores higher."""
    return float((margins > 0).float().mean()) if margins.numel() else float("nan")


# ------------------------------------------------------------------------------------------
# Linear probing (the LP of LP-FT)
# ------------------------------------------------------------------------------------------


def head_features(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 128,
                  device="cpu", threads: bool = False) -> torch.Tensor:
    """The inputs the scoring head sees (pooled features), for frozen-feature probing: [N, D].
    ``threads``: the batches' forward passes spread over ``models.thread_map``."""
    encoded = encode_texts(tokenizer, texts, max_length, batch_size, device, by_length=False)
    return head_inputs(model, head_module(model), encoded, tokenizer.padding_side, threads)


def fit_linear_probe(feat_chosen: torch.Tensor, feat_rejected: torch.Tensor, epochs: int = 20,
                     lr: float = 1e-2, weight_decay: float = 1e-4, seed: int = 0,
                     bias: bool = False) -> dict[str, torch.Tensor]:
    """Fit a linear head w on frozen features by Bradley-Terry: min -log σ(w·(f⁺ - f⁻)).

    Full-batch Adam; returns {'weight': [1, D]} (+ {'bias': [1]}, which cancels in BT and stays 0).
    """
    gen = torch.Generator().manual_seed(seed)
    dim = feat_chosen.shape[1]
    # normalise features so one learning rate suits any featurizer width
    diff = feat_chosen - feat_rejected
    scale = diff.std().clamp_min(1e-6)
    w = (torch.randn(1, dim, generator=gen) * 0.01).requires_grad_()
    opt = torch.optim.Adam([w], lr=lr, weight_decay=weight_decay)
    for _ in range(max(1, epochs) * 10):
        loss = -F.logsigmoid((diff / scale) @ w.T).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    head = {"weight": (w.detach() / scale)}
    if bias:
        head["bias"] = torch.zeros(1)
    return head


def load_head(model, head: dict[str, torch.Tensor]) -> None:
    """Copy a probed head into ``model``'s scoring head."""
    module = head_module(model)
    with torch.no_grad():
        module.weight.copy_(head["weight"].to(module.weight))
        if module.bias is not None:
            module.bias.zero_()


# ------------------------------------------------------------------------------------------
# Scoring API (used by RL): WARM, one member, or the members combined (ENS, WCO, UWO)
# ------------------------------------------------------------------------------------------


def member_final_dirs(warm_dir: str | Path) -> list[Path]:
    """The finished members of a `warm-ray warm` run dir (``members/member_<i>/final``), by index."""
    dirs = Path(warm_dir).glob("members/member_*/final")
    return sorted(dirs, key=lambda d: int(d.parent.name.removeprefix("member_")))


def warm_run_dirs(warm_dir: str | Path, kind: str = "warm", member: int = 0,
                  with_members: bool = False) -> tuple[list[Path], list[Path] | None]:
    """(scoring model dirs, member dirs or None) of reward mode ``kind`` in a `warm-ray warm` run dir,
    for ``RewardScorer.from_dirs``: 'warm' (the weight average), 'single' (member ``member``), or
    'ens' / 'wco' / 'uwo' (all members). ``with_members`` also names every member, for
    ``member_scores`` in 'warm' / 'single' mode (the ensemble modes score with them anyway).
    FileNotFoundError when one is missing."""
    warm_dir = Path(warm_dir)
    all_members = member_final_dirs(warm_dir)
    models = REWARD_MODES[kind].models
    if models == "warm":
        dirs = [warm_dir / "warm_rm"]
    elif models == "member":
        dirs = [warm_dir / "members" / f"member_{member}" / "final"]
    else:
        dirs = all_members
    member_dirs = all_members if with_members and models != "members" else None
    missing = [str(d) for d in [*dirs, *(member_dirs or [])] if not (d / "config.json").exists()]
    if not dirs or missing or member_dirs == []:
        raise FileNotFoundError(f"reward model dirs missing: {missing or warm_dir}; run `warm-ray warm` first")
    return dirs, member_dirs


class RewardScorer:
    """Scores (prompt, completion) texts in one reward mode of ``warm_ray.names.REWARD_MODES``.

    warm / single: one model, one forward pass per sample. ens / wco / uwo: the M members
    score every sample once (raw scores [M, N]), are normalised per member on reference
    samples once ``fit_normaliser`` has run, and are combined (Coste et al. 2023):
    mean, min, or mean - λ·Var. Without a fitted normaliser ens is the plain mean of raw
    scores; wco and uwo need one, since a min or a variance across unnormalised members
    mostly measures their scales. A fitted normaliser applies in warm / single mode too.
    ``members`` (default: the scoring models) are the models ``member_scores`` runs, so the
    disagreement monitor works whatever the mode: a WARM scorer may hold its members for it.
    ``forward_passes`` counts model forward calls (one per model per chunk of ``batch_size``).
    Build it from loaded models or from HF dirs (``warm_run_dirs``: those of a `warm-ray warm` run dir).
    """

    def __init__(self, models: Sequence, tokenizer, max_length: int = 64, batch_size: int = 128,
                 device="cpu", name: str = "rm", mode: str | None = None, uwo_lambda: float | None = None,
                 members: Sequence | None = None, normaliser: Normaliser | None = None,
                 member_normaliser: Normaliser | None = None):
        self.models = list(models)
        if not self.models:
            raise ValueError("a reward scorer needs at least one model")
        # the pre-mode default: one model scores alone, several are ensembled by their mean
        self.mode = check_mode(mode or ("ens" if len(self.models) > 1 else "single"))
        entry = REWARD_MODES[self.mode]
        if entry.models != "members" and len(self.models) != 1:
            raise ValueError(f"reward mode {self.mode!r} scores with one model, got {len(self.models)}")
        if "uwo_lambda" in entry.params and uwo_lambda is None:
            raise ValueError(f"reward mode {self.mode!r} needs uwo_lambda, the weight of the variance penalty")
        self.uwo_lambda = uwo_lambda
        self.members = self.models if members is None else list(members)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self.name = name
        self.normaliser = normaliser  # of the scoring models' raw scores
        self.member_normaliser = normaliser if members is None else member_normaliser  # of ``members``'
        self.forward_passes = 0
        self.weights_version = 0  # of the scoring models' weights (0: those loaded; ``load_weights``)

    @classmethod
    def from_dirs(cls, dirs: Sequence[str | Path], device="cpu", dtype="float32",
                  member_dirs: Sequence[str | Path] | None = None, **kw) -> RewardScorer:
        """Models (and optionally separate ``members`` for ``member_scores``) from HF dirs."""
        from warm_ray.models import load_reward_model, load_tokenizer

        models = [load_reward_model(d, device=device, dtype=dtype) for d in dirs]
        if member_dirs is not None:
            kw["members"] = [load_reward_model(d, device=device, dtype=dtype) for d in member_dirs]
        return cls(models, load_tokenizer(dirs[0]), device=device, **kw)

    @property
    def n_models(self) -> int:
        """How many models score each sample (1 in warm / single mode, M in the others)."""
        return len(self.models)

    @property
    def n_members(self) -> int:
        """How many members ``member_scores`` runs (the disagreement monitor's M)."""
        return len(self.members)

    @torch.no_grad()
    def _raw(self, models: Sequence, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """Raw scores [len(models), N] of prompt + completion texts, counting forward calls."""
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        rows = []
        for model in models:
            model.eval()
            chunks = []
            for start in range(0, len(texts), self.batch_size):
                enc = encode(self.tokenizer, texts[start:start + self.batch_size], self.max_length, self.device)
                chunks.append(model(**enc).logits.squeeze(-1).float().cpu())
                self.forward_passes += 1
            rows.append(torch.cat(chunks) if chunks else torch.zeros(0))
        return torch.stack(rows)

    def member_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """Raw scores of every member [M, N] (for the disagreement monitor), whatever the mode."""
        return self._raw(self.members, prompts, completions)

    def normalised_member_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """``member_scores`` normalised per member on the reference (raw when none is fitted)."""
        raw = self.member_scores(prompts, completions)
        return raw if self.member_normaliser is None else self.member_normaliser.apply(raw)

    def fit_normaliser(self, prompts: Sequence[str], completions: Sequence[str]) -> Normaliser:
        """Fit the per-member normalisation on reference (SFT) samples (Coste et al. 2023)."""
        raw = self._raw(self.models, prompts, completions)
        self.normaliser = Normaliser.fit(raw)
        if self.members is self.models:
            self.member_normaliser = self.normaliser
        else:
            self.member_normaliser = Normaliser.fit(self.member_scores(prompts, completions))
        return self.normaliser

    def combine_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """One reward per sample [N] from the scoring models' raw scores [M, N]: normalise, combine."""
        if self.normaliser is None:
            entry = REWARD_MODES[self.mode]
            if entry.models == "members" and entry.normalised:
                raise RuntimeError(f"reward mode {self.mode!r} combines normalised member scores: "
                                   "call fit_normaliser on reference samples first")
            return combine(raw, self.mode, self.uwo_lambda)
        return combine(self.normaliser.apply(raw), self.mode, self.uwo_lambda)

    def rewards(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """Rewards [N]: one forward pass per sample in warm / single mode, M in the others."""
        return self.combine_raw(self._raw(self.models, prompts, completions))

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return self.rewards(prompts, completions).tolist()

    def load_weights(self, weights, version: int) -> bool:
        """Load newer weights into the scoring models unless ``version`` is not newer; True if loaded.

        ``weights``: one state dict per scoring model (a bare dict for the one-model modes), each a dict
        or a Ray ObjectRef. Separate ``members`` keep theirs, and the normalisers stay: refit them
        (``fit_normaliser``) when the new weights score on another scale."""
        if version <= self.weights_version:
            return False
        state_dicts = [weights] if isinstance(weights, dict) or not isinstance(weights, (list, tuple)) else list(weights)
        if any(not isinstance(sd, dict) for sd in state_dicts):
            import ray

            state_dicts = [sd if isinstance(sd, dict) else ray.get(sd) for sd in state_dicts]
        if len(state_dicts) != len(self.models):
            raise ValueError(f"scorer {self.name!r} has {len(self.models)} scoring model(s), got {len(state_dicts)} "
                             "state dict(s)")
        for model, sd in zip(self.models, state_dicts):
            model.load_state_dict(sd)
        self.weights_version = version
        return True

    def version(self) -> int:
        """The version of the weights the scoring models hold (0: those they were loaded with)."""
        return self.weights_version


def finite_state_dict(sd: dict[str, torch.Tensor]) -> str | None:
    """None if every floating tensor is finite, else the first offending key."""
    for k, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return k
    return None



# ------------------------------------------------------------------------------------------
# One member's fine-tuning (the FT of LP-FT), resumable step by step
# ------------------------------------------------------------------------------------------


# forward passes per training step, over texts grouped by length (see ``pair_rewards``): ~8% less
# time per step on the tiny default (1 thread), where three or four groups gained no more in noise
TRAIN_LENGTH_GROUPS = 2


class MemberTraining:
    """Fine-tunes one RM member with the Bradley-Terry loss; its whole state is checkpointable.

    Diversity (WARM Sec. 3.1): ``lr``, ``dropout``, ``seed`` (head noise and data order) and
    ``init_dir`` (which base checkpoint initialises the featurizer: Baklava).
    On CUDA with bf16 the weights stay float32 and the forward runs under bf16 autocast.
    """

    def __init__(self, rows: Sequence[dict], tokenizer, init_dir: str | Path, head: dict | None, lr: float,
                 dropout: float, seed: int, epochs: int, batch_size: int, max_length: int,
                 weight_decay: float = 0.0, device="cpu", dtype: torch.dtype = torch.float32,
                 length_groups: int = TRAIN_LENGTH_GROUPS, lr_schedule: str = "linear", warmup: float = 0.0):
        from warm_ray.models import adam, build_reward_model

        if len(rows) == 0:
            raise ValueError("the training split is empty: nothing to train a reward model on")
        LR_SCHEDULES.check(lr_schedule)
        self.rows = list(rows)
        self.tokenizer = tokenizer
        self.seed = seed
        self.epochs = epochs
        self.batch_size = batch_size
        self.max_length = max_length
        self.length_groups = length_groups
        self.device = torch.device(device)
        self.autocast_dtype = dtype if dtype != torch.float32 else None
        self.model = build_reward_model(init_dir, dropout=dropout, seed=seed).to(self.device)
        if head is not None:
            load_head(self.model, head)
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"warmup {warmup}: must be a share of the steps in [0, 1)")
        self.lr, self.lr_schedule, self.warmup = lr, lr_schedule, warmup
        self.optimizer = adam(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.steps_per_epoch = math.ceil(len(self.rows) / batch_size)
        self.total_steps = epochs * self.steps_per_epoch
        self.step = 0
        # the module the forward pass goes through (a DistributedDataParallel wrapper under
        # Ray Train); checkpoints always hold ``self.model``'s plain state dict
        self.train_model = self.model

    def _batch(self, step: int) -> list[dict]:
        epoch, i = divmod(step, self.steps_per_epoch)
        # data order: a permutation per (seed, epoch), so a resumed run sees the same batches
        order = torch.randperm(len(self.rows), generator=torch.Generator().manual_seed(self.seed * 10_007 + epoch))
        idx = order[i * self.batch_size:(i + 1) * self.batch_size].tolist()
        return [self.rows[j] for j in idx]

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) step ``step``: a function of the step alone, so a run
        restored from a checkpoint continues the same schedule. The first ``warmup`` share of the
        steps ramps linearly up to ``lr`` (fine-tuning a pretrained model without a jump on step 1),
        then the schedule runs over the remaining steps."""
        ramp = int(self.warmup * self.total_steps)
        if step < ramp:
            return self.lr * (step + 1) / ramp
        if self.lr_schedule == "linear":
            return self.lr * (1.0 - (step - ramp) / (self.total_steps - ramp))
        return self.lr

    def train_step(self) -> dict[str, float]:
        rows = self._batch(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.model.train()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            r_chosen, r_rejected = pair_rewards(self.train_model, self.tokenizer, rows, self.max_length, self.device,
                                                length_groups=self.length_groups)
            loss = bradley_terry_loss(r_chosen, r_rejected)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.step += 1
        return {"step": self.step, "loss": loss.item(), "lr": self.optimizer.param_groups[0]["lr"],
                "acc": (r_chosen.detach() > r_rejected.detach()).float().mean().item()}

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def save(self, ckpt_dir: str | Path) -> None:
        """Weights and AdamW's state (safetensors), data position (JSON) and the RNG states
        (``rng.safetensors``, see ``save_rng_state``), written atomically as one dir; no pickle, so
        a checkpoint on a shared disk cannot run code when it is restored."""
        from warm_ray.files import atomic_dir
        from warm_ray.models import save_optimizer_state, save_state_dict

        with atomic_dir(ckpt_dir) as tmp:
            save_state_dict(self.model.state_dict(), tmp / "model.safetensors")
            save_optimizer_state(self.optimizer.state_dict(), tmp, "optimizer")
            save_rng_state(tmp / RNG_FILE)
            (tmp / "trainer_state.json").write_text(json.dumps({"step": self.step}))

    def restore(self, ckpt_dir: str | Path) -> bool:
        """Load a checkpoint written by ``save``; False when there is none.

        The RNG states are restored last, so the next ``train_step`` draws the same dropout masks
        as the run that wrote the checkpoint would have; the data order needs no state (``_batch``
        re-derives it from the seed and the step). A checkpoint from before the RNG states were
        saved still loads, with a log line saying that its dropout masks will differ."""
        from warm_ray.models import load_optimizer_state, load_state_dict

        ckpt_dir = Path(ckpt_dir)
        if not (ckpt_dir / "trainer_state.json").exists():
            return False
        self.model.load_state_dict(load_state_dict(ckpt_dir / "model.safetensors", device=str(self.device)))
        self.optimizer.load_state_dict(load_optimizer_state(ckpt_dir, "optimizer", device=str(self.device)))
        self.step = int(json.loads((ckpt_dir / "trainer_state.json").read_text())["step"])
        restore_rng_state(ckpt_dir / RNG_FILE)
        return True


# ------------------------------------------------------------------------------------------
# RNG state of a member checkpoint (dropout draws from torch's global generators)
# ------------------------------------------------------------------------------------------

RNG_FILE = "rng.safetensors"


def save_rng_state(path: str | Path) -> None:
    """The process's RNG states as one safetensors file (atomic, no pickle): torch's CPU generator
    (``torch_cpu``), each CUDA device's generator (``cuda.<i>``) where CUDA has been initialised,
    and, in the metadata, Python's ``random`` and NumPy's global states (JSON). The member's own
    code draws from neither of the last two; they are kept for featurizers that do (LayerDrop).

    CUDA states are only read once CUDA is initialised: before that nothing has drawn from them
    since ``build_reward_model`` seeded them, and a CPU member on a GPU host must not create a
    CUDA context just to checkpoint."""
    import numpy as np

    from warm_ray.models import save_state_dict

    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    meta = {"python": json.dumps(random.getstate()),
            "numpy": json.dumps([kind, keys.tolist(), int(pos), int(has_gauss), float(cached)])}
    save_state_dict(tensors, path, metadata=meta)


def restore_rng_state(path: str | Path) -> bool:
    """Set the process's RNG states from ``save_rng_state``'s file; False (and a log line) when the
    file is missing (a checkpoint from before RNG states were saved) or unreadable: training
    goes on from the restored weights, with other dropout masks than an unbroken run.

    A checkpoint written on GPU restores on a CPU-only host: the CPU, Python and NumPy states
    are set and the CUDA states are skipped (logged), so the resumed run is deterministic but not
    bit-identical to the GPU run (whose dropout drew from the CUDA generator). With fewer GPUs
    than were saved, the first ones are set; with more, the extra ones keep their seeded state."""
    import numpy as np
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        log.info("%s: no RNG state in this checkpoint (written before they were saved): the dropout "
                 "RNG is not restored, so the resumed run is not bit-identical to an unbroken one", path.parent)
        return False
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        cpu = tensors["torch_cpu"]
        py = json.loads(meta["python"])
        py_state = (py[0], tuple(py[1]), py[2])
        kind, keys, pos, has_gauss, cached = json.loads(meta["numpy"])
        np_state = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    except Exception as e:  # a damaged RNG file must not block the resume
        log.warning("%s: RNG state unreadable (%s): the dropout RNG is not restored, so the resumed run "
                    "is not bit-identical to an unbroken one", path, e)
        return False
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    torch.set_rng_state(cpu)
    random.setstate(py_state)
    np.random.set_state(np_state)
    if cuda:
        if not torch.cuda.is_available():
            log.info("%s: %d CUDA RNG state(s) saved on a GPU host are not restored on this CPU-only host",
                     path, len(cuda))
        else:
            n = torch.cuda.device_count()
            if n != len(cuda):
                log.info("%s: %d CUDA RNG state(s) saved, %d device(s) here: the first %d restored",
                         path, len(cuda), n, min(n, len(cuda)))
            for i, state in enumerate(cuda[:n]):
                torch.cuda.set_rng_state(state, device=i)
    return True
