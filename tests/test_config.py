import json
import re

import pytest

from warm_ray.config import Config, ConfigError, Resources, RLConfig, load_config, save_config, validate


def test_defaults_and_yaml_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: out\nwarm:\n  m: 3\n  trainer:\n    num_gpus: 0.5\nprepare:\n  label_noise: 0.1\n")
    cfg = load_config(path, ["warm.lrs=[1e-4, 2e-4]", "rl.beta=0.2"])
    assert cfg.run_dir == "out"
    assert cfg.warm.m == 3 and cfg.warm.lrs == [1e-4, 2e-4]
    assert cfg.warm.trainer.num_gpus == 0.5 and cfg.warm.trainer.device == "cuda"
    assert cfg.prepare.label_noise == 0.1 and cfg.rl.beta == 0.2
    assert Resources().device == "cpu"


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("warm:\n  m: 2\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"warm\.lerning_rate"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"rl\.nope"):
        load_config(None, ["rl.nope=1"])
    with pytest.raises(ConfigError, match=r"prepare\.model\.widht"):
        load_config(None, ["prepare.model.widht=3"])


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("warm:\n  m: four\n")
    with pytest.raises(ConfigError, match=r"warm\.m.*integer"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["warm.m=5", "warp.eta_grid=[0.0, 0.5, 1.0]"])
    path = save_config(cfg, tmp_path)
    again = load_config(path)
    assert again == cfg
    assert isinstance(again, Config)


# ------------------------------------------------------------------------------------------
# Ranges, checked when the config is read
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("warm.batch_size=0", "warm.batch_size = 0: must be >= 1"),
    ("warm.lmc_points=1", "warm.lmc_points = 1: must be 0 (no LMC curve) or >= 2"),
    ("rl.lr=-0.001", "rl.lr = -0.001: must be > 0"),
    ("warp.rl.ema_mu=1.5", "warp.rl.ema_mu = 1.5: must be in (0, 1]"),
    ("warp.rl.ema_mu=0", "warp.rl.ema_mu = 0.0: must be in (0, 1]"),
    ("prepare.label_noise=1.0", "prepare.label_noise = 1.0: must be in [0, 1)"),
    ("rl.backend=tpu", "rl.backend = 'tpu': must be one of 'hf', 'vllm'"),
    ("rl.anchor=init", "rl.anchor = 'init': must be one of 'sft', 'ema'"),
    ("prepare.model.arch=bert", "prepare.model.arch = 'bert': must be one of 'gpt2', 'llama'"),
    ("warm.trainer.dtype=int8", "warm.trainer.dtype = 'int8': must be one of"),
    ("warm.lrs=[]", "warm.lrs = []: must not be empty"),
    ("warm.dropouts=[0.1, 1.0]", "warm.dropouts[1] = 1.0: must be in [0, 1)"),
    ("warp.eta_grid=[0.0, 2.0]", "warp.eta_grid[1] = 2.0: must be in [0, 1]"),
    ("warm.trainer.resources={node: -1}", "warm.trainer.resources.node = -1.0: must be >= 0"),
    ("sweep.mode=best", "sweep.mode = 'best': must be one of 'max', 'min'"),
    ("rl.lr=.nan", "rl.lr = nan: expected a finite number"),
    ("rl.is_cap=0.5", "rl.is_cap = 0.5: must be >= 1"),
    ("rl.overlap=sometimes", "rl.overlap: expected true/false, got str 'sometimes'"),
])
def test_out_of_range_values_name_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("overrides, message", [
    (["warm.m=2", "rl.single_member=5"], "rl.single_member = 5: must be < warm.m (2)"),
    (["warm.m=2", "warp.rl.single_member=2"], "warp.rl.single_member = 2: must be < warm.m (2)"),
    (["rl.samples_per_prompt=1"], "rl.samples_per_prompt = 1: must be >= 2 with baseline 'loo'"),
    (["prepare.model.n_embd=64", "prepare.model.n_head=3"], "prepare.model.n_embd = 64: must be a multiple of n_head (3)"),
    (["prepare.lm_steps=10", "prepare.checkpoint_steps=[5, 20]"], "prepare.checkpoint_steps = [5, 20]: must lie in"),
    (["warm.m=2", "warm.members=[{lr: 0.1}]"], "warm.members: has 1 entries: must be empty or have m=2"),
    (["warm.m=1", "warm.members=[{init_checkpoint: 9}]"], "warm.members[0].init_checkpoint = 9: must be < "),
])
def test_rules_across_fields(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)
    # a value that is fine alone passes once its partner agrees
    load_config(None, ["rl.samples_per_prompt=1", "rl.baseline=ema"])


