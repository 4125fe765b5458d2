"""One torch thread per test process: the suite's time then depends little on what else runs on the machine
(with two threads per process and another process on the cores, single tests slowed down 100-fold)."""

import torch

torch.set_num_threads(1)
