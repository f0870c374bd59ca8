"""The mean of each group of rows of a table: STTM's temporal merge, in one pass over the members on a GPU.

Group g holds the rows ``members[bounds[g]:bounds[g + 1]]`` of ``table``; its mean is their sum, accumulated in
float32 (float64 for a float64 table) in the order given, divided by ``divisors[g]`` and rounded once to the table's
dtype. On CUDA (with Triton) one program per group and block of channels reads each member row once. Elsewhere the
members are gathered, widened and added up with ``index_add_``, which on the CPU adds in the order given, so both
give the same numbers.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton comes with CUDA builds of torch; without it every device takes the torch path
    triton = None

#: channels per Triton program.
CHANNEL_BLOCK = 1024


def group_means(
    table: torch.Tensor, members: torch.Tensor, bounds: torch.Tensor, divisors: torch.Tensor
) -> torch.Tensor:
    """[G, C] the groups' means of rows of ``table`` [R, C]: ``members`` [M] row indexes grouped, ``bounds`` [G + 1]
    each group's first member and the end (entries of ``members`` past it are read by no group), ``divisors`` [G]
    (see the module docstring)."""
    if table.is_cuda and triton is not None and table.dtype != torch.float64:
        return triton_group_means(table, members, bounds, divisors)
    return torch_group_means(table, members, bounds, divisors)


def torch_group_means(
    table: torch.Tensor, members: torch.Tensor, bounds: torch.Tensor, divisors: torch.Tensor
) -> torch.Tensor:
    num_groups, channels = len(bounds) - 1, table.shape[1]
    # each entry's group; entries past the last group's end (a padded ``members``) go to a spare row
    group = torch.searchsorted(bounds[1:], torch.arange(len(members), device=table.device), right=True)
    wide = torch.promote_types(table.dtype, torch.float32)
    sums = table.new_zeros(num_groups + 1, channels, dtype=wide).index_add_(0, group, table[members].to(wide))
    sums = sums[:num_groups]
    return (sums / divisors[:, None]).to(table.dtype)


def triton_group_means(
    table: torch.Tensor, members: torch.Tensor, bounds: torch.Tensor, divisors: torch.Tensor
) -> torch.Tensor:
    num_groups, channels = len(bounds) - 1, table.shape[1]
    table = table.contiguous()
    means = table.new_empty(num_groups, channels)
    grid = (num_groups, triton.cdiv(channels, CHANNEL_BLOCK))
    _group_means_kernel[grid](table, members, bounds, divisors, means, channels, BLOCK=CHANNEL_BLOCK)
    return means


if triton is not None:

    @triton.jit
    def _group_means_kernel(table, members, bounds, divisors, means, channels, BLOCK: tl.constexpr):
        group = tl.program_id(0)
        columns = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = columns < channels
        total = tl.zeros([BLOCK], dtype=tl.float32)
        member, end = tl.load(bounds + group), tl.load(bounds + group + 1)
        while member < end:  # not range(): Triton 3.6's interpreter cannot take loaded bounds there under numpy 2
            row = tl.load(members + member).to(tl.int64)
            total += tl.load(table + row * channels + columns, mask=inside).to(tl.float32)
            member += 1
        mean = tl.math.div_rn(total, tl.load(divisors + group).to(tl.float32))
        tl.store(
            means + group.to(tl.int64) * channels + columns,
            mean.to(means.dtype.element_ty, fp_downcast_rounding="rtne"),
            mask=inside,
        )
