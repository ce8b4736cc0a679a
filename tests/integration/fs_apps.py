"""FastStream apps for the adapter's integration tests, on either broker flavour."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from faststream.confluent import KafkaBroker as ConfluentBroker
from faststream.kafka import KafkaBroker
from pydantic import BaseModel, ConfigDict

from signed_bus.faststream import SignedBus

#: The two broker flavours every FastStream test runs on.
FLAVOURS = ("kafka", "confluent")


class Result(BaseModel):
    """The typed result a handler takes."""

    seq: int
    label: str
    score: float
    embedding: list[float]


class ModelOutput(BaseModel):
    """What ML code produces: a Pydantic model holding numpy values as they are."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    seq: int
    label: str
    score: np.float32
    embedding: np.ndarray


def result(seq: int) -> ModelOutput:
    return ModelOutput(
        seq=seq,
        label=f"label-{seq}",
        score=np.float32(seq / 4),
        embedding=np.arange(seq, seq + 3, dtype=np.float32) / 2,
    )


def broker(flavour: str, bootstrap: str, bus: SignedBus | None) -> KafkaBroker | ConfluentBroker:
    """A FastStream broker of ``flavour`` with ``bus`` as its middleware (none if None)."""
    middlewares = [bus] if bus is not None else []
    if flavour == "kafka":
        return KafkaBroker(bootstrap, middlewares=middlewares, logger=None)
    return ConfluentBroker(bootstrap, middlewares=middlewares, logger=None)


def router(flavour: str, bus: SignedBus) -> Any:
    """A router of ``flavour`` with ``bus`` as its middleware."""
    if flavour == "kafka":
        from faststream.kafka import KafkaRouter

        return KafkaRouter(middlewares=[bus])
    from faststream.confluent import KafkaRouter as ConfluentRouter

    return ConfluentRouter(middlewares=[bus])


def keyed(flavour: str, body: object, key: bytes) -> Any:
    """``body`` with its own record key, for ``publish_batch``."""
    if flavour == "kafka":
        from faststream.kafka import KafkaResponse

        return KafkaResponse(body, key=key)
    from faststream.confluent import KafkaResponse as ConfluentResponse

    return ConfluentResponse(body, key=key)


def subscriber_options(flavour: str, group: str, *, batch: bool = False) -> dict[str, Any]:
    """At-least-once subscriber settings: a group, from the beginning, NACK on error."""
    from faststream import AckPolicy

    options: dict[str, Any] = {
        "group_id": group,
        "auto_offset_reset": "earliest",
        "ack_policy": AckPolicy.NACK_ON_ERROR,
    }
    if flavour == "kafka":
        options["isolation_level"] = "read_committed"
    if batch:
        options["batch"] = True
        options["max_records"] = 50
    return options


async def wait_for(check: Callable[[], bool], what: str, *, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
