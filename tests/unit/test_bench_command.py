"""`signed-bus bench` option handling (no services: nothing here runs a measurement)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from signed_bus._cli import build_parser, main
from signed_bus.bench.command import config_from_args, register
from signed_bus.bench.config import PARTS
from signed_bus.errors import ConfigurationError


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *argv])


def test_bench_is_a_registered_subcommand() -> None:
    args = _args()
    assert args.command == "bench"
    assert callable(args.handler)


def test_defaults_then_quick_then_explicit_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9092")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    full = config_from_args(_args())
    assert not full.quick
    assert full.parts == PARTS
    assert full.out_dir == Path("results")
    assert full.bootstrap_servers == "broker:9092"
    assert full.redis_url == "redis://cache:6379/0"
    assert full.private_redis

    quick = config_from_args(_args("--quick"))
    assert quick.quick and quick.messages < full.messages and quick.nonces >= 100_000

    custom = config_from_args(
        _args("--quick", "--messages", "123", "--duration", "2.5", "--rate", "200", "--repeats",
              "2", "--only", "latency,codec", "--out", "x", "--shared-redis")
    )  # fmt: skip
    assert (custom.messages, custom.duration_s, custom.rate) == (123, 2.5, 200)
    assert custom.repeats == custom.latency_rounds == 2
    assert custom.parts == ("codec", "latency")  # run in the fixed order
    assert custom.out_dir == Path("x")
    assert not custom.private_redis


def test_unknown_parts_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigurationError):
        config_from_args(_args("--only", "codec,bogus"))
    assert main(["bench", "--only", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_sizes_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--messages", "0"]) == 2
    assert main(["bench", "--duration", "-1"]) == 2
    capsys.readouterr()


def test_register_adds_exactly_one_parser() -> None:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    register(subparsers)
    assert set(subparsers.choices) == {"bench"}
