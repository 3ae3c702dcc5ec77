"""What /metrics says about itself: help texts that match what is counted, the docs routes
under their own route label, and the refusal counters present (at 0) before any event."""

from __future__ import annotations

import ast
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from service.telemetry.metrics import DEADLINE_STAGES, REJECTION_REASONS
from tests.service.http.conftest import serve

DOC_ROUTES = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")


async def _families() -> dict[str, object]:
    async with serve() as s:
        for path in DOC_ROUTES:
            assert (await s.client.get(path)).status_code == 200, path
        assert (await s.client.get("/no/such/path")).status_code == 404
        text = (await s.client.get("/metrics")).text
    return {family.name: family for family in text_string_to_metric_families(text)}


async def test_help_texts_say_what_is_counted() -> None:
    families = await _families()
    tokens = families["ff_generated_tokens"].documentation  # type: ignore[attr-defined]
    assert "Tokens" in tokens
    assert "Decoder steps" not in tokens  # jump-forward writes several tokens per pass
    in_flight = families["ff_in_flight_requests"].documentation  # type: ignore[attr-defined]
    assert in_flight.startswith("Images")


async def test_docs_routes_have_their_own_route_label() -> None:
    families = await _families()
    requests = families["ff_requests"]
    counted = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in requests.samples  # type: ignore[attr-defined]
        if s.name == "ff_requests_total"
    }
    for path in DOC_ROUTES:
        assert counted[(path, "200")] == 1.0, path
    assert counted[("unmatched", "404")] == 1.0
    assert ("unmatched", "200") not in counted


async def test_refusal_counters_start_at_zero() -> None:
    families = await _families()
    for name, label, known in (
        ("ff_rejections", "reason", REJECTION_REASONS),
        ("ff_deadline_drops", "stage", DEADLINE_STAGES),
    ):
        samples = {
            s.labels[label]: s.value
            for s in families[name].samples  # type: ignore[attr-defined]
            if s.name == f"{name}_total"
        }
        assert samples == dict.fromkeys(known, 0.0), name


def test_known_stages_are_the_ones_reported() -> None:
    """Every stage the serving layer and the engine core report a deadline drop at is
    zero-initialised."""
    service = Path(__file__).parents[3] / "service"
    sources = [*(service / "serving").glob("*.py"), *(service / "engine_core").glob("*.py")]
    assert sources
    reported = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and _reports_a_drop(node):
                reported |= {
                    a.value
                    for a in node.args
                    if isinstance(a, ast.Constant) and isinstance(a.value, str)
                }
    assert reported == set(DEADLINE_STAGES)


def _reports_a_drop(call: ast.Call) -> bool:
    """``x.deadline_drop("stage")``, ``self._expire(p, "stage")``, or the batchers' guarded
    form ``self._notify(self._observer.deadline_drop, "stage")``."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr in ("deadline_drop", "_expire"):
        return True
    return func.attr == "_notify" and any(
        isinstance(a, ast.Attribute) and a.attr == "deadline_drop" for a in call.args
    )
