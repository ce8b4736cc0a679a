"""Create the topics signed-bus uses, with broker append time as their timestamps.

Freshness is checked against the record's broker timestamp when the topic uses
``message.timestamp.type=LogAppendTime`` (docs/ENVELOPE.md section 7, docs/OPERATIONS.md
"Topics"): a consumer that lags, a new group or an offset reset then reads honest old records as
what they were when appended, not as stale.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from signed_bus._lifecycle import start_kafka_client

__all__ = ["TIMESTAMP_TYPE", "create_topics", "topic_timestamp_types"]

log = logging.getLogger("signed_bus.topics")

TIMESTAMP_TYPE = "message.timestamp.type"
_APPEND_TIME = "LogAppendTime"


async def create_topics(
    admin: AIOKafkaAdminClient | str | Sequence[str],
    names: Iterable[str],
    *,
    partitions: int = 1,
    replication_factor: int = 1,
    configs: Mapping[str, str] | None = None,
    security: Mapping[str, Any] | None = None,
    timeout_ms: int = 30_000,
) -> list[str]:
    """Create ``names`` with ``message.timestamp.type=LogAppendTime``; return the ones created.

    ``admin`` is a started admin client (left open) or bootstrap servers (a client is made with
    the ``security`` keyword arguments of aiokafka, e.g. ``security_protocol``, ``ssl_context``,
    ``sasl_*``, and closed). Idempotent: a topic that already exists is fine, but one whose
    timestamps are CreateTime is logged at WARNING, since consumers then judge freshness by their
    own clock. ``configs`` adds topic settings; it cannot turn append time off.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    topic_configs = {**(configs or {}), TIMESTAMP_TYPE: _APPEND_TIME}
    client, owned = await _admin_client(admin, security)
    try:
        response = await client.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=replication_factor,
                    topic_configs=topic_configs,
                )
                for name in wanted
            ],
            timeout_ms=timeout_ms,
        )
        created: list[str] = []
        existing: list[str] = []
        for entry in response.to_object()["topic_errors"]:
            error = for_code(entry["error_code"])
            if entry["error_code"] == 0:
                created.append(entry["topic"])
            elif error is TopicAlreadyExistsError:
                existing.append(entry["topic"])
            else:
                raise error(f"creating topic {entry['topic']!r}: {entry.get('error_message')}")
        if existing:
            types = await topic_timestamp_types(client, existing)
            for name in existing:
                if types.get(name) != _APPEND_TIME:
                    log.warning(
                        "topic %s already exists with %s=%s: consumers will check freshness "
                        "against their own clock; set it to LogAppendTime",
                        name,
                        TIMESTAMP_TYPE,
                        types.get(name),
                    )
        return created
    finally:
        if owned:
            await client.close()


async def topic_timestamp_types(
    admin: AIOKafkaAdminClient | str | Sequence[str],
    names: Iterable[str],
    *,
    security: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """``message.timestamp.type`` of each existing topic ("CreateTime" or "LogAppendTime")."""
    client, owned = await _admin_client(admin, security)
    try:
        responses = await client.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, name, {TIMESTAMP_TYPE: None})
                for name in names
            ]
        )
        found: dict[str, str] = {}
        for response in responses:
            for resource in response.to_object()["resources"]:
                for entry in resource["config_entries"]:
                    if entry["config_names"] == TIMESTAMP_TYPE:
                        found[resource["resource_name"]] = entry["config_value"]
        return found
    finally:
        if owned:
            await client.close()


async def _admin_client(
    admin: AIOKafkaAdminClient | str | Sequence[str], security: Mapping[str, Any] | None
) -> tuple[AIOKafkaAdminClient, bool]:
    if isinstance(admin, AIOKafkaAdminClient):
        return admin, False
    servers = admin if isinstance(admin, str) else list(admin)
    client = AIOKafkaAdminClient(bootstrap_servers=servers, **dict(security or {}))
    await start_kafka_client(client)
    return client, True
