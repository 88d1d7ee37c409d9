import queue

from deepis_rt.stream.pipeline import STOP, BatchStageThread, FrameTask, Stage, StageThread


def _drain(q):
    out = []
    while True:
        item = q.get(timeout=10)
        if item is STOP:
            return out
        out.append(item)


class Double(Stage):
    name = "double"

    def process(self, task):
        if task.volume == 3:
            raise ValueError("three is bad")
        task.volume *= 2
        return task


def test_stage_failures_pass_through_in_order():
    inbox, outbox = queue.Queue(), queue.Queue()
    t = StageThread(Double(), inbox, outbox)
    t.start()
    for i in range(5):
        inbox.put(FrameTask(frame=i, source=str(i), volume=i))
    inbox.put(STOP)
    out = _drain(outbox)
    t.join(5)
    assert [x.frame for x in out] == [0, 1, 2, 3, 4]
    assert [x.volume for x in out if x.ok] == [0, 2, 4, 8]
    assert "three is bad" in out[3].error and out[3].timings_ms["double"] >= 0


class BrokenOpen(Stage):
    name = "broken"

    def open(self):
        raise RuntimeError("no device")


def test_a_stage_that_cannot_start_fails_its_tasks_and_does_not_hang():
    inbox, outbox = queue.Queue(), queue.Queue()
    for i in range(3):
        inbox.put(FrameTask(frame=i, source=str(i)))
    inbox.put(STOP)
    t = StageThread(BrokenOpen(), inbox, outbox)
    t.start()
    out = _drain(outbox)
    t.join(5)
    assert [x.frame for x in out] == [0, 1, 2]
    assert all("no device" in x.error for x in out)
    assert isinstance(t.fatal, RuntimeError)


class Batcher(Stage):
    name = "infer"

    def __init__(self):
        self.sizes = []

    def process_batch(self, tasks):
        self.sizes.append(len(tasks))
        if any(t.volume == "bad" for t in tasks):
            raise ValueError("bad frame in batch")
        for t in tasks:
            t.output = t.volume


def test_batches_what_is_queued_and_isolates_a_bad_frame():
    inbox, outbox = queue.Queue(), queue.Queue()
    for i, v in enumerate([1, "bad", 3, 4, 5]):
        inbox.put(FrameTask(frame=i, source=str(i), volume=v))
    inbox.put(STOP)
    stage = Batcher()
    t = BatchStageThread(stage, inbox, outbox, max_batch=4)
    t.start()
    out = _drain(outbox)
    t.join(5)
    assert [x.frame for x in out] == [0, 1, 2, 3, 4]
    assert stage.sizes[0] == 4  # frames had queued up: one batch of 4
    assert [x.ok for x in out] == [True, False, True, True, True]
    assert [x.output for x in out if x.ok] == [1, 3, 4, 5]
