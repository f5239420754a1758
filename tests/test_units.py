"""Docker-style units: pure logic, no root needed."""

import pytest

from labkit.errors import ConfigError
from labkit.units import format_bytes, parse_bytes, parse_count, parse_cpus


@pytest.mark.parametrize("text, expected", [
    ("64m", 64 << 20), ("1g", 1 << 30), ("512k", 512 << 10), ("100", 100), (4096, 4096),
    ("1.5g", int(1.5 * (1 << 30))), ("64M", 64 << 20), ("64mb", 64 << 20), ("2t", 2 << 40),
])
def test_sizes_parse_like_docker(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["", "m", "12x", "-5m", "0", "1..5m", True, "ten"])
def test_bad_sizes_are_refused_with_a_hint(bad):
    with pytest.raises(ConfigError, match="size"):
        parse_bytes(bad)


@pytest.mark.parametrize("text, expected", [("0.5", 0.5), ("2", 2.0), (1.25, 1.25)])
def test_cpus_are_fractions_of_a_core(text, expected):
    assert parse_cpus(text) == expected


@pytest.mark.parametrize("bad", ["0", "-1", "half", "nan", "inf", None])
def test_bad_cpu_values_are_refused(bad):
    with pytest.raises(ConfigError, match="CPU"):
        parse_cpus(bad)


def test_counts_must_be_positive_whole_numbers():
    assert parse_count("32") == 32
    for bad in ("0", "-3", "2.5", "x"):
        with pytest.raises(ConfigError):
            parse_count(bad)


def test_sizes_format_for_people():
    assert format_bytes(None) == "-"
    assert format_bytes(512) == "512 B"
    assert format_bytes(64 << 20) == "64.0 MiB"


def test_errors_name_the_option_and_the_value():
    with pytest.raises(ConfigError, match=r"^--memory 'lots' is not a size; give bytes or a number with k, m, g or t"):
        parse_bytes("lots", "--memory")
    with pytest.raises(ConfigError, match=r"^--cpus '0' must be a positive number of cores"):
        parse_cpus("0", "--cpus")
    with pytest.raises(ConfigError, match=r"^--pids-limit 'x' is not a whole number"):
        parse_count("x", "--pids-limit")
