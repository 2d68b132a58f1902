"""One rank's model on its cache, below both engine/ and parallel/.

rank_config.py  RankConfig: what a rank builds from (plain values, picklable, no pydantic)
resolve.py      EngineConfig -> RankConfig, once on rank 0 (device, dtype, layout, model folder)
build.py        build_rank: model, weights, KV pool, attention -> ModelRunner (every path)
weights.py      where weights come from: checkpoint (whole or per slice), random, seeded
kv_slots.py     how many cache slots fit (free memory, shared GPUs)
model_runner.py ModelRunner: packed forward over the cache, graph capture
cuda_graph.py   decode steps replayed from CUDA graphs (one per batch-size rung)
piecewise.py    mixed/prefill steps as graphs between attention calls
"""
