"""What `leadscore serve` hands its workers, importing nothing heavy: its own process only supervises them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

# Where workers of one service keep their metrics (prometheus_client's multiprocess mode; `leadscore serve` sets it
# for several workers): a scrape reaches one worker, which then answers for all of them.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


# Set by `leadscore serve` for its workers (see ServiceStart).
SERVICE_START = "LEADSCORE_SERVICE_START"


@dataclass(frozen=True, slots=True)
class ServiceStart:
    """What a service of several workers started with: the alias' model version then, and the newest reload before.

    uvicorn replaces a worker that dies. The replacement must serve what its siblings serve, which is this version
    (or the version of a reload since), not wherever the alias points by the time it starts.
    """

    model_version: str
    reload_id: int

    def to_environment(self) -> str:
        """The value of SERVICE_START that hands this to the workers."""
        return json.dumps({"model_version": self.model_version, "reload_id": self.reload_id})

    @classmethod
    def from_environment(cls) -> ServiceStart | None:
        """What `leadscore serve` handed over; None under a plain `uvicorn` (each worker then loads the alias)."""
        value = os.environ.get(SERVICE_START)
        if not value:
            return None
        fields = json.loads(value)
        return cls(str(fields["model_version"]), int(fields["reload_id"]))
