from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from leadsla.shared.bus import make_producer


@pytest.fixture(scope="session")
async def producer_for_e2e(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = make_producer(kafka_bootstrap)
    await producer.start()
    yield producer
    await producer.stop()
