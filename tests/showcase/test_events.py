"""The event streams keep to the schedule set at their start: a delay does not add up."""

from __future__ import annotations

from unittest import mock

from django.test import SimpleTestCase

from apps.showcase import views


class FakeClock:
    """A clock that moves only when something sleeps or the test says so."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


class ScheduleTests(SimpleTestCase):
    # 4 events 100 ms apart; the client (or the loop) is 250 ms late taking the 2nd one. The
    # 2nd and 3rd are then overdue and leave at once; the 4th waits for its own time (300 ms).
    # Sleeping a whole interval after each send would have asked for 0.1 three times.
    expected_sleeps = [0.0, 0.0, 0.05]  # noqa: RUF012

    def test_sync_stream_catches_up_after_a_delay(self) -> None:
        clock = FakeClock()
        with (
            mock.patch.object(views.time, "monotonic", clock.time),
            mock.patch.object(views.time, "sleep", clock.sleep),
        ):
            stream = views.sync_events(4, 100)
            next(stream)
            clock.now += 0.25
            events = [next(stream) for _ in range(3)]
        self.assertEqual(len(events), 3)
        self.assertEqual(clock.sleeps, self.expected_sleeps)

    async def test_async_stream_catches_up_after_a_delay(self) -> None:
        clock = FakeClock()
        loop = mock.Mock(time=clock.time)
        stream = views.async_events(4, 100)
        with (
            mock.patch.object(views.asyncio, "get_running_loop", return_value=loop),
            mock.patch.object(views.asyncio, "sleep", clock.async_sleep),
        ):
            await anext(stream)
            clock.now += 0.25
            events = [await anext(stream) for _ in range(3)]
        self.assertEqual(len(events), 3)
        self.assertEqual(clock.sleeps, self.expected_sleeps)
