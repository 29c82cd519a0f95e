import pytest

from warm_ray.config import Config, ConfigError, Resources, load_config, save_config


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
