"""nanogpt.config against arbitrary input (hypothesis): any argv or TOML file gives either a valid
TrainConfig or a one-line ConfigError, never another exception."""

from __future__ import annotations

import dataclasses
import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanogpt.config import ConfigError, TrainConfig, field_kind, parse_args, validate

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
FLOAT_FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if field_kind(f) == "float"]

NUMBERS = st.integers() | st.floats() | st.sampled_from([10**400, -(10**400), 0, -1, 2**63])
VALUES = NUMBERS | st.booleans() | st.text(max_size=12) | st.sampled_from(["nan", "inf", "-inf", "1e999", "True"])
FLAG_NAMES = st.sampled_from(FIELDS).flatmap(lambda name: st.sampled_from(
    [f"--{name}", f"--{name.replace('_', '-')}", f"--no-{name.replace('_', '-')}"]))
# every token but those that name a file to read or ask for --help (which prints and exits 0 by design)
TOKENS = (FLAG_NAMES | st.text(max_size=15) | st.sampled_from(["--", "-", "--resume", "--preset", "="])).filter(
    lambda t: not t.startswith(("--config", "-h", "--h")))
ARGV = st.lists(st.one_of(
    TOKENS, st.tuples(FLAG_NAMES, VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
), max_size=8)  # fmt: skip


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {math.inf: "inf", -math.inf: "-inf"}.get(value, "nan" if math.isnan(value) else repr(value))
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string (or a TOML error: fine too)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


TOML_TABLES = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8),
                              VALUES | st.lists(VALUES, max_size=3), max_size=6)
TOML_TEXT = TOML_TABLES.map(lambda table: "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in table.items()))


def assert_config_or_one_line_error(argv: list[str]) -> None:
    try:
        cfg = parse_args(argv)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e), repr(str(e))
        return
    validate(cfg)
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        optional = field.type.endswith("| None")  # None: not given (metrics_linger)
        assert type(value).__name__ == field_kind(field) or (optional and value is None), (field.name, value)
        assert not isinstance(value, float) or math.isfinite(value), (field.name, value)


@FUZZ
@given(argv=ARGV)
def test_any_argv_is_a_valid_config_or_a_one_line_error(argv):
    assert_config_or_one_line_error(argv)


@FUZZ
@given(values=st.dictionaries(st.sampled_from(FLOAT_FIELDS), NUMBERS | st.sampled_from(["nan", "inf", "1e999"])))
def test_any_number_for_a_float_knob_is_a_finite_config_value_or_a_one_line_error(tmp_path, values):
    assert_config_or_one_line_error([f"--{key}={value}" for key, value in values.items()])
    path = tmp_path / "floats.toml"
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in values.items()))
    assert_config_or_one_line_error(["--config", str(path)])


@FUZZ
@given(text=TOML_TEXT | st.text(max_size=200))
def test_any_toml_file_is_a_valid_config_or_a_one_line_error(tmp_path, text):
    path = tmp_path / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    assert_config_or_one_line_error(["--config", str(path)])


@FUZZ
@given(data=st.binary(max_size=200))
def test_any_bytes_as_a_toml_file_are_a_valid_config_or_a_one_line_error(tmp_path, data):
    path = tmp_path / "fuzz.toml"
    path.write_bytes(data)
    assert_config_or_one_line_error(["--config", str(path)])