def test_every_fault_is_reported_on_one_line():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["warm.batch_size=0", "rl.lr=0"])
    assert "\n" not in str(e.value)
    assert "warm.batch_size = 0" in str(e.value) and "rl.lr = 0.0" in str(e.value)


def test_range_errors_from_a_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("warm:\n  lmc_points: 1\n")
    with pytest.raises(ConfigError, match=r"warm\.lmc_points = 1: must be 0 \(no LMC curve\) or >= 2"):
        load_config(path)
    # an override that repairs the file's value is applied before the ranges are checked
    assert load_config(path, ["warm.lmc_points=3"]).warm.lmc_points == 3


def test_defaults_are_in_range():
    validate(Config())


def test_model_paths_are_checked_when_read(tmp_path):
    with pytest.raises(ConfigError, match=r"prepare\.base_model = '/missing/model': no such directory"):
        load_config(None, ["prepare.base_model=/missing/model"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"warm\.featurizer = .*has no config.json"):
        load_config(None, [f"warm.featurizer={empty}"])
    (empty / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="has no tokenizer"):
        load_config(None, [f"prepare.base_model={empty}"])
    (empty / "tokenizer.json").write_text("{}")
    assert load_config(None, [f"prepare.base_model={empty}"]).prepare.base_model == str(empty)
    # presets and hub ids (resolved where a hub is reachable) pass
    load_config(None, ["prepare.base_model=smollm2", "warm.featurizer=minilm"])
    load_config(None, ["warm.featurizer=sentence-transformers/all-MiniLM-L6-v2"])


def test_every_range_is_declared_beside_its_field():
    """New fields get a range in one line: ``x: int = ranged(at_least(1), 3)``."""
    import dataclasses

    from warm_ray import config as C

    @dataclasses.dataclass
    class Section:
        n: int = C.ranged(C.at_least(1), 3)
        p: float = C.ranged(C.within(0, 1), 0.5)

    validate(Section())
    with pytest.raises(ConfigError, match=r"s\.n = 0: must be >= 1; s\.p = 2\.0: must be in \[0, 1\]"):
        validate(Section(n=0, p=2.0), "s")


# ------------------------------------------------------------------------------------------
# Nested sections start from their parent's defaults
# ------------------------------------------------------------------------------------------


def test_partial_nested_section_keeps_the_parents_defaults(tmp_path):
    assert Config().warp.rl.beta == 0.1 and RLConfig().beta == 0.05
    path = tmp_path / "c.yaml"
    path.write_text("warp:\n  rl:\n    lr: 0.0005\n")
    cfg = load_config(path)
    assert cfg.warp.rl.lr == 0.0005
    default = Config().warp.rl
    assert (cfg.warp.rl.beta, cfg.warp.rl.anchor, cfg.warp.rl.steps) == (0.1, "ema", default.steps)
    assert default.steps != RLConfig().steps  # the section's own default, not the class's
    # a role's resources: stage defaults are kept when one key is set
    path.write_text("prepare:\n  resources:\n    num_gpus: 0\n")
    assert load_config(path).prepare.resources.num_threads == Config().prepare.resources.num_threads


def test_a_section_given_as_an_override_merges_onto_the_current_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("warp:\n  rl:\n    lr: 0.0005\n")
    cfg = load_config(path, ["warp.rl={beta: 0.2}"])
    assert (cfg.warp.rl.lr, cfg.warp.rl.beta, cfg.warp.rl.anchor) == (0.0005, 0.2, "ema")


def test_bad_yaml_and_config_paths(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"warm:\n  m: \xff\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not UTF-8 text"):
        load_config(bad)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    bad.write_text("warm: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML: .*\(line 2, column 1\)$"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"override 'warm\.lrs=\[1,': value is not valid YAML"):
        load_config(None, ["warm.lrs=[1,"])


def test_gpu_config_puts_every_role_of_every_stage_on_gpus():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "gpu.yaml")
    roles = {"prepare": cfg.prepare.resources, "warm.trainer": cfg.warm.trainer,
             "rl.rollout": cfg.rl.rollout, "rl.learner": cfg.rl.learner,
             "warp.rl.rollout": cfg.warp.rl.rollout, "warp.rl.learner": cfg.warp.rl.learner,
             "rl.scorer": cfg.rl.scorer, "warp.rl.scorer": cfg.warp.rl.scorer}
    assert {name: r.device for name, r in roles.items()} == {name: "cuda" for name in roles}
    assert cfg.warp.rl.beta == RLConfig(anchor="ema", beta=0.1).beta  # the section's own defaults stay
    # the reward scorer sits beside the learner: their GPU shares fit one GPU
    assert cfg.rl.scorer_placement == "actor" and cfg.rl.scorer.num_gpus + cfg.rl.learner.num_gpus <= 1


