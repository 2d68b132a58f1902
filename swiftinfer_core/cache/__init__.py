from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.cache.pool import KVPool, SlotAllocator

__all__ = ["StreamLayout", "KVPool", "SlotAllocator"]
