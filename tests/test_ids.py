"""Row ids that sort by creation time (UUID version 7)."""

from __future__ import annotations

import time
import uuid

import pytest

from apps.orgs.ids import time_ordered_uuid

pytestmark = pytest.mark.smoke


def test_an_id_is_a_version_7_uuid_that_starts_with_the_milliseconds_it_was_made_in():
    before = time.time_ns() // 1_000_000
    made = time_ordered_uuid()
    after = time.time_ns() // 1_000_000
    assert made.version == 7 and made.variant == uuid.RFC_4122
    assert before <= made.int >> 80 <= after


def test_ids_made_one_after_another_sort_in_that_order():
    made = []
    for _ in range(200):
        made.append(time_ordered_uuid())
        time.sleep(0.000_5)  # more than the sub-millisecond step
    assert made == sorted(made)
    assert len({i.int & ((1 << 62) - 1) for i in made}) == len(made)  # the random tail
