"""Leaving a torchrun process group: a finished rank neither aborts nor waits forever."""

from __future__ import annotations

import textwrap
import time

from assft.runtime import distributed
from assft_testing import torchrun

# Two gloo ranks: rank 0 finished; rank 1 failed, stays busy for a while and then leaves
# without the closing barrier.
_SCRIPT = textwrap.dedent("""
    import time
    from assft.runtime import distributed
    import torch, torch.distributed as dist
    distributed.SHUTDOWN_WAIT_S = 3
    distributed.setup(torch.device("cpu"))
    distributed.barrier()
    failed = distributed.rank() == 1
    if failed:
        time.sleep(10)
    start = time.monotonic()
    distributed.shutdown(finished=not failed)
    assert not dist.is_initialized()
    print(f"rank {distributed.rank()} left after {time.monotonic() - start:.1f} s", flush=True)
""")


def test_shutdown_outside_torchrun_does_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    distributed.shutdown(finished=True)
    distributed.shutdown(finished=False)
    assert distributed.world_size() == 1 and distributed.is_main()


def test_a_finished_rank_leaves_when_the_other_failed(tmp_path):
    script = tmp_path / "leave.py"
    script.write_text(_SCRIPT)
    start = time.monotonic()
    result = torchrun(str(script), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 left" in result.stdout
    # Rank 0 waited for the busy rank about SHUTDOWN_WAIT_S (3 s here), not its 10 s.
    waited = float(result.stdout.split("rank 0 left after ")[1].split()[0])
    assert 2.5 <= waited < 8, result.stdout
    assert time.monotonic() - start < 90


def test_shard_and_unshard_round_trip():
    items = list(range(7))
    shares = [items[r::3] for r in range(3)]
    assert distributed.unshard(shares) == items
