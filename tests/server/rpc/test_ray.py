"""mode: ray on a Ray cluster of a head and two worker nodes, all on this machine
(ray.cluster_utils.Cluster): `sample` and `decode` run as actors on the worker nodes,
which alone carry the custom resource they require. Removing a worker node under load
loses no request and changes no image; the replaced actors serve afterwards."""
from __future__ import annotations

import asyncio
import os

import pytest

# CI installs the ray extra and must exercise this path: there, a Ray that is missing or
# cannot start its cluster fails the run. At a desk it skips, saying why.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(why: str):
    if IN_CI:
        pytest.fail(f"{why} (CI=true: mode: ray must be tested, not skipped)", pytrace=False)
    pytest.skip(why)


try:
    import ray
    from ray.cluster_utils import Cluster
except ImportError as exc:  # the ray extra is not installed
    if IN_CI:
        raise ImportError(f"CI=true but ray does not import ({exc}): pip install -e '.[ray]'") from exc
    pytest.skip(f"ray is not installed: {exc}", allow_module_level=True)

from tessera.server.config import AppConfig  # noqa: E402
from tests.server.rpc.conftest import raw_config, serving  # noqa: E402
from tests.server.rpc.test_supervision import _load  # noqa: E402

MiB = 1024 * 1024
# Small enough for a 2-core CI machine: actors ask for no CPU (torch still uses the cores),
# and each node keeps a small object store.
NODE = {"num_cpus": 1, "object_store_memory": 80 * MiB}
RESOURCE = "tessera_test_worker"


@pytest.fixture(scope="module")
def cluster():
    # A loaded machine can take longer than Ray's default 30 s to bring its GCS up.
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "180")
    try:
        c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    except RuntimeError as exc:  # a machine too loaded for Ray's start-up waits: say so, loudly
        unavailable(f"Ray could not start a cluster on this machine: {exc}")
    nodes = [c.add_node(**NODE, resources={RESOURCE: 2}) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def ray_config(model_dir, address: str) -> AppConfig:
    raw = raw_config(model_dir, metrics_port=-1, http_port=-1)
    raw["graph"]["ray_address"] = address
    for op in ("sample", "decode"):
        raw["graph"]["ops"][op].update(mode="ray", ray_actor_options={"num_cpus": 0, "resources": {RESOURCE: 1}})
    # One sampler actor, as deploy/ray.yaml has: the node that is left must hold every
    # replaced actor (two units of the resource), and the shipped second sampler worker is a
    # choice for a CPU's threads.
    raw["graph"]["ops"]["sample"]["concurrency"] = 1
    return AppConfig.from_dict(raw)


def test_in_ci_a_ray_that_cannot_start_fails_instead_of_skipping(monkeypatch):
    for ci, outcome in ((True, pytest.fail.Exception), (False, pytest.skip.Exception)):
        monkeypatch.setitem(globals(), "IN_CI", ci)
        with pytest.raises(outcome, match="could not start"):
            unavailable("Ray could not start a cluster on this machine: timed out")


@pytest.mark.slow
async def test_losing_a_worker_node_loses_no_request_and_changes_no_image(tiny_model_dir, cluster):
    c, nodes = cluster
    async with serving(ray_config(tiny_model_dir, c.address)) as (server, client):
        engine = server.engine
        sampler, decoder = engine.stages["sample"].workers[0], engine.stages["decode"].workers[0]
        undisturbed = await _load(client)
        node_ids = {n.node_id: n for n in nodes}
        doomed = node_ids[sampler.node_id]  # the node that holds the sampler's actor
        streamed = asyncio.Event()
        load = asyncio.ensure_future(_load(client, streamed))
        await streamed.wait()  # rows are in the sampler's running batch, on that node
        await asyncio.get_running_loop().run_in_executor(None, c.remove_node, doomed)
        disturbed = await load
        assert disturbed == undisturbed  # every request OK, byte-identical images
        assert sampler.node_id != doomed.node_id  # re-created on the node that is left
        reg = engine.metrics.registry
        assert reg.get_sample_value("tessera_op_worker_restarts_total", {"model": engine.name, "op": "sample"}) >= 1
        assert reg.get_sample_value("tessera_op_live_workers", {"model": engine.name, "op": "sample"}) == 1
        assert engine.serving
        assert await _load(client) == undisturbed  # the replaced actors serve
        assert decoder.node_id != doomed.node_id
