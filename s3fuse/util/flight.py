"""Single-flight: concurrent callers asking for the same key share one execution."""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Generic, Hashable, TypeVar

import trio

T = TypeVar("T")


class _Call(Generic[T]):
    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: T | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[T]):
    """Deduplicates concurrent work keyed by `key`; later callers await the first."""

    def __init__(self) -> None:
        self._calls: dict[Hashable, _Call[T]] = {}

    def busy(self, key: Hashable) -> bool:
        return key in self._calls

    async def run(self, key: Hashable, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        call = self._calls.get(key)
        if call is not None:
            await call.done.wait()
            if call.error is not None:
                raise _copy(call.error)
            return call.value  # type: ignore[return-value]
        call = _Call()
        self._calls[key] = call
        try:
            call.value = await fn(*args)
            return call.value
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            del self._calls[key]
            call.done.set()


def _copy(exc: BaseException) -> BaseException:
    """Waiters get their own exception object; cancellation of the leader is not theirs."""
    if isinstance(exc, trio.Cancelled):
        from ..errors import RemoteError
        return RemoteError("shared request was cancelled")
    try:
        clone = type(exc)(*exc.args)
    except Exception:  # noqa: BLE001 - exotic constructor: reuse the original
        return exc
    return clone
