"""The jobs one task server is working on, and what it learns about them while they run."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from rtai_worker.consumer import Delivery


class RunningJobs(Mapping[str, Delivery]):
    """Entry id -> delivery, for the jobs this worker is working on: their claims are kept fresh
    (`Consumer.keep_claimed`) and a shutdown hands them back. A job leaves when it is answered or handed back."""

    __slots__ = ("_entries", "cancelled", "hung", "taken_over")

    def __init__(self) -> None:
        self._entries: dict[str, Delivery] = {}
        self.cancelled: set[str] = set()
        """Job ids of running jobs whose cancel was heard: a stream stops at its next step."""
        self.hung: set[str] = set()
        """Entry ids of running jobs whose model call hung: handed back charged with the delivery (a job that hangs
        every worker must reach the dead letters)."""
        self.taken_over: set[str] = set()
        """Entry ids of running jobs that another worker reclaimed (this one was paused past `reclaim_idle_ms`)."""

    def __getitem__(self, entry_id: str) -> Delivery:
        return self._entries[entry_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, d: Delivery) -> None:
        self._entries[d.entry_id] = d

    def release(self, d: Delivery) -> None:
        """A job is no longer being run here (answered, or handed back to be reclaimed)."""
        self._entries.pop(d.entry_id, None)
        self.cancelled.discard(d.job.job_id)
        self.taken_over.discard(d.entry_id)
        self.hung.discard(d.entry_id)

    def cancel(self, job_id: str) -> None:
        """Note a cancel for a job running here (a cancel for any other job is not ours to keep)."""
        if any(d.job.job_id == job_id for d in self._entries.values()):
            self.cancelled.add(job_id)

    def take_over(self, entry_ids: Iterable[str]) -> list[Delivery]:
        """Note jobs that another worker reclaimed and runs now; returns those not known before (finished ones are
        left out)."""
        new = [self._entries[i] for i in entry_ids if i in self._entries and i not in self.taken_over]
        self.taken_over.update(d.entry_id for d in new)
        return new

    def unfinished(self) -> list[tuple[str, int | None]]:
        """The jobs still running here, to hand back at shutdown (entry id, delivery count to set). A job the drain cut
        off gives back the delivery it was charged for this run: else a long generation cut off by a few rolling
        updates would be dead-lettered as poison. One whose model call hung keeps it."""
        return [(i, None if i in self.hung else d.deliveries - 1) for i, d in self._entries.items()]
