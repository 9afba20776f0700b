"""Type stub for the compiled device runtime (cpp/bindings/module.cpp)."""

from typing import Any

import numpy as np

class CoreError(RuntimeError):
    """args = (code: int, message: str); mapped by edgerun.errors.from_core_error."""

# ==== wire: begin ====
# ==== wire: end ====

# ==== engine: begin ====
# ==== engine: end ====
