"""Worker ranks as Ray actors in the Serve replica's placement group.

The replica (rank 0) holds bundle 0; rank r is an actor pinned to bundle r
with exactly that bundle's resources (``[{"CPU": c, "GPU": 1}] + [{"GPU": 1}] *
(tp - 1)`` from deployments/app/builder.py), so Ray gives it its own GPU as device 0.
The group must be STRICT_PACK: the ranks talk over 127.0.0.1. Actors are owned
by the replica, so they die with it (Ray fate-sharing) as well as on STOP.
"""

from __future__ import annotations

from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.parallel.launcher import WorkerLauncher
from swiftinfer_core.parallel.worker import WorkerSpec, run_worker


class _RankActor:
    def run(self, spec: WorkerSpec) -> None:
        run_worker(spec)  # blocks until STOP (or failure, which becomes the task's error)


class RayLauncher(WorkerLauncher):
    def __init__(self, pg):
        import ray

        self._ray = ray
        self.pg = pg
        strategy = ray.util.placement_group_table(pg).get("strategy")
        if strategy != "STRICT_PACK":
            raise InvalidRequestError(f"tensor parallelism needs a STRICT_PACK placement group (one host); this one is {strategy}")
        self.actors: dict[int, object] = {}
        self.refs: dict[int, object] = {}

    def start(self, specs: list[WorkerSpec]) -> None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        need = max(s.rank for s in specs) + 1
        if self.pg.bundle_count < need:
            raise InvalidRequestError(f"tp_size {need} needs {need} placement-group bundles (one per rank); the replica has {self.pg.bundle_count}")
        actor_cls = self._ray.remote(_RankActor)
        for spec in specs:
            bundle = self.pg.bundle_specs[spec.rank]
            actor = actor_cls.options(
                num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0), max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=spec.rank),
            ).remote()
            self.actors[spec.rank] = actor
            self.refs[spec.rank] = actor.run.remote(spec)

    def failed(self) -> dict[int, str]:
        out = {}
        for rank, ref in self.refs.items():
            ready, _ = self._ray.wait([ref], timeout=0)
            if ready:
                try:
                    self._ray.get(ref)
                    out[rank] = "exited"
                except Exception as exc:  # noqa: BLE001 - the actor's error, reported as text
                    out[rank] = f"{type(exc).__name__}: {str(exc)[-500:]}"
        return out

    def stop(self, timeout_s: float) -> None:
        refs = list(self.refs.values())
        if refs:
            self._ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for actor in self.actors.values():
            self._ray.kill(actor)

    def cuda_index(self, rank: int) -> int:
        return 0  # Ray sets CUDA_VISIBLE_DEVICES to the actor's own GPU
