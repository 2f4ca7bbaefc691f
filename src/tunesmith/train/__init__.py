"""The training engine: loop, kernels, checkpoints, guards.

This package shares its name with the API function `tunesmith.train(config)`. Importing any module of it binds the
package as the attribute `tunesmith.train`, which would hide the function, so the package is callable and calls
the function: `tunesmith.train(config)` and `import tunesmith.train.loop as loop` both work, in any order.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from tunesmith import train_project_api

        return train_project_api(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect

        from tunesmith import train_project_api

        return inspect.signature(train_project_api)


sys.modules[__name__].__class__ = _CallablePackage
