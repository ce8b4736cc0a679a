"""The inference agent: turns prompts into inference results and publishes them signed.

Each result is signed with the agent's own Ed25519 key (its private half lives only in this
agent's key file; every verifier holds the public half), keyed by prompt id, onto the results
topic. Run: ``python -m producers.inference_agent``.

Environment (besides the common ones in :mod:`producers.common`):

- ``PROMPT_COUNT``: prompts to answer, then exit (default 100)
- ``PROMPT_RATE``: results per second, 0 for as fast as the broker takes them (default 50)
- ``RUN_ID``: prompt-id prefix; prompt ids are ``{RUN_ID}-{index:06d}`` (default ``run``)
- ``MODEL_NAME`` / ``MODEL_VERSION``: signed into every envelope's model field
  (default ``incident-lm`` / ``1.3.0``)
- ``SIGNED_BUS_KID``: kid of the agent's signing key (default ``inference-agent-1``)
- ``AGENT_ID``: the issuer it signs as (default ``inference-agent``)
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

from producers.common import (
    AgentEnv,
    StatusBoard,
    agent_main,
    describe_keyring,
    env_float,
    env_int,
    env_str,
    install_stop_signals,
    load_keyring,
    log_settings,
    setup_logging,
)
from producers.model import StandInModel, prompts
from signed_bus import ProducerOptions, SignedProducer, Signer

AGENT = "inference-agent"


async def run() -> int:
    env = AgentEnv.load(AGENT)
    log = setup_logging(env.agent_id)
    count = env_int("PROMPT_COUNT", 100)
    rate = env_float("PROMPT_RATE", 50.0)
    run_id = env_str("RUN_ID", "run")
    model = StandInModel(
        name=env_str("MODEL_NAME", "incident-lm"), version=env_str("MODEL_VERSION", "1.3.0")
    )
    ring = load_keyring()
    kid = env_str("SIGNED_BUS_KID", "inference-agent-1")
    signer = Signer(ring, kid=kid, issuer=env.agent_id, model=model.model_id)
    log_settings(
        log,
        {
            **env.describe(),
            "PROMPT_COUNT": count,
            "PROMPT_RATE": rate,
            "RUN_ID": run_id,
            "model": model.model_id,
            "SIGNED_BUS_KID": kid,
            "keyring": describe_keyring(ring),
        },
    )
    stop = asyncio.Event()
    install_stop_signals(stop)
    redis = env.redis()
    status = StatusBoard(redis, env.status_key())
    reporter = asyncio.create_task(status.run_every(1.0, stop))
    produced = 0
    try:
        async with SignedProducer(
            ProducerOptions(bootstrap_servers=env.bootstrap_servers, linger_ms=5), signer=signer
        ) as producer:
            await status.publish("running", produced=0, target=count)
            started = time.monotonic()
            pending = []
            for prompt in prompts(count, run=run_id):
                if stop.is_set():
                    break
                result = model.generate(prompt)
                pending.append(
                    await producer.send(
                        env.results_topic, result.to_payload(), key=prompt.prompt_id.encode()
                    )
                )
                produced += 1
                status.counters["produced"] = produced
                if rate > 0:
                    # Pace against the start time, so a slow send does not slow the whole run.
                    delay = started + produced / rate - time.monotonic()
                    if delay > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), delay)
            await asyncio.gather(*pending)
            log.info("published %d signed inference results to %s", produced, env.results_topic)
        await status.publish("done", produced=produced)
        return 0
    except Exception:
        log.exception("inference agent failed")
        await status.publish("failed", produced=produced)
        return 1
    finally:
        stop.set()
        await reporter
        await redis.aclose()


def main(argv: list[str] | None = None) -> None:
    sys.exit(agent_main("producers.inference_agent", __doc__, run, argv))


if __name__ == "__main__":
    main()