def test_vllm_memory_share_comes_from_the_config(prepared):
    import dataclasses

    from actors.rl import rollout_options

    _, summary = prepared
    cpu = RLConfig(backend="vllm", vllm_kv_cache_mb=32)
    assert rollout_options(cpu, summary["policy"], ["The nation"])["kv_cache_memory_bytes"] == 32 << 20
    gpu = dataclasses.replace(cpu, vllm_gpu_memory_utilization=0.6, rollout=Resources(num_gpus=1))
    kwargs = rollout_options(gpu, summary["policy"], ["The nation"])
    assert kwargs["kv_cache_memory_bytes"] is None and kwargs["gpu_memory_utilization"] == 0.6
    with pytest.raises(ConfigError, match=r"rl\.vllm_gpu_memory_utilization"):
        load_config(None, ["rl.vllm_gpu_memory_utilization=1.5"])


def test_every_shipped_config_loads_and_names_known_claims():
    from pathlib import Path

    from actors.study import claim_specs

    paths = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(paths) >= 6
    for path in paths:
        cfg = load_config(path)
        unknown = [c for c in cfg.study.primary if c not in claim_specs(cfg.study)]
        assert not unknown, (path.name, unknown)


def test_settings_a_stage_would_override_are_refused_naming_the_one_that_wins():
    from warm_ray.config import check_stage

    for key, value, wins in (("steps", 5, "warp.steps"), ("anchor", "sft", "EMA"), ("compare", "[ens]", "warp.compare")):
        with pytest.raises(ConfigError, match=rf"warp\.rl\.{key} = .*is not read by `warm-ray warp`: .*{wins}"):
            load_config(None, [f"warp.rl.{key}={value}"])
    cfg = load_config(None, ["rl.beta=0.3", "rl.uwo_lambda=1.0", "study.parts=[rm, bon, rl]"])
    assert check_stage(cfg, "rl") is cfg  # `warm-ray rl` reads them
    with pytest.raises(ConfigError, match=r"rl\.beta = 0\.3: is not read by `warm-ray study`: study\.rl_betas sets β; "
                                          r"rl\.uwo_lambda = 1\.0: .*study\.uwo_lambda"):
        check_stage(cfg, "study")
    assert check_stage(load_config(None, ["rl.beta=0.3"]), "study")  # no RL part: the rl section is not read
    with pytest.raises(ConfigError, match=r"warp\.merge = 'lerp'.*compare SLERP with LERP"):
        check_stage(load_config(None, ["warp.merge=lerp", "study.parts=[rm, warp]"]), "study")
    check_stage(load_config(None, ["warp.merge=lerp", "warp.compare=[slerp]"]), "warp")  # WARP alone: any merge


# ------------------------------------------------------------------------------------------
# Overrides of string fields, the YAML loader, upper bounds, model classes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, value", [
    ("exp #3", "exp #3"), ("123", "123"), ("2024-01-01", "2024-01-01"), ("a: b", "a: b"), ("[x]", "[x]"),
    ("null", "null"), ("'exp #3'", "exp #3"), ('"123"', "123"),
])
def test_a_string_override_is_taken_as_written(raw, value):
    assert load_config(None, [f"run_dir={raw}"]).run_dir == value


