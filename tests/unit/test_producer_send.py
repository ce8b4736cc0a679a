"""``SignedProducer.send`` seals a result in the extension's one call where it can, on the
native and the pure path alike: what it signs is what ``Signer.sign`` signs, a result it cannot
sign raises where the send is awaited, and a send awaited after ``stop()`` is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from signed_bus import _native
from signed_bus._kafka.producer import SignedProducer
from signed_bus._keys import HmacKey, Keyring
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.errors import Stopped

RING = Keyring([HmacKey("h", hashlib.sha256(b"h").digest(), issuers=["agent"])])
NATIVE = _native.load("1")


class Recording(AIOKafkaProducer):  # type: ignore[misc]
    """aiokafka's producer with its network left out: ``send`` keeps what it was handed."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, topic: str, value: Any = None, **options: Any) -> asyncio.Future[Any]:
        self.sent.append({"topic": topic, "value": value, **options})
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(len(self.sent))
        return future


@pytest.fixture(params=["native", "pure"])
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    with _native.using(NATIVE if request.param == "native" else None):
        yield request.param


def _producer() -> tuple[SignedProducer, Recording]:
    kafka = Recording()
    signer = Signer(RING, kid="h", issuer="agent", model="m")
    return SignedProducer(kafka, signer=signer), kafka


async def test_send_queues_what_the_signer_signs(path: str) -> None:
    producer, kafka = _producer()
    for round_ in range(3):  # the first send of a topic hands it to the extension
        call = producer.send("t", {"n": round_}, key=b"k", headers=[("h", b"v")], partition=0)
        assert inspect.iscoroutine(call)
        future = await call
        assert await future == round_ + 1
    assert producer.metrics.signed == 3
    sent = kafka.sent[-1]
    assert (sent["topic"], sent["key"], sent["partition"]) == ("t", b"k", 0)
    assert sent["headers"] == [("h", b"v")]
    message = Verifier(RING).verify(sent["value"], topic="t", key=b"k")
    assert message.payload == {"n": 2}


async def test_a_send_awaited_after_stop_is_refused(path: str) -> None:
    # A send made before stop() and awaited after it (a shutdown with gathered sends pending)
    # is refused with Stopped, observed or not: nothing reaches the handed-in producer.
    producer, kafka = _producer()
    await producer.send("t", 0)
    pending = producer.send("t", 1)
    await producer.stop()
    with pytest.raises(Stopped):
        await pending
    assert len(kafka.sent) == 1
    assert producer.metrics.signed == 1


async def test_signing_errors_are_raised_where_the_send_is_awaited(path: str) -> None:
    producer, kafka = _producer()
    await producer.send("t", 1)
    bad = [
        (producer.send("t", {0: 0.5}), TypeError, "map key"),
        (producer.send("t", 1, key="text"), TypeError, "key must be bytes or None"),  # type: ignore[arg-type]
        (producer.send("t", object()), TypeError, "has no payload form"),
    ]
    assert len(kafka.sent) == 1  # nothing raised by the calls themselves
    for call, error, match in bad:
        with pytest.raises(error, match=match):
            await call
    assert len(kafka.sent) == 1
    assert producer.metrics.signed == 1


async def test_gathered_sends_stay_independent_of_a_bad_one(path: str) -> None:
    # As with an ``async def``: one result that cannot be signed fails its own send only; the
    # sends gathered with it are all made.
    producer, kafka = _producer()
    calls = [producer.send("t", {"n": n} if n != 2 else {0: 1}) for n in range(5)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(outcomes[2], TypeError)
    assert [type(o) for n, o in enumerate(outcomes) if n != 2] == [asyncio.Future] * 4
    payloads = [Verifier(RING).verify(s["value"], topic="t", key=None).payload for s in kafka.sent]
    assert payloads == [{"n": n} for n in (0, 1, 3, 4)]


async def test_parents_and_expiry_take_the_signers_full_path(path: str) -> None:
    producer, kafka = _producer()
    parent = hashlib.sha256(b"p").digest()
    expires_at = 4_102_444_800_000
    await producer.send("t", {"a": 1}, parents=[parent], expires_at=expires_at)
    message = Verifier(RING).verify(kafka.sent[0]["value"], topic="t", key=None)
    assert message.parents == (parent,)
    assert message.expires_at == expires_at
