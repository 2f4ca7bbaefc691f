"""Data stage: readers → formats → check → clean → split → tokenize → batching.

`tunesmith.data.check(path)` and `tunesmith.data.clean(path, out, options)` mirror the CLI verbs. They are
imported here, not wrapped: a wrapper named like its submodule would be replaced by the module object the
first time the submodule is imported. Both modules are light (no torch), so `import tunesmith` stays fast.
"""

from __future__ import annotations

from tunesmith.data.check import check
from tunesmith.data.clean import CleanOptions, clean

__all__ = ["CleanOptions", "check", "clean"]
