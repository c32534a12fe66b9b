"""The lane encoder of codec/lanes.py as torch tensor operations: the same words and index, on any device.

On a GPU it codes a tensor in a few passes over memory (`unweight compress --device cuda`); on the
CPU the tests hold it to `lanes.encode`, bit for bit. Every symbol is placed at once, without a loop
over lanes or steps:

    place     its block, lane and step from the block layout (runs of `group` neighbours)
    offset    its code's first bit in its lane: a prefix sum of code lengths in lane order
    taken     the decoder holds ceil((offset + ROUND_BITS) / 16) words of the lane by its step, the
              offset of its round's first code (in the lane's exact tail: as many as before the
              tail, or ceil((offset + bits) / 16) if more), so the lane takes words at that step
              when that count grows (0, 1 or 2 a step)
    stream    words stand in the order the lockstep decoder takes them (by step, then by lane):
              a prefix sum of the words taken in that order gives each word its place
    bits      a code touches at most two 16-bit words of its lane: two scatter-adds (the bits of
              different codes never overlap, so adding is or-ing)
"""

from __future__ import annotations

import torch

from .lanes import EXACT_STEPS, LANES, ROUND_BITS, WORD_BITS, UncodedSymbolError, check_group

CHUNK_SYMBOLS = 1 << 24  # symbols coded per pass (whole blocks): bounds the int64 intermediates (~1.5 GB)


def pair_symbols(bits: torch.Tensor, shift: int) -> torch.Tensor:
    """floats.pair_symbols of the weights' bits (int16 or int32) on their device, as int64."""
    field = ((bits.to(torch.int64) & 0xFFFFFFFF) >> shift) & 0xFF
    if field.numel() % 2:
        field = torch.cat([field, field[-1:]])  # an odd count: the last weight pairs with itself
    return field[0::2] | (field[1::2] << 8)