@pytest.mark.parametrize("raw, value", [
    ("", None), ("null", None), ("Null", None), ("NULL", None), ("~", None), ("smollm2", "smollm2"),
    ("'null'", "null"),
])
def test_an_optional_string_override_reads_null_as_none(raw, value):
    cfg = load_config(None, ["prepare.base_model=smollm2", f"prepare.base_model={raw}"])
    assert cfg.prepare.base_model == value


def test_other_overrides_are_still_yaml():
    cfg = load_config(None, ["warm.m=3", "rl.overlap=true", "warm.lrs=[1e-4]", "sweep.space.m=[1, 2]"])
    assert (cfg.warm.m, cfg.rl.overlap, cfg.warm.lrs, cfg.sweep.space) == (3, True, [1e-4], {"m": [1, 2]})
    with pytest.raises(ConfigError, match=r"unknown config key 'run_dir\.x'"):
        load_config(None, ["run_dir.x=1"])


def test_a_config_that_is_not_a_regular_file_is_refused_unopened(tmp_path):
    import os

    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)  # opening it would block until a writer came
    with pytest.raises(ConfigError, match=rf"config file {re.escape(str(fifo))} is not a regular file"):
        load_config(fifo)
    with pytest.raises(ConfigError, match="/dev/null is not a regular file"):
        load_config("/dev/null")


