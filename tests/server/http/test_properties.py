"""Property-based: schemathesis generates requests from the served OpenAPI document (valid ones
and deliberately invalid ones) and no input may make the server answer 5xx."""
from __future__ import annotations

import asyncio

from tests.server.http.conftest import app_config, http_serving

EXAMPLES = 40  # per generation mode; bounded so the run takes seconds with the tiny model
PROMPTS = [None, "a red circle", "a small blue square in the top left", "黄色背景上的绿色三角形"]


def fuzz(base: str) -> list[str]:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    seen: list[str] = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=schema.as_strategy(generation_mode=mode), prompt=st.sampled_from(PROMPTS))
        def check(case, prompt):
            if mode == GenerationMode.POSITIVE and isinstance(case.body, dict) and prompt:
                case.body["prompt"] = prompt  # random text is mostly words it never saw: reach the engine too
            checks = [not_a_server_error, status_code_conformance]
            if case.operation.path != "/v1/generate:stream":  # an event stream has no JSON body to check
                checks.append(response_schema_conformance)
            response = case.call_and_validate(base_url=base, checks=checks, timeout=60)
            seen.append(f"{mode} {case.method} {case.path} {response.status_code}")
        check()
    return seen


async def test_no_generated_request_gets_a_server_error(tiny_model_dir):
    config = app_config(tiny_model_dir, limits={"max_num_images": 2, "max_num_candidates": 4})
    async with http_serving(config) as (server, _):
        seen = await asyncio.to_thread(fuzz, f"http://127.0.0.1:{server.http_port}")
    generated = [line for line in seen if "/v1/generate" in line]
    assert sum(line.endswith(" 200") for line in generated) >= 5  # images were made from generated input
    assert sum(line.endswith(" 400") for line in generated) >= 5  # and bad input was refused
    paths = {line.split(" ")[2] for line in seen}
    assert {"/v1/generate", "/v1/generate:stream"} <= paths
