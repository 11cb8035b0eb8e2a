"""The end of a data directory's WAL from pg_waldump's last record: parsing and page arithmetic.

The same numbers are checked against PostgreSQL's own recovery in tests/integration/test_walend.py.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent import walend

PAGE, SEGMENT = 8192, 16 * 1048576

LINE = (
    b"rmgr: Transaction len (rec/tot):     34/    34, tx:        724, lsn: 0/18468270, prev 0/184680F0, "
    b"desc: COMMIT 2026-12-07 01:27:51.152198 UTC"
)
CONTROLDATA = """\
Latest checkpoint's REDO location:    0/151E890
Latest checkpoint's TimeLineID:       3
WAL block size:                       8192
Bytes per WAL segment:                16777216
"""


def test_a_record_line_gives_its_start_and_length() -> None:
    assert walend.last_record(LINE) == (0x18468270, 34)
    assert walend.last_record(b"pg_waldump: error: error in WAL record at 0/1: invalid record length") is None
    assert walend.last_record(b"") is None


def test_the_layout_comes_from_pg_controldata() -> None:
    assert walend.layout(CONTROLDATA) == walend.WalLayout(0x151E890, 3, PAGE, SEGMENT)


def test_a_record_inside_a_page_ends_aligned() -> None:
    assert walend.record_end(0x18468270, 34, PAGE, SEGMENT) == 0x18468298
    assert walend.end_from_dump(LINE, walend.layout(CONTROLDATA)) == 0x18468298


def test_a_record_across_pages_skips_each_page_header() -> None:
    # 100 bytes before the page boundary, 300 bytes long: 200 continue after a 24-byte header.
    assert walend.record_end(PAGE - 100, 300, PAGE, SEGMENT) == PAGE + 24 + 200
    # Across a segment boundary the header is the long one (40 bytes).
    assert walend.record_end(SEGMENT - 100, 300, PAGE, SEGMENT) == SEGMENT + 40 + 200
    # A record filling its page exactly ends at the boundary, no header counted.
    assert walend.record_end(PAGE - 96, 96, PAGE, SEGMENT) == PAGE


@given(start=st.integers(0, 2**40).map(lambda n: n // 8 * 8), length=st.integers(24, 3 * PAGE))
def test_the_end_is_past_every_byte_of_the_record_and_no_further_than_its_headers(start: int, length: int) -> None:
    if start % PAGE < 24:  # records never start inside a page header
        start += 40
    end = walend.record_end(start, length, PAGE, SEGMENT)
    pages_crossed = end // PAGE - start // PAGE
    assert end % 8 == 0
    assert start + length <= end <= start + length + pages_crossed * 40 + 7
