"""Keeping freed memory in the process while a model trains (models/host_memory.py), observed through
glibc's own accounting of the blocks it maps."""

import ctypes

import pytest
import torch

from refit.models import host_memory
from refit.models.host_memory import kept_host_memory


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@pytest.fixture
def mapped_bytes():
    libc = host_memory._glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("the C library is not glibc 2.33 or later")
    libc.mallinfo2.restype = _MallInfo2
    return lambda: libc.mallinfo2().hblkhd


BLOCK = 48 * 2**20 // 4  # floats: a 48 MB block, above glibc's largest mmap threshold (32 MB)


def test_a_large_block_comes_from_the_heap_while_held_and_is_mapped_again_after(mapped_bytes):
    before = mapped_bytes()
    block = torch.empty(BLOCK)
    assert mapped_bytes() - before >= BLOCK * 4  # glibc's default: a block this large is mapped
    del block
    with kept_host_memory() as held:
        assert held == "kept"
        before = mapped_bytes()
        for _ in range(3):  # each step's buffer, freed and asked for again
            block = torch.empty(BLOCK).fill_(1.0)
            assert mapped_bytes() - before < BLOCK * 4
            del block
    before = mapped_bytes()
    block = torch.empty(BLOCK)
    assert mapped_bytes() - before >= BLOCK * 4  # the defaults are back
    del block


def test_nested_holds_keep_the_memory_until_the_last_one_leaves(mapped_bytes):
    with kept_host_memory() as outer:
        with kept_host_memory() as inner:
            assert (outer, inner) == ("kept", "kept")
        before = mapped_bytes()
        block = torch.empty(BLOCK)
        assert mapped_bytes() - before < BLOCK * 4  # the outer hold still stands
        del block
    with kept_host_memory(enabled=False) as off:
        assert off == "system"
        before = mapped_bytes()
        block = torch.empty(BLOCK)
        assert mapped_bytes() - before >= BLOCK * 4
        del block
