"""exporter.limiter: request work takes at most `max_busy_ratio` of one core, however many clients come."""

import threading
import time
import urllib.request

import pytest

from exporter import TrainingMonitor
from exporter.limiter import BURST_SECONDS, DutyLimiter

RATIO = 0.2
TOLERANCE = 0.08  # a window edge can hold one turn whose cool-down lies past the window's end


def spin(cpu_seconds: float) -> None:
    """Burn this thread's CPU (a stand-in for rendering a large body)."""
    end = time.thread_time() + cpu_seconds
    while time.thread_time() < end:
        pass


def hammer(limiter: DutyLimiter, until: float, cpu: list) -> None:
    """One client: back-to-back 5 ms pieces of work until `until`; adds its own thread CPU to `cpu`."""
    started = time.thread_time()
    while time.monotonic() < until:
        with limiter.turn():
            spin(0.005)
    cpu.append(time.thread_time() - started)


def busy_share(limiter: DutyLimiter, clients: int, seconds: float) -> tuple[float, float]:
    """(limiter's own busy seconds, the clients' measured thread CPU seconds) per wall second."""
    cpu: list[float] = []
    started = time.monotonic()
    threads = [threading.Thread(target=hammer, args=(limiter, started + seconds, cpu)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    return limiter.busy_seconds / wall, sum(cpu) / wall


def test_a_burst_of_clients_gets_at_most_the_ratio_of_one_core():
    accounted, measured = busy_share(DutyLimiter(RATIO), clients=8, seconds=1.5)
    allowed = RATIO + BURST_SECONDS / 1.5 + TOLERANCE  # from idle, one burst goes unpaced
    assert accounted <= allowed
    assert measured <= allowed  # independent of the limiter's accounting: the threads' own CPU clocks


def test_without_a_limit_the_same_burst_takes_far_more():
    # the check above can fail: unlimited, eight spinning threads keep a core busy (GIL-bound)
    _, measured = busy_share(DutyLimiter(1.0), clients=8, seconds=1.0)
    assert measured > RATIO + 2 * TOLERANCE


def test_work_charged_outside_a_turn_delays_the_next_turn():
    limiter = DutyLimiter(0.5)
    limiter.charge(0.2)  # e.g. a socket write: at ratio 0.5 the next turn waits as long again
    started = time.monotonic()
    with limiter.turn():
        pass
    assert time.monotonic() - started >= 0.15


def test_a_turn_charges_all_its_threads_cpu_since_the_mark_where_its_request_began():
    limiter = DutyLimiter(0.5)
    limiter.mark()
    spin(0.05)  # e.g. reading and parsing the request's head, before its turn
    with limiter.turn():
        pass
    assert limiter.busy_seconds >= 0.05
    spin(0.02)  # e.g. writing the answer, after the turn
    limiter.charge_thread()
    assert limiter.busy_seconds >= 0.07


def test_queued_turns_run_one_at_a_time_in_arrival_order():
    limiter, order, inside = DutyLimiter(0.5), [], []
    limiter.charge(0.3)  # the first turn waits, so the others queue behind it
    gate = threading.Barrier(2)

    def work(k):
        if k == 0:
            gate.wait()
        with limiter.turn():
            inside.append(k)
            assert len(inside) == 1  # nobody else inside meanwhile
            order.append(k)
            inside.pop()

    threads = [threading.Thread(target=work, args=(0,))]
    threads[0].start()
    gate.wait()
    while limiter._next_ticket < 1:
        time.sleep(0.001)
    for k in range(1, 6):
        threads.append(threading.Thread(target=work, args=(k,)))
        threads[-1].start()
        while limiter._next_ticket < k + 1:  # each takes its ticket before the next starts
            time.sleep(0.001)
    for thread in threads:
        thread.join(10)
    assert order == [0, 1, 2, 3, 4, 5]


def test_an_idle_limiter_grants_a_short_burst_before_pacing():
    limiter = DutyLimiter(0.05)
    limiter.charge(BURST_SECONDS / 2)  # within the burst (a page load): the next turn may start at once
    assert limiter._next_start <= time.monotonic()
    limiter.charge(BURST_SECONDS / 2 + 0.01)  # past it: 0.01 s of CPU over the burst buys 0.19 s of cool-down
    assert limiter._next_start > time.monotonic() + 0.1


def test_setting_stop_releases_waiting_turns_at_once():
    limiter = DutyLimiter(0.01)
    limiter.charge(100.0)  # ~10,000 s of cool-down ahead
    done = threading.Event()

    def work():
        with limiter.turn():
            done.set()

    threading.Thread(target=work, daemon=True).start()
    limiter.stop.set()
    limiter.wake()
    assert done.wait(5)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_a_ratio_outside_0_1_is_a_one_line_error(ratio):
    with pytest.raises(ValueError, match="max_busy_ratio must be in"):
        DutyLimiter(ratio)


def training_monitor() -> TrainingMonitor:
    """A monitor whose run trains: the server paces its requests."""
    monitor = TrainingMonitor(run_id="r", rank=0)
    monitor.run_started(max_iterations=10_000, start_time=time.time())
    return monitor


def test_healthz_answers_while_the_server_is_in_a_long_cool_down():
    with training_monitor().serve(max_busy_ratio=0.01) as server:
        server.limiter.charge(100.0)
        with urllib.request.urlopen(server.url + "/healthz", timeout=5) as r:
            assert r.read() == b"ok\n"


def test_close_answers_requests_waiting_for_their_turn():
    server = training_monitor().serve(max_busy_ratio=0.01)
    server.limiter.charge(100.0)
    answers = []

    def client():
        with urllib.request.urlopen(server.url + "/api/status", timeout=10) as r:
            answers.append(r.status)

    thread = threading.Thread(target=client)
    thread.start()
    # poll until the request is parked waiting for its turn (the handler took a ticket)
    deadline = time.monotonic() + 5
    while server.limiter._next_ticket == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.limiter._next_ticket == 1, "the request should be waiting for its turn"
    server.close()
    thread.join(10)
    assert answers == [200]


def test_once_the_run_has_ended_nothing_is_paced():
    monitor = training_monitor()
    with monitor.serve(max_busy_ratio=0.01) as server:
        server.limiter.charge(100.0)  # ~10,000 s of cool-down ahead, while training
        monitor.run_ended(iteration=10, state="finished")  # no training left to protect
        with urllib.request.urlopen(server.url + "/api/status", timeout=5) as r:
            assert r.status == 200


def test_the_server_limits_a_storm_of_heavy_requests():
    monitor = training_monitor()
    for i in range(1, 5001):
        monitor.log(iteration=i, loss=4.0, lr=1e-3, step_seconds=0.01, tokens_per_second=1e4)
    with monitor.serve(max_busy_ratio=RATIO) as server:
        started, errors = time.monotonic(), []

        def client():
            while time.monotonic() < started + 2.0:
                try:
                    with urllib.request.urlopen(server.url + "/api/history?format=columns", timeout=30) as r:
                        r.read()
                except Exception as e:  # counted: the storm must be served, only slower
                    errors.append(e)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        assert errors == []
        assert server.limiter.turns > 0
        assert server.limiter.busy_seconds / wall <= RATIO + BURST_SECONDS / wall + TOLERANCE
