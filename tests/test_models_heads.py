"""The heteroscedastic head's MC chunking for the released configuration (issue 17, spec §3)."""

from __future__ import annotations

import pytest

from plexbench.models.heads import CHUNK_ELEMENTS, default_chunk_size


@pytest.mark.parametrize("batch, chunk", [
    (32, 43),    # 3 * 32 = 96 rows: floor(2**22 / (96 * 1000)) = floor(43.69)
    (128, 10),   # 384 rows: floor(2**22 / 384,000) = floor(10.92)
    (1, 1000),   # 3 rows: 1398 >= S, so all samples in one chunk
    (2048, 1),   # 6144 rows: 0.68 -> at least one sample per chunk
])
def test_released_head_chunk_sizes(batch, chunk):
    rows = 3 * batch  # E = 3 members share the head
    assert default_chunk_size(1000, rows, 1000) == chunk
    if chunk > 1:
        assert chunk * rows * 1000 <= CHUNK_ELEMENTS < (chunk + 1) * rows * 1000 or chunk == 1000