def test_a_key_given_twice_is_refused_naming_its_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("warm:\n  m: 2\n  lrs: [0.1]\n  m: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: line 4: duplicate key 'm'"
    with pytest.raises(ConfigError, match=r"^override 'warp\.rl=\{beta: 1, beta: 2\}': line 1: duplicate key 'beta'$"):
        load_config(None, ["warp.rl={beta: 1, beta: 2}"])
    # a merge key (<<) is not a duplicate, and the mapping's own keys win over the merged ones
    path.write_text("warm: &w\n  m: 2\n  epochs: 5\nwarp:\n  <<: {m: 4, steps: 7}\n  m: 3\n")
    cfg = load_config(path)
    assert (cfg.warm.m, cfg.warp.m, cfg.warp.steps) == (2, 3, 7)


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    import time

    # the classic "billion laughs": 9 levels of 9 aliases each, 9**9 "lol"s once expanded
    levels = "abcdefghi"
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{x}: &{x} [{','.join(['*' + prev] * 9)}]" for prev, x in zip(levels, levels[1:])]
    path = tmp_path / "c.yaml"
    path.write_text("\n".join(lines) + "\nsweep:\n  space:\n    m: *i\n")  # under a real key
    start = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert time.perf_counter() - start < 1
    assert str(e.value) == f"{path}: line 4: more than 100 YAML aliases (*name) in one document, counted as expanded"
    with pytest.raises(ConfigError, match=r"^override 'sweep\.space=.*: line 1: more than 100 YAML aliases"):
        load_config(None, ["sweep.space={" + ", ".join(lines) + "}"])
    path.write_text("sweep:\n  space: &s {m: [*s]}\n")
    with pytest.raises(ConfigError, match=r"line 2: alias \*s inside its own anchor"):
        load_config(path)
    # a few aliases are fine
    path.write_text("study:\n  seeds: &s [1, 2]\n  recipe_seeds: *s\n")
    assert load_config(path).study.recipe_seeds == [1, 2]


SEED_KEYS = ["prepare.seed", "warm.seed", "rl.seed", "warp.rl.seed", "policy.split_seed", "data.split_seed"]


@pytest.mark.parametrize("key", SEED_KEYS)
def test_every_seed_fits_torch_and_numpy(key):
    assert load_config(None, [f"{key}={2**32 - 1}"])
    for value in (2**32, 2**70, -1):
        with pytest.raises(ConfigError) as e:
            load_config(None, [f"{key}={value}"])
        assert str(e.value) == f"{key} = {value}: must be in [0, 4294967295] (a torch and numpy seed)"


def test_seed_lists_and_member_seeds_fit_torch_and_numpy():
    with pytest.raises(ConfigError, match=r"^study\.seeds\[1\] = 4294967296: must be in \[0, 4294967295\]"):
        load_config(None, ["study.seeds=[0, 4294967296]"])
    with pytest.raises(ConfigError, match=rf"^study\.recipe_seeds\[0\] = {2**70}: must be in \[0, 4294967295\]"):
        load_config(None, [f"study.recipe_seeds=[{2**70}]"])
    with pytest.raises(ConfigError, match=r"^warm\.members\[0\]\.seed = 4294967296: must be in \[0, 4294967295\]"):
        load_config(None, ["warm.m=1", "warm.members=[{seed: 4294967296}]"])


def test_every_seed_field_is_bounded_by_its_name():
    import dataclasses
    import typing

    from warm_ray import config as C

    found = {}

    def walk(cls, path):
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{path}{f.name}.")
            elif "seed" in f.name:
                found[path + f.name] = C.implied_rule(f.name)

    walk(C.Config, "")
    walk(C.WarmMember, "warm.members[].")
    assert {*SEED_KEYS, "study.seeds", "study.recipe_seeds", "warm.members[].seed"} <= set(found)
    assert all(rule is not None for rule in found.values()), found


@pytest.mark.parametrize("override, message", [
    ("warm.m=65", "warm.m = 65: must be in [1, 64] (what one run can train)"),
    ("warp.m=65", "warp.m = 65: must be in [1, 64] (what one run can train)"),
    ("warm.m=0", "warm.m = 0: must be >= 1"),
    ("sweep.space={m: [1, 65]}", "sweep.space.m[1] = 65: must be in [1, 64] (what one run can train)"),
    ("sweep.space={lrs: [[0.1], [-1]]}", "sweep.space.lrs[1][0] = -1.0: must be > 0"),
])
def test_m_is_at_most_what_one_run_can_train(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == message
    assert load_config(None, ["warm.m=64", "warp.m=64", "sweep.space={m: [1, 64]}"]).warm.m == 64


def _model(path, architectures=None):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({} if architectures is None else {"architectures": architectures}))
    (path / "tokenizer.json").write_text("{}")
    return path


def test_model_classes_come_from_config_json(tmp_path):
    classifier = _model(tmp_path / "rm", ["GPT2ForSequenceClassification"])
    causal = _model(tmp_path / "lm", ["LlamaForCausalLM"])
    gpt2 = _model(tmp_path / "gpt2", ["GPT2LMHeadModel"])
    encoder = _model(tmp_path / "bert", ["BertModel"])
    masked = _model(tmp_path / "mlm", ["BertForMaskedLM"])
    seq2seq = _model(tmp_path / "t5", ["T5ForConditionalGeneration"])
    unknown = _model(tmp_path / "plain")  # no "architectures": nothing to tell
    run = tmp_path / "run"
    (run / "warm").mkdir(parents=True)
    for key, good, bad, what in [
        ("policy.model", [causal, gpt2, unknown], classifier, "causal LM (a class ending ForCausalLM or LMHeadModel)"),
        ("prepare.base_model", [causal, gpt2, unknown], encoder, "causal LM"),
        ("policy.reward_model", [classifier, unknown, run], causal,
         "sequence-classification reward model (a class ending ForSequenceClassification)"),
        ("warm.featurizer", [classifier, causal, gpt2, encoder, masked, unknown], seq2seq,
         "base LM (a class ending ForSequenceClassification, ForCausalLM, LMHeadModel, ForMaskedLM, Model or "
         "ForPreTraining)"),
    ]:
        for path in good:
            load_config(None, [f"{key}={path}"])
        with pytest.raises(ConfigError) as e:
            load_config(None, [f"{key}={bad}"])
        name = json.loads((bad / "config.json").read_text())["architectures"][0]
        assert str(e.value).startswith(f"{key} = {str(bad)!r}: its config.json names {name}, not a {what}")
    load_config(None, [f"warm.inits=[{causal}, {encoder}, {masked}]"])
    with pytest.raises(ConfigError, match=rf"^warm\.inits\[1\] = '{re.escape(str(seq2seq))}': its config.json names "
                                          r"T5ForConditionalGeneration, not a base LM"):
        load_config(None, [f"warm.inits=[{causal}, {seq2seq}]"])
    load_config(None, ["policy.model=HuggingFaceTB/SmolLM2-135M"])  # a hub id: accepted as before
