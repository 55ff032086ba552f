"""Compact containers for millions of envelopes, without one object each.

A Python dict costs about 100 bytes per entry once the int key and value
objects are counted; a deque or list of ints about 40.  The scheduler keeps
these instead:

- `IntMap`: an open-addressing hash table from a 64-bit key to a 32-bit slot,
  stored in two `array`s (12 bytes per bucket, load factor at most 0.75,
  the table keeps its peak size until it is empty), linear probing with
  backward-shift deletion so that no tombstones pile up under churn.
- `SlotFifo`: a first-in first-out queue of 32-bit slots in one `array`,
  consumed from a head index and compacted when half of it is dead.

Both hold plain integers; their users keep the meaning (and validity checks)
of a slot.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Final

# Fibonacci hashing (Knuth 6.4) of the key with its high half folded in: an
# evpid is msgid << 32 | low, and multiplying msgid << 32 alone would only
# use the multiplier's low half, which is no golden ratio at all.
_GOLDEN: Final = 0x9E3779B97F4A7C15
_MASK64: Final = 0xFFFFFFFFFFFFFFFF
_MIN_BITS: Final = 4


class IntMap:
    """A map from ints in [0, 2**64) to ints in [0, 2**32 - 1)."""

    __slots__ = ("_bits", "_keys", "_len", "_mask", "_shift", "_vals")

    def __init__(self) -> None:
        self._len = 0
        self._alloc(_MIN_BITS)

    def _alloc(self, bits: int) -> None:
        size = 1 << bits
        self._bits = bits
        self._mask = size - 1
        self._shift = 64 - bits
        self._keys = array("Q", bytes(8 * size))
        # value + 1, so that 0 marks an empty bucket whatever the key
        self._vals = array("I", bytes(4 * size))

    def __len__(self) -> int:
        return self._len

    def _home(self, key: int) -> int:
        return ((((key & 0xFFFFFFFF) ^ (key >> 32)) * _GOLDEN) & _MASK64) >> self._shift

    def get(self, key: int, default: int = -1) -> int:
        keys, vals, mask = self._keys, self._vals, self._mask
        i = ((((key & 0xFFFFFFFF) ^ (key >> 32)) * _GOLDEN) & _MASK64) >> self._shift
        while True:
            v = vals[i]
            if v == 0:
                return default
            if keys[i] == key:
                return v - 1
            i = (i + 1) & mask

    def __contains__(self, key: int) -> bool:
        return self.get(key) != -1

    def set(self, key: int, value: int) -> None:
        """Insert or replace."""
        if (self._len + 1) * 4 > (self._mask + 1) * 3:
            self._resize(self._bits + 1)
        keys, vals, mask = self._keys, self._vals, self._mask
        i = ((((key & 0xFFFFFFFF) ^ (key >> 32)) * _GOLDEN) & _MASK64) >> self._shift
        while True:
            v = vals[i]
            if v == 0:
                keys[i] = key
                vals[i] = value + 1
                self._len += 1
                return
            if keys[i] == key:
                vals[i] = value + 1
                return
            i = (i + 1) & mask

    def pop(self, key: int, default: int = -1) -> int:
        keys, vals, mask = self._keys, self._vals, self._mask
        i = ((((key & 0xFFFFFFFF) ^ (key >> 32)) * _GOLDEN) & _MASK64) >> self._shift
        while True:
            v = vals[i]
            if v == 0:
                return default
            if keys[i] == key:
                break
            i = (i + 1) & mask
        vals[i] = 0
        self._len -= 1
        # Backward-shift deletion (Knuth 6.4 algorithm R): move later members
        # of the probe run into the hole unless their home lies after it.
        shift = self._shift
        j = i
        while True:
            j = (j + 1) & mask
            w = vals[j]
            if w == 0:
                break
            kj = keys[j]
            k = ((((kj & 0xFFFFFFFF) ^ (kj >> 32)) * _GOLDEN) & _MASK64) >> shift
            if (i <= j and i < k <= j) or (i > j and (k > i or k <= j)):
                continue
            keys[i] = keys[j]
            vals[i] = w
            vals[j] = 0
            i = j
        # Never shrink a non-empty table: homes are the hash's top bits, so
        # halving the table doubles the local density wherever survivors
        # cluster (a "remove all" walks in table order and leaves one dense
        # region), and linear probing then degrades to a scan.
        if self._len == 0 and self._bits > _MIN_BITS:
            self._alloc(_MIN_BITS)
        return v - 1

    def _resize(self, bits: int) -> None:
        old_keys, old_vals = self._keys, self._vals
        self._alloc(bits)
        self._len = 0
        for i, v in enumerate(old_vals):
            if v:
                self.set(old_keys[i], v - 1)

    def keys(self) -> Iterator[int]:
        keys = self._keys
        for i, v in enumerate(self._vals):
            if v:
                yield keys[i]

    def items(self) -> Iterator[tuple[int, int]]:
        keys = self._keys
        for i, v in enumerate(self._vals):
            if v:
                yield keys[i], v - 1

    def nbytes(self) -> int:
        return self._keys.buffer_info()[1] * 8 + self._vals.buffer_info()[1] * 4


class SlotFifo:
    """A FIFO of 32-bit slots; entries may be stale, the user checks them."""

    __slots__ = ("_buf", "_head")

    def __init__(self) -> None:
        self._buf = array("I")
        self._head = 0

    def __len__(self) -> int:
        """Entries left, stale ones included."""
        return len(self._buf) - self._head

    def append(self, slot: int) -> None:
        self._buf.append(slot)

    def extend(self, slots: array[int] | list[int]) -> None:
        self._buf.extend(slots)

    def popleft(self) -> int:
        """The oldest entry; IndexError when empty."""
        head = self._head
        buf = self._buf
        if head >= len(buf):
            raise IndexError("pop from an empty SlotFifo")
        slot = buf[head]
        head += 1
        if head >= 4096 and head * 2 >= len(buf):
            del buf[:head]
            head = 0
        elif head == len(buf):
            del buf[:]
            head = 0
        self._head = head
        return slot

    def clear(self) -> None:
        self._buf = array("I")
        self._head = 0
