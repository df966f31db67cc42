"""The batching queue on its own: what waits together is decoded together, in order, up to the row
limit; beyond the queue's limit a request is refused at once with the time to come back."""

from __future__ import annotations

import threading

import pytest

from kronos_rolling.serve.batching import BatchCost, Batcher, BatchJob, Overloaded


class Decoder:
    """A run_batch that records each batch and decodes one only when allowed to."""

    def __init__(self):
        self.batches: list[list[str]] = []
        self.permits = threading.Semaphore(0)
        self.changed = threading.Condition()

    def allow(self, batches: int = 1) -> None:
        for _ in range(batches):
            self.permits.release()

    def started(self, count: int) -> None:
        """Wait until `count` batches have started."""
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.batches) >= count, 10), self.batches

    def __call__(self, jobs: list[BatchJob]) -> list:
        with self.changed:
            self.batches.append([job.payload for job in jobs])
            self.changed.notify_all()
        assert self.permits.acquire(timeout=10)
        return [f"answer to {job.payload}" for job in jobs]


class Clock:
    """Time that moves only when told: the rate the queue measures is exactly known."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def job(name: str, rows: int = 1, work: float = 10.0, key="k") -> BatchJob:
    return BatchJob(key=key, rows=rows, work=work, payload=name)


def decoded_alone(batcher: Batcher, decoder: Decoder, clock: Clock, item: BatchJob, seconds: float,
                  waited_s: float = 0.0) -> str:
    """Submit `item` with nothing ahead of it and let it decode in `seconds` of the test's clock."""
    [future] = batcher.submit([item], waited_s=waited_s)
    decoder.started(len(decoder.batches) + 1)
    clock.now += seconds
    decoder.allow()
    return future.result(10)


def test_jobs_that_wait_together_are_decoded_together_in_order_up_to_the_row_limit():
    decoder = Decoder()
    batcher = Batcher(decoder, max_batch_size=4, max_batch_wait_s=0.0, max_queue_wait_s=60).start()
    try:
        decoder.allow()
        batcher.submit([job("warm")])[0].result(10)  # a first batch measures the rate
        [first] = batcher.submit([job("a")])
        decoder.started(2)  # "a" decodes alone; the rest queue behind it
        futures = [f for name, rows, key in (("b", 2, "k"), ("c", 1, "other"), ("d", 1, "k"), ("e", 2, "k"))
                   for f in batcher.submit([job(name, rows, key=key)])]
        decoder.allow(4)
        assert first.result(10) == "answer to a"
        assert [f.result(10) for f in futures] == [f"answer to {n}" for n in "bcde"]
    finally:
        decoder.allow(10)
        batcher.stop()
    # b and d share a key and fill 3 of 4 rows; e (2 rows) would overflow; c waits for its key's turn.
    assert decoder.batches == [["warm"], ["a"], ["b", "d"], ["c"], ["e"]]


def test_a_job_larger_than_a_batch_is_decoded_alone_and_a_failed_batch_fails_its_jobs():
    def failing(jobs):
        raise RuntimeError("the decode broke")

    batcher = Batcher(failing, max_batch_size=2, max_batch_wait_s=0.0, max_queue_wait_s=60).start()
    try:
        [big] = batcher.submit([job("big", rows=5)])  # admitted alone though no rate is known yet
        with pytest.raises(RuntimeError, match="the decode broke"):
            big.result(10)
    finally:
        batcher.stop()


def test_beyond_the_limit_a_request_is_refused_at_once_with_the_time_to_come_back():
    clock, decoder = Clock(), Decoder()
    batcher = Batcher(decoder, max_batch_size=2, max_batch_wait_s=0.0, max_queue_wait_s=8.0, clock=clock).start()
    try:
        # No rate measured yet: one batch of rows may wait, no more.
        [first] = batcher.submit([job("a", rows=2, work=4.0)])
        decoder.started(1)
        with pytest.raises(Overloaded):
            batcher.submit([job("b", rows=1)])
        clock.now = 4.0  # the batch took 4 s for 4 work units: 1 unit/s, 2 units per row
        decoder.allow()
        assert first.result(10) == "answer to a"
        # Half the rows, half the time: batching saves nothing, a row costs 2 s.
        decoded_alone(batcher, decoder, clock, job("g", rows=1, work=2.0), 2.0)
        [d] = batcher.submit([job("d", rows=2, work=4.0)])  # 4 s: two rows fit in half the limit
        decoder.started(3)
        # Behind d's 4 s, a 1-row job of 3 units ends with its 2-row batch, whose other row
        # (2 s) may still join while it waits: 4 + 3 + 2 = 9 s, over the 8 s limit.
        with pytest.raises(Overloaded) as refused:
            batcher.submit([job("c", rows=1, work=3.0)])
        assert refused.value.retry_after_s == 1 and "in about 9s, over the 8s limit" in str(refused.value)
        with pytest.raises(Overloaded):  # 4 + 5 = 9 s
            batcher.submit([job("e", rows=2, work=5.0)])
        [f] = batcher.submit([job("f", rows=2, work=4.0)])  # fills its batch: 4 + 4 = 8 s, just within
        decoder.allow(2)
        assert (d.result(10), f.result(10)) == ("answer to d", "answer to f")
    finally:
        decoder.allow(10)
        batcher.stop()
    state = batcher.state()
    assert (state.shed, state.batches) == (3, 4)


