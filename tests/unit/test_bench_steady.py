"""The steady-load bench part: only run when named, and what it counts (no services)."""

from __future__ import annotations

import argparse
import os

import pytest

from signed_bus.bench.command import config_from_args, register
from signed_bus.bench.config import PARTS
from signed_bus.bench.steady import _SCRIPT_COMMANDS, broker_pid, cpu_seconds
from signed_bus.errors import ConfigurationError


def _args(*words: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["bench", *words])


def test_the_steady_part_runs_only_when_named() -> None:
    assert "steady" not in config_from_args(_args()).parts
    assert config_from_args(_args()).parts == PARTS
    config = config_from_args(_args("--only", "steady,codec", "--steady-duration", "30"))
    assert config.parts == ("codec", "steady")
    assert config.steady_duration_s == 30.0
    assert config_from_args(_args("--quick")).steady_duration_s < 120
    with pytest.raises(ConfigurationError, match="steady"):
        config_from_args(_args("--only", "stedy"))


def test_redis_calls_leave_out_the_commands_inside_the_claim_script() -> None:
    # commandstats counts HSETNX & co. run by the script (GET: its epoch marker check): they
    # are part of one EVALSHA call
    inside = {"cmdstat_hsetnx", "cmdstat_hget", "cmdstat_pttl", "cmdstat_pexpire", "cmdstat_get"}
    assert inside == _SCRIPT_COMMANDS


def test_cpu_seconds_of_a_process_and_no_broker_pid_mistaken() -> None:
    used = cpu_seconds(os.getpid())
    assert used is not None and used > 0
    assert cpu_seconds(None) is None and cpu_seconds(2**30) is None
    pid = broker_pid()
    assert pid is None or pid != os.getpid()