def encode(values: torch.Tensor, codes: torch.Tensor, lengths: torch.Tensor, steps: int,
           group: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """`lanes.encode` of the symbols `values` (pair_symbols) on values' device: (words int16[W], the
    uint16 words' bits; index int64[num_blocks + 1]). codes, lengths: the code of each symbol value."""
    check_group(group, steps)
    codes, lengths = codes.to(values.device, torch.int64), lengths.to(values.device, torch.int64)
    words, index, base = [], [torch.zeros(1, dtype=torch.int64, device=values.device)], 0
    for part in _chunks(values, steps):
        part_words, part_index = _encode_blocks(part, codes, lengths, steps, group)
        words.append(part_words)
        index.append(part_index[1:] + base)
        base += part_words.numel()
    empty = torch.zeros(0, dtype=torch.int16, device=values.device)
    return (torch.cat(words) if words else empty), torch.cat(index)


def block_index(values: torch.Tensor, lengths: torch.Tensor, steps: int, group: int = 1) -> torch.Tensor:
    """`lanes.block_index` on values' device: the index `encode` returns, without the words."""
    check_group(group, steps)
    lengths = lengths.to(values.device, torch.int64)
    index, base = [torch.zeros(1, dtype=torch.int64, device=values.device)], 0
    for part in _chunks(values, steps):
        place = _Placement(part, lengths, steps, group)
        index.append(place.block_ends + base)
        base += int(place.block_ends[-1])
    return torch.cat(index)


def _chunks(values: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """values cut into the whole blocks (bar the last) of one pass each (CHUNK_SYMBOLS)."""
    block_size = LANES * steps
    chunk = max(1, CHUNK_SYMBOLS // block_size) * block_size
    return [values[start : start + chunk] for start in range(0, values.numel(), chunk)]


class _Placement:
    """Where every symbol of a run of whole blocks (bar a tensor's last) goes: its lane, its bits'
    offset in the lane, the step at which its lane takes a word, and that word's place in the stream."""

    def __init__(self, values: torch.Tensor, lengths: torch.Tensor, steps: int, group: int):
        device, n = values.device, values.numel()
        block_size = LANES * steps
        num_blocks = -(-n // block_size)
        self.symbols = values.to(torch.int64) & 0xFFFF
        self.bits = lengths[self.symbols]
        i = torch.arange(n, device=device)
        block = i // block_size
        at = i - block * block_size                            # offset in the block
        counts = torch.full((num_blocks,), block_size, dtype=torch.int64, device=device)
        counts[-1] = n - (num_blocks - 1) * block_size
        run = torch.where(counts % (group * LANES) == 0, group, 1)[block]  # a partial last block: group 1
        step = at // (run * LANES) * run + at % run
        lane = at % (run * LANES) // run
        # lane-major order: lane by lane, each lane's symbols by step
        lane_id = block * LANES + lane
        lane_symbols = torch.bincount(lane_id, minlength=num_blocks * LANES)
        lane_start = torch.cumsum(lane_symbols, 0) - lane_symbols
        in_lane = lane_start[lane_id] + step
        bits_lane_major = torch.zeros(n, dtype=torch.int64, device=device).index_copy_(0, in_lane, self.bits)
        bit_end = torch.cumsum(bits_lane_major, 0)
        lane_bit_start = (bit_end - bits_lane_major)[lane_start.clamp(max=max(n - 1, 0))]
        self.offset = (bit_end - bits_lane_major)[in_lane] - lane_bit_start[lane_id]  # first bit in the lane
        # words of the lane the decoder holds by this step, and how many it takes at this step: enough for
        # ROUND_BITS from its round's first code (at a round's second step, the code before it); in the
        # lane's exact tail, only as many as its codes need, and no fewer than it held before the tail
        offset_lane_major = torch.zeros(n, dtype=torch.int64, device=device).index_copy_(0, in_lane, self.offset)
        round_offset = torch.where(step % 2 == 1, offset_lane_major[(in_lane - 1).clamp(min=0)], self.offset)
        held = (round_offset + ROUND_BITS + WORD_BITS - 1) // WORD_BITS
        held_lane_major = torch.zeros(n, dtype=torch.int64, device=device).index_copy_(0, in_lane, held)
        num = lane_symbols[lane_id]
        before_tail = lane_start + lane_symbols - EXACT_STEPS - 1  # the lane's last step before its tail
        held_before_tail = torch.where(lane_symbols > EXACT_STEPS,
                                       held_lane_major[before_tail.clamp(min=0, max=max(n - 1, 0))], 0)
        exact = step >= num - EXACT_STEPS
        own = (self.offset + self.bits + WORD_BITS - 1) // WORD_BITS
        self.held = torch.where(exact, torch.maximum(own, held_before_tail[lane_id]), held)
        held_lane_major = torch.zeros(n, dtype=torch.int64, device=device).index_copy_(0, in_lane, self.held)
        before = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), held_lane_major[:-1]])
        before[lane_start[lane_symbols > 0]] = 0               # a lane's first step holds no word before it
        self.taken = (held_lane_major - before)[in_lane]       # 0, 1 or 2
        # the stream: by block, then step, then lane
        order = block * block_size + step * LANES + lane
        flags = torch.zeros(num_blocks * block_size, dtype=torch.int64, device=device).index_copy_(0, order, self.taken)
        place = torch.cumsum(flags, 0) - flags
        self.stream_at = place[order]                          # where the word taken at this step goes
        self.block_ends = (place + flags).view(num_blocks, block_size)[:, -1]
        lane_words = torch.zeros(num_blocks * LANES, dtype=torch.int64, device=device).index_add_(0, lane_id,
                                                                                               self.taken)
        self.lane_word_start = (torch.cumsum(lane_words, 0) - lane_words)[lane_id]
        self.num_words = int(lane_words.sum())


def _encode_blocks(values, codes, lengths, steps, group) -> tuple[torch.Tensor, torch.Tensor]:
    place = _Placement(values, lengths, steps, group)
    device = values.device
    if bool((place.bits == 0).any()):
        raise UncodedSymbolError("a symbol to encode has no code (code lengths from other data?)")
    # each lane's words, lane after lane: a code's bits, MSB-first, go to the words its span touches
    shifted = codes[place.symbols] << (32 - place.bits - place.offset % WORD_BITS)
    first = place.lane_word_start + place.offset // WORD_BITS
    lane_words = torch.zeros(place.num_words + 1, dtype=torch.int64, device=device)
    lane_words.index_add_(0, first, shifted >> WORD_BITS)
    lane_words.index_add_(0, first + 1, shifted & 0xFFFF)   # 0 unless the code crosses into the next word
    # the stream: the words a lane takes at a step are its (held - taken)-th to (held - 1)-th
    stream = torch.zeros(place.num_words, dtype=torch.int64, device=device)
    first_taken = place.lane_word_start + place.held - place.taken
    for k in range(2):
        taken = place.taken > k
        stream[place.stream_at[taken] + k] = lane_words[(first_taken + k)[taken]]
    index = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), place.block_ends])
    return stream.to(torch.int32).view(torch.int16)[0::2].contiguous(), index
