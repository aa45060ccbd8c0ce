"""Why bf16 training with the clustered softmax took three times its memory: glibc heap
statistics, resident memory and the number of distinct rare-row counts, every 50 steps.

The model and batches of `rnnlm train`'s defaults on a large vocabulary (2x256 LSTM, tied,
33,278 word types drawn with Zipf's law, the head chosen as training chooses it, 20 streams
of 35 words, bf16 autocast); whichever rnnlm package comes first on PYTHONPATH is measured, so
the code before a change can be compared with the code after it:

    PYTHONPATH=/tmp/before20 python benchmarks/train_memory_cause.py bf16 200
    PYTHONPATH=. python benchmarks/train_memory_cause.py bf16 200

`in-use` is what malloc has handed out and not taken back (live tensors among it); `free in
heap` is memory the heap holds for reuse but has not returned to the system. Growth of the
second while the first stays flat is fragmentation, not tensors kept alive.
"""

from __future__ import annotations

import collections
import ctypes
import resource
import sys
import time

import numpy as np
import torch

from rnnlm.model import ModelConfig, RNNLanguageModel
from rnnlm.defaults import clustered_softmax_head


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20


def main() -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    precision, steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    vocab = 33278
    p = 1 / np.arange(1, vocab + 1)
    stream = rng.choice(vocab, 2_000_000, p=p / p.sum())
    head = clustered_softmax_head(stream, vocab, 256)
    model = RNNLanguageModel(ModelConfig(vocab, embedding_size=256, hidden_size=256, softmax_head=head))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    rare_counts: collections.Counter[int] = collections.Counter()
    print(f"precision={precision} head={head} rare share={np.mean(stream >= head):.3f}", flush=True)
    started = time.time()
    for step in range(steps):
        starts = rng.integers(0, len(stream) - 36, 20)
        x = torch.from_numpy(np.stack([stream[i:i + 35] for i in starts]))
        y = torch.from_numpy(np.stack([stream[i + 1:i + 36] for i in starts]))
        rare_counts[int((y >= head).sum())] += 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            log_probs = model(x, targets=y).target_log_probs
        loss = -log_probs.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            m = libc.mallinfo2()
            print(f"step {step:4d} t={time.time() - started:5.0f}s rss={rss_mb():6.0f}MB heap(arena)={m.arena / 2**20:6.0f}MB "
                  f"in-use={m.uordblks / 2**20:5.0f}MB free-in-heap={m.fordblks / 2**20:6.0f}MB mmapped={m.hblkhd / 2**20:5.0f}MB "
                  f"distinct rare-row counts so far={len(rare_counts)}", flush=True)
    print(f"peak rss (ru_maxrss) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
