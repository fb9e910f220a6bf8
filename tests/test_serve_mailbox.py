"""serve/app.py Mailbox: events posted from another thread reach their queues, all of them, in
order, and a batch posted while the loop is busy costs one wake-up of the loop, not one each."""
import asyncio
import threading

import pytest

pytest.importorskip("fastapi")
from microgpt.serve.app import Mailbox


def test_a_step_of_events_is_one_wakeup_and_keeps_order():
    async def main():
        box, queues = Mailbox(asyncio.get_running_loop()), [asyncio.Queue() for _ in range(32)]
        wakeups = []
        deliver = box._deliver
        box._deliver = lambda: (wakeups.append(1), deliver())
        got = [[] for _ in queues]
        for step in range(3):
            # the "engine" posts one event per stream while the loop is blocked (join without await)
            thread = threading.Thread(target=lambda: [box.post(q, (i, step)) for i, q in enumerate(queues)])
            thread.start()
            thread.join()
            for _ in range(3):
                await asyncio.sleep(0)
            for i, q in enumerate(queues):
                while not q.empty():
                    got[i].append(q.get_nowait())
        return got, len(wakeups)

    got, wakeups = asyncio.run(main())
    assert got == [[(i, step) for step in range(3)] for i in range(32)]
    assert wakeups == 3
