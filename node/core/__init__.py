"""Pure logic. Nothing here imports asyncio, aiohttp, pysyncobj, wasmtime, os, time or random:
time and randomness are parameters, and I/O belongs to the shells around this package
(tests/unit/test_core_purity.py enforces it)."""
