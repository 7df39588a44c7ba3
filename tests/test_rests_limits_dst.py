"""An RPH rest ends at the next real hour even across a daylight-saving fall-back in limit_zone
(30 minutes later, not 90), and a spring-forward or a zone without DST changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from silicon_pool.limits import rest_until


@pytest.mark.parametrize(
    ("zone", "now_utc", "next_hour_utc"),
    [
        ("Europe/Berlin", datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 25, 1, 0, tzinfo=UTC)),
        ("America/New_York", datetime(2026, 11, 1, 5, 30, tzinfo=UTC), datetime(2026, 11, 1, 6, 0, tzinfo=UTC)),
        # the second pass of the repeated hour, and an ordinary hour, already work
        ("Europe/Berlin", datetime(2026, 10, 25, 1, 30, tzinfo=UTC), datetime(2026, 10, 25, 2, 0, tzinfo=UTC)),
        ("Asia/Shanghai", datetime(2026, 12, 1, 5, 47, tzinfo=UTC), datetime(2026, 12, 1, 6, 0, tzinfo=UTC)),
    ],
)
def test_rph_rest_ends_at_the_next_real_hour_across_a_fall_back(
    zone: str, now_utc: datetime, next_hour_utc: datetime
) -> None:
    until = rest_until("RPH", now_utc.timestamp(), day_zone=ZoneInfo(zone), cooldown=30)
    assert until == next_hour_utc.timestamp()
