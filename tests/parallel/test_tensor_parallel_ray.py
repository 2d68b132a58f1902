"""Under Ray, rank 0 in an actor of a STRICT_PACK placement group (as a Serve
replica with ``placement_group_bundles``) starts its other rank as a Ray actor
in bundle 1, and the TP=2 engine gives TP=1's logits. CPU bundles, gloo.
"""

from __future__ import annotations

import pytest

from tp_helpers import assert_probe_close

pytestmark = pytest.mark.slow


def _rank0_class():
    """Defined in a function so cloudpickle ships it by value (Ray workers cannot import test modules)."""

    class _Rank0:
        """Rank 0 as a Ray actor: the same engine_runner call EngineCore makes."""

        def probe(self, cfg_kwargs: dict):
            import torch

            from swiftinfer_core.config import EngineConfig
            from swiftinfer_core.engine.engine_model import engine_runner

            torch.set_num_threads(1)
            _, runner = engine_runner(EngineConfig(**cfg_kwargs))
            try:
                launcher = runner.driver.launcher
                ids = list(range(300, 350))
                out = [runner.forward(ids, [1], [0], [len(ids)], None)]
                for i in range(3):
                    out.append(runner.forward([400 + i], [1], [len(ids) + i], [1], [0]))
                return type(launcher).__name__, sorted(launcher.actors), out
            finally:
                runner.close()

    return _Rank0


def test_tensor_parallel_ray_actor_ranks_match_tp1(reference):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    from tp_helpers import tp_config

    own = not ray.is_initialized()
    if own:  # otherwise share the session's cluster (tests/deployments); 0.01-CPU bundles fit beside it
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    pg = placement_group([{"CPU": 0.01}, {"CPU": 0.01}], strategy="STRICT_PACK")
    try:
        ray.get(pg.ready(), timeout=120)
        actor = ray.remote(_rank0_class()).options(
            num_cpus=0.01, scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0),
        ).remote()
        cfg = tp_config(2).model_dump(mode="json")
        launcher, ranks, logits = ray.get(actor.probe.remote(cfg), timeout=300)
        assert launcher == "RayLauncher" and ranks == [1]
        assert_probe_close(logits, reference[1])
        ray.kill(actor)
    finally:
        remove_placement_group(pg)
        if own:
            ray.shutdown()
