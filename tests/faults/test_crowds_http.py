"""200 concurrent API clients on a real `soar run` fed the real SBS capture (issue #18.7).

The issue measured 31 of them dropped and `/healthz` taking up to 56 s. Here every request must
get a complete answer, none a 5xx, and `/healthz` must keep answering beside them. How fast it
answers is a timing and belongs to `soar bench crowds` (`soar.bench.crowds`, same crowd); what
is asserted is what cannot depend on how busy the machine is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from soar.bench.crowds import API_PATHS, CLIENTS, crowd, http_get, percentile, running_soar
from tests.faults.faultkit import fix_count, wait_for


@pytest.mark.time_limit(480)
async def test_200_api_clients_all_answered_and_health_answered_beside_them(
    testdata: Path, db_url: str, tmp_path: Path
) -> None:
    async with running_soar(db_url, testdata, tmp_path / "var") as (host, port):
        await wait_for(lambda: fix_count(db_url) > 0, 120, "the first fixes to be stored")
        for path in API_PATHS:  # each path answers on its own (else the crowd tests nothing)
            assert (await http_get(host, port, path))[0] == 200, path
        result = await crowd(host, port, clients=CLIENTS, requests_each=2)
        assert not result.dropped, f"{len(result.dropped)} dropped, e.g. {result.dropped[:3]}"
        assert result.statuses == {200: CLIENTS * 2}, result.statuses
        assert result.health_ms, "/healthz was never answered while the crowd ran"
        # not a bound: the figure for the log (the bench compares it with its baseline)
        print(f"/healthz beside {CLIENTS} API clients: {len(result.health_ms)} probes, "
              f"p50 {percentile(result.health_ms, 50):.0f} ms, "
              f"p99 {percentile(result.health_ms, 99):.0f} ms, crowd {result.seconds:.1f} s")
        assert (await http_get(host, port, "/healthz"))[0] == 200
