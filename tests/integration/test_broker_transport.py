"""The workers' Redis transport (workers/broker.py) on a real Redis of the test's own that
the test fills: a task taken while Redis refuses writes is delivered, not dropped, and its
acknowledgement or rejection frees the worker's slot instead of raising; the copies left in
the unacked index are removed once Redis takes writes again."""

from __future__ import annotations

from kombu import Connection


def test_tasks_taken_and_finished_while_redis_is_full_free_their_slots(own_redis):
    with Connection(own_redis.url, transport="workers.broker:Transport") as conn:
        queue = conn.SimpleQueue("broker-transport-test")
        queue.put({"n": 1})
        queue.put({"n": 2})
        qos = queue.channel.qos
        qos.prefetch_count = 2  # a worker's slots: two tasks at a time
        first = queue.get(timeout=5)  # indexed while Redis takes writes
        own_redis.fill_memory()
        second = queue.get(timeout=5)  # taken from the list; its copy cannot be written
        assert (first.payload, second.payload) == ({"n": 1}, {"n": 2})
        assert not qos.can_consume()
        first.ack()  # Redis refuses to forget the copy: acknowledged in memory all the same
        second.reject()
        assert qos.can_consume()  # both slots free again
        own_redis.free_memory()
        queue.put({"n": 3})
        queue.get(timeout=5).ack()  # and now the left-over copy goes too
        assert own_redis.client().hlen("unacked") == 0
        queue.close()