def test_a_batch_holds_no_more_rows_than_decode_in_half_the_limit():
    clock, decoder = Clock(), Decoder()
    batcher = Batcher(decoder, max_batch_size=8, max_batch_wait_s=0.0, max_queue_wait_s=24.0, clock=clock).start()
    try:
        decoded_alone(batcher, decoder, clock, job("one", rows=1, work=10.0), 3.0)  # a row of 10 units: 3 s
        [two] = batcher.submit([job("two", rows=2, work=20.0)])
        decoder.started(2)
        # While "two" decodes (6 s at the rate so far), six one-row jobs fit in the 24 s limit.
        waiting = [f for i in range(6) for f in batcher.submit([job(f"w{i}", work=10.0)])]
        with pytest.raises(Overloaded):
            batcher.submit([job("w6", work=10.0)])
        clock.now = 9.0  # two rows, 6 s: each row costs its own 3 s, batching saves nothing
        decoder.allow(3)
        assert [f.result(10) for f in waiting] == [f"answer to w{i}" for i in range(6)]
    finally:
        decoder.allow(10)
        batcher.stop()
    # max_batch_size would take all six; half the limit, 12 s, holds four rows of 3 s.
    assert decoder.batches[2:] == [["w0", "w1", "w2", "w3"], ["w4", "w5"]]
    cost = BatchCost()
    cost.add(10, 1, 3.0)
    cost.add(20, 2, 6.0)
    assert cost.rows_within(12.0, 10.0) == 4 and BatchCost().rows_within(12.0, 10.0) is None


def test_the_limit_counts_the_time_a_request_took_to_arrive_and_waits_longer_than_predicted_correct_it():
    clock, decoder = Clock(), Decoder()
    batcher = Batcher(decoder, max_batch_size=4, max_batch_wait_s=0.0, max_queue_wait_s=5.0, clock=clock).start()
    try:
        decoded_alone(batcher, decoder, clock, job("a", work=2.0), 2.0)  # 1 unit/s
        with pytest.raises(Overloaded, match="in about 6s"):  # 2 s of decode after 3.5 s of reading it
            batcher.submit([job("late", work=2.0)], waited_s=3.5)
        decoded_alone(batcher, decoder, clock, job("b", rows=1, work=2.0), 2.0, waited_s=1.0)  # 1 unit/s again
        for _ in range(20):
            batcher.observe(3.0, 6.0)  # predicted 3 s from their arrival, answered after 6: 3 s missed
        # Up by 0.04975 s (0.995 x 1% of the 5 s limit) each time it fell short of the 3 s missed.
        assert batcher.state().correction == pytest.approx(20 * 0.05 * 0.995)
        with pytest.raises(Overloaded, match="in about 7s"):  # 2 s of decode + 0.995 s, after 4.5 s
            batcher.submit([job("c", work=2.0)], waited_s=4.5)
        for _ in range(13000):
            batcher.observe(3.0, 1.0)  # then 2 s faster than predicted, time after time: down 0.00025 s each
        assert batcher.state().correction == pytest.approx(-2.0, abs=0.06)  # and there it settles
    finally:
        decoder.allow(10)
        batcher.stop()


def test_what_a_row_adds_to_a_batch_is_learned_from_batches_of_different_sizes():
    lookback_bound, step_bound, one_size = BatchCost(), BatchCost(), BatchCost()
    for rows in (1, 1, 2, 4, 8):  # every row costs its own 0.9 s: batching saves nothing
        lookback_bound.add(300 * rows, rows, 0.9 * rows)
    for rows in (1, 2, 4, 8, 16):  # 1.4 s shared by the batch, 0.2 s per row
        step_bound.add(96 * rows, rows, 1.4 + 0.2 * rows)
    one_size.add(300, 1, 0.9)
    one_size.add(300, 1, 0.95)
    assert lookback_bound.row_seconds(300) == pytest.approx(0.9)
    assert step_bound.row_seconds(96) == pytest.approx(0.2)
    assert one_size.row_seconds(300) == 0.0  # no telling yet: a joining row is taken to cost nothing


def test_once_the_queue_alone_is_over_the_limit_the_door_check_refuses_before_a_request_is_read():
    clock, decoder = Clock(), Decoder()
    batcher = Batcher(decoder, max_batch_size=4, max_batch_wait_s=0.0, max_queue_wait_s=5.0, clock=clock).start()
    try:
        [first] = batcher.submit([job("a", work=1.0)])
        decoder.started(1)
        assert batcher.overloaded() is None  # no rate yet: nothing to judge by
        # Admitted while no rate was known (one batch of rows): 40 units that turn out to need 40 s.
        waiting = batcher.submit([job("b", work=20.0), job("c", work=20.0)])
        clock.now = 1.0  # "a" took 1 s for 1 unit
        decoder.allow()
        first.result(10)
        decoder.started(2)  # b and c decode now, 40 s of work at 1 unit/s
        refusal = batcher.overloaded()
        assert isinstance(refusal, Overloaded) and refusal.retry_after_s >= 30
        decoder.allow()
        assert [f.result(10) for f in waiting] == ["answer to b", "answer to c"]  # admitted ones are answered
    finally:
        decoder.allow(10)
        batcher.stop()


def test_stopping_fails_what_still_waits():
    decoder = Decoder()
    batcher = Batcher(decoder, max_batch_size=1, max_batch_wait_s=0.0, max_queue_wait_s=60).start()
    decoder.allow()
    batcher.submit([job("warm")])[0].result(10)
    [running] = batcher.submit([job("a")])
    decoder.started(2)
    [waiting] = batcher.submit([job("b")])
    stopping = threading.Thread(target=batcher.stop)
    stopping.start()
    with pytest.raises(Overloaded, match="stopping"):
        waiting.result(10)
    decoder.allow()
    stopping.join(10)
    assert running.result(10) == "answer to a"
    with pytest.raises(Overloaded, match="not answering"):
        batcher.submit([job("c")])
