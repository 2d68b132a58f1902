"""Tensor parallelism for one engine over ``tp_size`` ranks on one host.

plan.py      which heads / KV heads / MLP rows each rank holds (ShardPlan per rank)
groups.py    the ctrl (gloo) and model (gloo / NCCL) communicators, timeouts
message.py   the step message rank 0 broadcasts before every model call
worker.py    ranks 1..tp-1: join, build the shard (runner/build.py), replay rank 0's steps
launcher.py  how workers start, and spawn children (the default)
launch_ray.py  Ray actors in the replica's placement group
placement.py which of the two, by where we run
driver.py    rank 0: start everything, mirror each model call, fail loudly, shut down
watch.py     GPU: abort NCCL when a worker dies or a step overruns (graph replays have no watchdog)
tp_runner.py TPRunner: ModelRunner's surface over the driver (EngineCore is unchanged)

The model code stays single-device: Llama reads its ShardPlan and all-reduces
after the row-parallel wo and w2; everything distributed lives here.
"""
