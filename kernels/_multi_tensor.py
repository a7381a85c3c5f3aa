"""Multi-tensor launch tables: one Triton launch updates a whole list of tensors.

Each program handles BLOCK elements of one tensor. Two int64 tables map a program to its tensor
and start offset; a third holds the raw data pointers of every array of every tensor, which the
kernel casts back to typed pointers. The block tables depend only on the tensor sizes and are
cached; the pointer table is cached by the pointers themselves (grads move between steps when
`zero_grad(set_to_none=True)` frees them, parameters and optimizer state do not).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

_CACHE_SIZE = 32
_block_cache: OrderedDict = OrderedDict()
_pointer_cache: OrderedDict = OrderedDict()


def _remember(cache: OrderedDict, key, make):
    value = cache.get(key)
    if value is None:
        value = make()
        cache[key] = value
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return value


def block_tables(
    numels: tuple[int, ...], block: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(numels, block_tensor, block_start) int64 tensors on `device` for a launch over `numels`."""

    def make():
        sizes = torch.tensor(numels, dtype=torch.int64)
        nblocks = (sizes + block - 1) // block
        tensor_of_block = torch.repeat_interleave(torch.arange(len(numels)), nblocks)
        first_block = torch.cumsum(nblocks, 0) - nblocks
        start = (torch.arange(int(nblocks.sum())) - first_block[tensor_of_block]) * block
        return sizes.to(device), tensor_of_block.to(device), start.to(device)

    return _remember(_block_cache, (numels, block, str(device)), make)


def pointer_table(arrays: list[list[torch.Tensor | None]], device: torch.device) -> torch.Tensor:
    """int64 [n_tensors, n_arrays] table of data pointers; a missing array (None) is 0."""
    rows = tuple(
        tuple(0 if t is None else t.data_ptr() for t in per_tensor) for per_tensor in arrays
    )
    return _remember(
        _pointer_cache,
        (rows, str(device)),
        lambda: torch.tensor(rows, dtype=torch.int64).to(device),
    )
