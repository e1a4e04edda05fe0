"""Micro-batching: concurrent images share forward passes, within the size and wait limits.

The batcher's own rules are checked on small real networks that count the batches they
see; then concurrent HTTP requests to a real server running the tiny champion are seen
to be batched, each still getting its own image's answer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import threading
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from medai.config import Settings
from medai.errors import BatcherStopped
from medai.serving.app import create_app
from medai.serving.inference.batcher import InstanceResult, MicroBatcher
from medai.serving.inference.model import ServedModel
from medai.training.config import ModelConfig
from medai.training.transforms import build_transforms
from tests.serving.helpers import bearer, new_key
from tests.utils.research import tiny_model_config
from tests.utils.served_model import (
    Champion,
    ThreadedServer,
    reference_probabilities,
    shared_champion,
    wait_ready,
)


class Counting(nn.Module):
    """A linear model on 4x4 images that records the size of every batch it is given."""

    def __init__(self, seed: int, delay_s: float = 0.0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(16, 3)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(3, 16, generator=generator))
        self.delay_s = delay_s
        self.batches: list[int] = []

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(batch.shape[0]))
        if self.delay_s:
            time.sleep(self.delay_s)
        result: torch.Tensor = self.linear(batch.flatten(1))
        return result


def served_model(network: nn.Module, version: str = "1") -> ServedModel:
    config = ModelConfig.model_validate(tomllib.loads(tiny_model_config("unit-test")))
    return ServedModel(
        name="unit-test",
        version=version,
        alias="champion",
        run_id="run",
        config=config,
        thresholds=(0.5, 0.5, 0.5),
        network=network.eval(),
        device=torch.device("cpu"),
        card=None,
        loaded_at=dt.datetime.now(dt.UTC),
        _chain=build_transforms(config.transforms, train=False),
    )


def images(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 4, 4, generator=generator) for _ in range(count)]


def alone(network: nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.sigmoid(network(image[None]))[0]


async def _each(
    batcher: MicroBatcher, model: ServedModel, inputs: Sequence[torch.Tensor]
) -> list[InstanceResult]:
    # One request per image, all at once.
    results = await asyncio.gather(*(batcher.infer(model, [image]) for image in inputs))
    return [result for (result,) in results]


def test_queued_images_share_forward_passes_up_to_the_maximum() -> None:
    network = Counting(seed=1)
    model, inputs = served_model(network), images(10)

    async def scenario() -> list[InstanceResult]:
        batcher = MicroBatcher(max_batch_size=4, max_wait_s=0.5)
        await batcher.start()
        try:
            return await _each(batcher, model, inputs)
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert network.batches == [4, 4, 2]
    assert [result.batch_size for result in results] == [4] * 8 + [2] * 2
    for image, result in zip(inputs, results, strict=True):
        # Each request gets the rows of its own image.
        torch.testing.assert_close(torch.from_numpy(result.probabilities), alone(network, image))


def test_an_idle_batcher_waits_at_most_max_wait_for_company() -> None:
    async def one(max_batch_size: int, max_wait_s: float) -> tuple[InstanceResult, float]:
        batcher = MicroBatcher(max_batch_size=max_batch_size, max_wait_s=max_wait_s)
        await batcher.start()
        try:
            started = time.perf_counter()
            (result,) = await batcher.infer(served_model(Counting(seed=2)), images(1))
            return result, time.perf_counter() - started
        finally:
            await batcher.stop()

    waited, elapsed = asyncio.run(one(max_batch_size=8, max_wait_s=0.2))
    assert waited.batch_size == 1
    assert waited.queue_s >= 0.19 and elapsed >= 0.19  # it waited for others...
    assert elapsed < 5  # ...and then went ahead alone
    # A batch of at most one image has no one to wait for.
    alone_result, _ = asyncio.run(one(max_batch_size=1, max_wait_s=5.0))
    assert alone_result.queue_s < 1.0


def test_a_batch_waits_for_company_only_while_some_is_on_its_way() -> None:
    expected = [0]

    async def scenario() -> tuple[float, list[int]]:
        network = Counting(seed=2)
        model = served_model(network)
        batcher = MicroBatcher(max_batch_size=8, max_wait_s=2.0, expecting=lambda: expected[0])
        await batcher.start()
        try:
            # Nothing on its way: a lone image goes at once, not after max_wait_s.
            started = time.perf_counter()
            (result,) = await batcher.infer(model, images(1))
            alone_s = time.perf_counter() - started
            assert result.batch_size == 1
            # A request being decoded: the first image waits for it and they share a pass.
            expected[0] = 1

            async def later() -> list[InstanceResult]:
                await asyncio.sleep(0.2)
                expected[0] = 0
                return await batcher.infer(model, images(1, seed=1))

            first, second = await asyncio.gather(batcher.infer(model, images(1)), later())
            assert first[0].batch_size == second[0].batch_size == 2
            return alone_s, network.batches
        finally:
            await batcher.stop()

    alone_s, batches = asyncio.run(scenario())
    assert alone_s < 1.0
    assert batches == [1, 2]


def test_a_batch_never_mixes_model_versions() -> None:
    old, new = Counting(seed=3), Counting(seed=4)
    models = [served_model(old, "1"), served_model(new, "2")]
    inputs = images(6)

    async def scenario() -> list[InstanceResult]:
        batcher = MicroBatcher(max_batch_size=8, max_wait_s=0.2)
        await batcher.start()
        try:
            requests = [batcher.infer(models[i % 2], [image]) for i, image in enumerate(inputs)]
            return [result for (result,) in await asyncio.gather(*requests)]
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert old.batches == [3] and new.batches == [3]
    for i, (image, result) in enumerate(zip(inputs, results, strict=True)):
        network = old if i % 2 == 0 else new
        torch.testing.assert_close(torch.from_numpy(result.probabilities), alone(network, image))


def test_a_failing_forward_fails_the_requests_of_its_batch_only() -> None:
    network = Counting(seed=5)
    model = served_model(network)

    async def scenario() -> tuple[list[object], InstanceResult]:
        batcher = MicroBatcher(max_batch_size=8, max_wait_s=0.2)
        await batcher.start()
        try:
            # Images of two sizes cannot be stacked into one batch.
            mismatched = [images(1)[0], torch.rand(1, 5, 5)]
            outcomes = await asyncio.gather(
                *(batcher.infer(model, [image]) for image in mismatched), return_exceptions=True
            )
            (later,) = await batcher.infer(model, images(1))
            return list(outcomes), later
        finally:
            await batcher.stop()

    outcomes, later = asyncio.run(scenario())
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
    assert later.batch_size == 1  # the worker goes on


def test_stopping_finishes_the_running_batch_and_fails_the_waiting_ones() -> None:
    network = Counting(seed=6, delay_s=0.3)
    model = served_model(network)

    async def scenario() -> tuple[list[object], BaseException | None]:
        batcher = MicroBatcher(max_batch_size=1, max_wait_s=0.0)
        await batcher.start()
        requests = [asyncio.ensure_future(batcher.infer(model, [image])) for image in images(3)]
        await asyncio.sleep(0.1)  # the first forward pass is running
        await batcher.stop()
        outcomes = await asyncio.gather(*requests, return_exceptions=True)
        try:
            await batcher.infer(model, images(1))
        except BatcherStopped as exc:
            return list(outcomes), exc
        return list(outcomes), None

    outcomes, after = asyncio.run(scenario())
    assert isinstance(outcomes[0], list) and outcomes[0][0].batch_size == 1
    assert all(isinstance(outcome, BatcherStopped) for outcome in outcomes[1:])
    assert network.batches == [1]
    assert isinstance(after, BatcherStopped)


def test_a_request_given_up_is_not_forwarded() -> None:
    network = Counting(seed=7)
    model = served_model(network)

    async def scenario() -> InstanceResult:
        batcher = MicroBatcher(max_batch_size=8, max_wait_s=0.3)
        await batcher.start()
        try:
            gone = asyncio.ensure_future(batcher.infer(model, images(2)))
            await asyncio.sleep(0.05)
            gone.cancel()  # the client disconnected while waiting
            (kept,) = await batcher.infer(model, images(1, seed=9))
            return kept
        finally:
            await batcher.stop()

    kept = asyncio.run(scenario())
    assert network.batches == [1] and kept.batch_size == 1


SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    return shared_champion(tmp_path_factory)


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in the metrics"
    return float(match.group(1))


@SQLITE
def test_concurrent_requests_are_batched(campaign: Settings, champion: Champion) -> None:
    settings = champion.serving_settings(
        campaign, max_batch_size=8, max_batch_wait_ms=400.0, model_poll_seconds=0.0
    )
    key = new_key(settings, "clinician")
    admin = new_key(settings, "admin")
    files: list[Path] = [study[0] for study in champion.radiographs[:8]]
    expected = reference_probabilities(champion, "1", files)
    answers: list[dict[str, object] | None] = [None] * len(files)
    start = threading.Barrier(len(files))

    with ThreadedServer(create_app(settings)) as server:
        with server.client() as probe:
            wait_ready(probe)

        def send(index: int) -> None:
            with server.client(headers=bearer(key)) as client:
                data = files[index].read_bytes()
                start.wait()
                response = client.post(
                    "/v1/predict", content=data, headers={"Content-Type": "application/dicom"}
                )
                assert response.status_code == 200, response.text
                answers[index] = response.json()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(files))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        with server.client(headers=bearer(admin)) as client:
            metrics = client.get("/metrics").text

    assert all(answer is not None for answer in answers)
    passes = _metric(metrics, "medai_inference_batch_size_count")
    batched = _metric(metrics, "medai_inference_batch_size_sum")
    assert batched == len(files)  # every image was forwarded once...
    assert passes < len(files)  # ...in fewer forward passes than images
    queued = [answer["timing_ms"]["queue"] for answer in answers if answer]  # type: ignore[index]
    assert max(queued) > 0
    for answer, row in zip(answers, expected, strict=True):
        assert answer is not None
        probabilities = [f["probability"] for f in answer["findings"]]  # type: ignore[attr-defined]
        assert probabilities == pytest.approx(row.tolist(), abs=1e-5)
    # The request metrics saw them too, under the route's template.
    line = 'medai_http_requests_total{method="POST",route="/v1/predict",status="200"}'
    assert _metric(metrics, line) == len(files)
