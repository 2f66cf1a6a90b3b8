"""A regular scraper's /metrics body is rendered just before it asks (exporter.scrapeahead)."""

from __future__ import annotations

import asyncio
import time

import pytest

from exporter import scrapeahead
from exporter.scrapeahead import ScrapeAhead

INTERVAL = 0.2  # seconds between one scraper's scrapes in these tests


class Renders:
    """A render that says when it ran: the body is the render's ordinal and monotonic time."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.refreshed = 0
        self.errors: list[Exception] = []

    def render(self, what) -> bytes:
        self.times.append(time.monotonic())
        return f"{what} #{len(self.times)} at {self.times[-1]:.6f}".encode()

    async def refresh(self) -> None:
        self.refreshed += 1

    def ahead(self) -> ScrapeAhead:
        return ScrapeAhead(self.render, self.refresh, self.errors.append)


def scrapes(loop, ahead: ScrapeAhead, connection, what, times: int, interval: float = INTERVAL) -> list[tuple]:
    """`times` scrapes `interval` apart; each (body, monotonic time asked)."""
    async def run():
        answers = []
        for i in range(times):
            if i:
                await asyncio.sleep(interval)
            answers.append((ahead.body(connection, what), time.monotonic()))
        return answers
    return loop.run_until_complete(run())


def rendered_at(body: bytes) -> float:
    return float(body.decode().rsplit(" at ", 1)[1])


def test_the_first_two_scrapes_of_a_connection_are_rendered_on_the_spot(loop):
    renders = Renders()
    ahead = renders.ahead()
    for body, asked in scrapes(loop, ahead, ("127.0.0.1", 5000), "text", 2):
        assert rendered_at(body) <= asked and asked - rendered_at(body) < 0.05
    assert ahead.served_ahead == 0
    ahead.close()


def test_a_regular_scraper_is_answered_with_a_body_rendered_before_it_asked(loop):
    renders = Renders()
    ahead = renders.ahead()
    answers = scrapes(loop, ahead, ("127.0.0.1", 5000), "text", 5)
    assert ahead.served_ahead == 3  # the third scrape on: the interval is known after the second
    for body, asked in answers[2:]:
        age = asked - rendered_at(body)
        assert 0 < age <= INTERVAL / 2  # rendered before the scrape, and never older than max_age
    assert renders.refreshed == 3  # each render ahead read the run directory first
    ahead.close()


def test_each_connection_and_each_form_of_the_body_is_its_own_scraper(loop):
    renders = Renders()
    ahead = renders.ahead()

    async def two_scrapers():
        answers = []
        for _ in range(4):
            answers.append(ahead.body("prometheus-a", "openmetrics"))
            answers.append(ahead.body("prometheus-b", "text"))
            await asyncio.sleep(INTERVAL)
        return answers
    answers = loop.run_until_complete(two_scrapers())
    assert ahead.served_ahead == 4
    assert all(body.startswith(b"openmetrics") for body in answers[0::2])
    assert all(body.startswith(b"text") for body in answers[1::2])
    ahead.close()


def test_a_scrape_that_comes_late_is_rendered_on_the_spot_not_served_an_old_body(loop):
    renders = Renders()
    ahead = renders.ahead()
    scrapes(loop, ahead, "prometheus", "text", 2)
    loop.run_until_complete(asyncio.sleep(INTERVAL * 3))  # the body rendered ahead is too old by now
    body, asked = scrapes(loop, ahead, "prometheus", "text", 1)[0]
    assert ahead.served_ahead == 0
    assert asked - rendered_at(body) < 0.05
    ahead.close()


def test_a_one_off_scrape_schedules_nothing(loop):
    renders = Renders()
    ahead = renders.ahead()
    scrapes(loop, ahead, "curl", "text", 1)
    loop.run_until_complete(asyncio.sleep(INTERVAL))
    assert len(renders.times) == 1
    ahead.close()


def test_a_failed_render_ahead_is_reported_and_the_scrape_renders_its_own(loop):
    renders = Renders()
    calls = []

    def flaky(what):
        calls.append(what)
        if len(calls) == 3:  # the render ahead of the third scrape
            raise OSError("a shared file vanished")
        return renders.render(what)
    ahead = ScrapeAhead(flaky, renders.refresh, renders.errors.append)
    answers = scrapes(loop, ahead, "prometheus", "text", 3)
    assert [type(e) for e in renders.errors] == [OSError]
    assert ahead.served_ahead == 0 and answers[2][1] - rendered_at(answers[2][0]) < 0.05
    ahead.close()


def test_only_so_many_scrapers_are_remembered(loop, monkeypatch):
    monkeypatch.setattr(scrapeahead, "MAX_SCRAPERS", 3)
    renders = Renders()
    ahead = renders.ahead()

    async def many():
        for _ in range(2):
            for port in range(10):
                ahead.body(("127.0.0.1", port), "text")
            await asyncio.sleep(0.01)
    loop.run_until_complete(many())
    assert len(ahead) == 3
    ahead.close()


@pytest.mark.parametrize("interval, lead, max_age", [(0.1, 0.025, 0.05), (1.0, 0.1, 0.5), (15.0, 0.1, 1.0)])
def test_the_lead_and_the_oldest_body_served_follow_the_interval(interval, lead, max_age):
    scraper = scrapeahead._Scraper(last=0.0, interval=interval)
    assert scraper.lead == pytest.approx(lead) and scraper.max_age == pytest.approx(max_age)
