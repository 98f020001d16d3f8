"""Configuration: overrides, validation errors that name the field, and the CLI's exit codes."""

from __future__ import annotations

import pytest

from fedsplit.config import ConfigError, load_config


def test_overrides_apply_with_types(tmp_path):
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text('rounds = 7\n[strategy]\nname = "fedprox"\nparams = {proximal_mu = 0.1}\n')
    cfg = load_config(cfg_file, ["rounds=30", "train.lr=0.01", "devices={laptop=3, jetson-nano=1}"])
    assert cfg.rounds == 30
    assert cfg.strategy.name == "fedprox"
    assert cfg.strategy.params == {"proximal_mu": 0.1}
    assert cfg.train.lr == pytest.approx(0.01)
    assert cfg.devices == {"laptop": 3, "jetson-nano": 1}
    assert cfg.num_terminals == 4


def test_user_profile_inherits_from_builtin():
    cfg = load_config(None, ["profiles.slow-pi={base='raspberry-pi-4', flops_per_s=1e9}", "devices={slow-pi=2}"])
    assert cfg.devices == {"slow-pi": 2}


@pytest.mark.parametrize(
    "override, expected",
    [
        ("rounds=0", "rounds = 0: must be >= 1"),
        ("strategy.fraction_train=1.5", "strategy.fraction_train = 1.5: must be > 0 and <= 1"),
        ("strategy.nme=fedavg", "unknown key 'strategy.nme'"),
        ("devices={toaster=2}", "devices.toaster: unknown device profile"),
        ("devices={laptop=0}", "needs at least 1 terminal"),
        ("data.name=imagenet", "data.name = 'imagenet': unknown (allowed: digits"),
        ("rounds='ten'", "rounds = 'ten': expected an integer"),
        ("strategy.name=fedfoo", "strategy.name = 'fedfoo': unknown strategy"),
        ("data.alpha=-1", "data.alpha = -1.0: must be > 0"),
        ("profiles.x={base='laptop', flops_per_s=-1}", "device profile 'x': flops_per_s = -1.0: must be > 0"),
        ("seed=-1", "seed = -1: must be >= 0 and < 4294967296"),
        ("split.cut=3", "split.cut = 3: expected a string in quotes: split.cut = '3'"),
        ("faults.seed=4294967296", "faults.seed = 4294967296: must be >= 0 and < 4294967296"),
    ],
)
def test_bad_values_name_field_value_and_rule(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_malformed_file_is_reported(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_cli_rejects_bad_config_with_one_line_and_runs_nothing(tmp_path, fedsplit_main):
    proc = fedsplit_main("simulate", "--set", "strategy.fraction_train=2", "--set", f"out_dir={tmp_path}")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["fedsplit simulate: error: config: strategy.fraction_train = 2.0: must be > 0 and <= 1"]
    assert not any(tmp_path.iterdir())


def test_simulate_help_lists_every_field(fedsplit_main):
    proc = fedsplit_main("simulate", "--help")
    assert proc.returncode == 0
    for name in ("rounds", "strategy.name", "data.partitioner", "clock.round_deadline_s", "engine.name", "devices"):
        assert name in proc.stdout


@pytest.mark.parametrize("count", [-1, 1.5, True])
def test_population_refuses_a_count_that_is_not_a_whole_number_of_terminals(count):
    from fedsplit.devices import Population, builtin_profiles

    with pytest.raises(ValueError, match=rf"devices.laptop = {count!r}: a count is an integer >= 0"):
        Population({"laptop": count, "raspberry-pi-4": 2}, builtin_profiles())
    assert Population({"laptop": 0, "raspberry-pi-4": 2}, builtin_profiles()).counts == {"raspberry-pi-4": 2}


def test_shards_per_client_names_data_classes_when_it_keeps_fewer():
    with pytest.raises(ConfigError, match=r"data.shards_per_client = 7: must be <= 5, the classes data.classes = '0-4' keeps"):
        load_config(None, ["data.partitioner=shards", "data.classes='0-4'", "data.shards_per_client=7"])
    with pytest.raises(ConfigError, match=r"data.shards_per_client = 11: must be <= 10, the classes of data.name = 'digits'"):
        load_config(None, ["data.partitioner=shards", "data.shards_per_client=11"])
