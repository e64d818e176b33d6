"""Option values: a bad one is a usage error (exit 2) in one line saying what is accepted, before
anything is read or stored; every value in the accepted range works."""
from __future__ import annotations

import json

import pytest
from conftest import pseudo_random, write
from test_errors import assert_one_line_error

SIZE_LIMITS = ("32K", "4G")
CACHE_LIMITS = ("0", "1P")
BAD_VALUES = [
    # (command and option, bad values, words the error line must hold)
    (["backup", "SRC", "--volume-size"], ["inf", "-inf", "nan", "0", "-1M", "16K", "5G", "1e30", "12X", ""],
     ("--volume-size", "volume size", *SIZE_LIMITS)),
    (["forget", "--keep-last", "1", "--volume-size"], ["inf", "0", "1e30"], ("--volume-size", *SIZE_LIMITS)),
    (["prune", "--volume-size"], ["nan", "0", "8G"], ("--volume-size", *SIZE_LIMITS)),
    (["mount", "MNT", "--cache-size"], ["inf", "nan", "-1", "-1G", "2P", "1e30", "lots"],
     ("--cache-size", "cache size", *CACHE_LIMITS)),
    (["backup", "SRC", "--verify-percent"], ["nan", "inf", "-1", "-0.5", "100.1", "1e30", "half"],
     ("--verify-percent", "percentage", "0", "100")),
    (["prune", "--max-unused"], ["nan", "inf", "-5%", "101%"], ("--max-unused", "percentage", "0", "100")),
    (["backup", "SRC", "--verify-samples"], ["-1", "1.5", "nan", "inf", "two", ""],
     ("--verify-samples", "whole number", "0 or more")),
    (["--connections"], ["0", "-2", "nan"], ("--connections", "whole number", "1 or more")),
    (["forget", "--keep-daily"], ["0", "-1", "1e3"], ("--keep-daily", "whole number", "1 or more")),
]


@pytest.mark.parametrize("command, value, words",
                         [(command, value, words) for command, values, words in BAD_VALUES for value in values],
                         ids=[f"{command[-1]}={value}" for command, values, _ in BAD_VALUES for value in values])
def test_bad_option_value_is_one_line_usage_error(env, tmp_path, command, value, words):
    *before, option = [{"SRC": tmp_path, "MNT": tmp_path}.get(a, a) for a in command]
    args = [*before, f"{option}={value}"] + (["versions"] if option == "--connections" else [])
    r = env.run(*args)
    assert_one_line_error(r, 2, f"'{value}'", *words)
    assert not r.out
    assert json.loads(env.ok("versions", "--json").out) == []      # nothing was stored


def test_missing_and_unknown_arguments_are_one_line_usage_errors(env):
    assert_one_line_error(env.run("restore", "latest"), 2, "--target", "fsbackup restore --help")
    assert_one_line_error(env.run("backup"), 2, "PATH", "fsbackup backup --help")
    assert_one_line_error(env.run("frobnicate"), 2, "frobnicate", "fsbackup --help")
    assert_one_line_error(env.run("versions", "--no-such-option"), 2, "--no-such-option")


@pytest.mark.parametrize("text, size", [("32K", 32 << 10), ("32k", 32 << 10), ("1.5M", 3 << 19), ("4G", 4 << 30),
                                        ("4GiB", 4 << 30), ("33554432", 32 << 20), (" 2mb ", 2 << 20)])
def test_volume_sizes_in_range_are_accepted(text, size):
    from fsbackup.cli import build_parser
    assert build_parser().parse_args(["backup", "x", "--volume-size", text]).volume_size == size
    assert build_parser().parse_args(["prune", "--volume-size", text]).volume_size == size


def test_cache_size_zero_turns_the_cache_off_and_percentages_reach_their_ends():
    from fsbackup.cli import build_parser
    parse = build_parser().parse_args
    assert parse(["mount", "m", "--cache-size", "0"]).cache_size == 0
    assert parse(["mount", "m", "--cache-size", "1P"]).cache_size == 1 << 50
    assert parse(["backup", "x", "--verify-percent", "0", "--verify-samples", "0"]).verify_percent == 0
    assert parse(["backup", "x", "--verify-percent", "100"]).verify_percent == 100
    assert parse(["prune", "--max-unused", "100%"]).max_unused == 1
    assert parse(["prune", "--max-unused", "0"]).max_unused == 0


def test_smallest_volume_size_backs_up_and_verifies(env, tmp_path):
    src = tmp_path / "src"
    write(src / "a", pseudo_random(300_000, 1))
    write(src / "b", pseudo_random(100_000, 2))
    r = env.ok("backup", src, "--volume-size", "32K", "--verify-percent", "100", "--verify-samples", "0")
    assert "saved version" in r.out and "verified" in r.out
    env.ok("restore", "latest", "--target", tmp_path / "out")
    assert (tmp_path / "out" / src.relative_to("/") / "a").read_bytes() == pseudo_random(300_000, 1)
