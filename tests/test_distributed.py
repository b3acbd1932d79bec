"""assign_batch_codes under torch.distributed: the ranks solve the global batch once."""

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qkernels.losses import assign_batch_codes


def _rank(rank, world, init_file, activations, labels, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        part = slice(rank, None, world)  # interleaved shards: classes split across ranks
        codes, mask = assign_batch_codes(activations[part], labels[part], 2, penalty=0.5)
        torch.save({"codes": codes, "mask": mask}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_get_the_codes_of_the_global_batch(tmp_path):
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 9, 40))
    labels[-1] = 11  # a class that only one rank holds
    activations = torch.from_numpy(rng.standard_normal((40, 12)))
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), activations, labels, str(tmp_path)),
             nprocs=2, join=True)
    whole = assign_batch_codes(activations, labels, 2, penalty=0.5)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(got["codes"], whole.codes[rank::2])
        assert torch.equal(got["mask"], whole.mask[rank::2])
