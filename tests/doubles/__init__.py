"""Storage test doubles: backends that only tests use, and the schemes that make the command line
open them (registered through `fsbackup.backends.register_scheme`, never built into the package).

  memory.py   MemoryBackend: objects in a dict; `memory://NAME` once `memory.register()` ran
  faults.py   FaultyBackend: a wrapper that injects failures and damaged downloads
  b2sim.py    b2sdk's in-memory B2: `b2://` URLs reach it once `b2sim.use_simulator()` ran
"""
