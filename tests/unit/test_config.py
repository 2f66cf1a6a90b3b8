"""TrainConfig from flags, TOML and presets: nanoGPT's names, every mistake named in one line."""

import pytest

from nanogpt.config import PRESETS, ConfigError, TrainConfig, parse_args


@pytest.mark.parametrize("argv", [["--n_layer", "3"], ["--n_layer=3"], ["--n-layer", "3"], ["--n-layer=3"]])
def test_flags_accept_nanogpt_and_dashed_spellings(argv):
    assert parse_args(argv).n_layer == 3


@pytest.mark.parametrize(
    "argv, field, expected",
    [(["--compile"], "compile", True), (["--no-compile"], "compile", False),
     (["--compile=False"], "compile", False), (["--compile=True"], "compile", True),
     (["--compile", "false"], "compile", False), (["--bias=False"], "bias", False),
     (["--no-bias"], "bias", False), (["--eval-only"], "eval_only", True)],
)  # fmt: skip
def test_boolean_flags_accept_bare_negated_and_valued_forms(argv, field, expected):
    assert getattr(parse_args(argv), field) is expected


def test_resume_flag_means_init_from_resume():
    assert parse_args(["--resume"]).init_from == "resume"


def test_a_bare_run_is_the_cpu_small_preset():
    cfg = parse_args([])
    assert cfg == TrainConfig()
    assert (cfg.preset, cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.batch_size) == ("cpu-small", 4, 128, 64, 12)


def test_shakespeare_char_preset_is_nanogpts_config_file():
    cfg = parse_args(["--preset", "shakespeare-char"])
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.batch_size) == (6, 6, 384, 256, 64)
    assert (cfg.dropout, cfg.max_iters, cfg.eval_iters, cfg.always_save_checkpoint) == (0.2, 5000, 200, False)
    assert cfg.dataset == "shakespeare"


def test_flags_override_the_preset():
    assert parse_args(["--preset=shakespeare-char", "--n_layer=2"]).n_layer == 2


def test_toml_file_sets_keys_and_flags_override_it(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "shakespeare-char"\nn_layer = 3\nlearning_rate = 1\nout_dir = "x"\n')
    cfg = parse_args(["--config", str(path), "--out_dir=y"])
    assert (cfg.n_layer, cfg.learning_rate, cfg.out_dir, cfg.n_embd) == (3, 1.0, "y", 384)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n_layers=3"], "unrecognized arguments: --n_layers=3"),
        (["--n_layer=four"], "argument --n_layer/--n-layer: invalid int value: 'four'"),
        (["--compile=maybe"], "expected True or False, got 'maybe'"),
        (["--preset=huge"], "unknown preset 'huge'; known presets: cpu-small, shakespeare-char"),
        (["--n_embd=100", "--n_head=3"], "n_embd=100 must be divisible by n_head=3"),
        (["--batch_size=0"], "batch_size must be at least 1, got 0"),
        (["--dtype=float8"], "dtype must be one of auto, float32, bfloat16, float16; got 'float8'"),
        (["--dropout=1.5"], "dropout must be in [0, 1), got 1.5"),
        (["--metrics-port=70000"], "metrics_port must be in 0..65535, got 70000"),
        (["--config=/nonexistent.toml"], "config file '/nonexistent.toml' does not exist"),
    ],
)
def test_bad_flags_are_one_line_errors_naming_the_value(argv, message):
    with pytest.raises(ConfigError) as e:
        parse_args(argv)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "toml, message",
    [
        ("n_layers = 3", "unknown config key 'n_layers'"),
        ('n_layer = "3"', "n_layer must be an int, got '3'"),
        ("n_layer = 3.5", "n_layer must be an int, got 3.5"),
        ("compile = 1", "compile must be a bool, got 1"),
        ('preset = "huge"', "unknown preset 'huge'"),
        ("n_layer = ", "is not valid TOML"),
        ("[model]\nn_layer = 3", "unknown config key 'model'"),
    ],
)
def test_bad_toml_is_a_one_line_error_naming_the_key(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as e:
        parse_args(["--config", str(path)])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_every_preset_is_a_valid_config():
    for name in PRESETS:
        assert parse_args(["--preset", name]).preset == name
