"""Which launcher starts the worker ranks, by where we run: inside a Ray
placement group (a Serve replica with ``placement_group_bundles``) -> Ray
actors, one per bundle (launch_ray.py); anywhere else (CLI, tests) ->
``torch.multiprocessing`` spawn children (launcher.py ProcessLauncher).
"""

from __future__ import annotations

import sys

from swiftinfer_core.parallel.launcher import ProcessLauncher, WorkerLauncher


def current_placement_group():
    """The Ray placement group this process runs in, or None (without importing or starting Ray)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    from ray.util import get_current_placement_group

    return get_current_placement_group()


def choose_launcher() -> WorkerLauncher:
    pg = current_placement_group()
    if pg is None:
        return ProcessLauncher()
    from swiftinfer_core.parallel.launch_ray import RayLauncher

    return RayLauncher(pg)
