"""Decoding ahead: a generic background thread that computes the next items while the caller works."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


_ITEM, _ERROR, _END = range(3)


def prefetch(items: Iterable[T], maxsize: int = 32) -> Iterator[T]:
    """Yield `items` while a background thread computes the next ones (at most `maxsize` ahead).

    OpenCV releases the GIL while decoding, so decoding overlaps the consumer's work. An exception in
    the producer is raised here after the items produced before it. When the consumer stops early
    (break, exception, Ctrl-C, close()), the producer is told to stop and joined as soon as this
    generator is closed, which CPython does when the loop drops it (or use contextlib.closing).
    """
    if maxsize <= 0:
        raise ValueError(f"maxsize must be positive, got {maxsize}")
    buffer: queue.Queue[tuple[int, object]] = queue.Queue(maxsize)
    stop = threading.Event()

    def put(entry: tuple[int, object]) -> bool:
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((_ITEM, item)):
                    return
            put((_END, None))
        except BaseException as error:
            put((_ERROR, error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # runs the generator's cleanup in its own thread
                close()

    producer = threading.Thread(target=produce, name="malmm-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            kind, value = buffer.get()
            if kind == _ITEM:
                yield value
            elif kind == _ERROR:
                raise value
            else:
                return
    finally:
        stop.set()
        producer.join()
