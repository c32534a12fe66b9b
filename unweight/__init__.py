"""unweight: lossless packed checkpoints (exponent bits entropy-coded), readable on CPU and GPU."""

__version__ = "0.1.0"

from .compress import CompressReport, compress  # noqa: E402
from .errors import UnweightError  # noqa: E402
from .packed import PackedTensor  # noqa: E402
from .reader import load, open  # noqa: A004,E402

__all__ = ["CompressReport", "PackedTensor", "UnweightError", "compress", "load", "open", "__version__"]
