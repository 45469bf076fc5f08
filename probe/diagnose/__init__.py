"""`probe diagnose`: why did AFTER stop using the image? Behaviour, analyses, component swaps, residual patches."""

from probe.diagnose.result import SCHEMA_VERSION, Diagnosis, Effect, read_diagnosis, write_diagnosis
from probe.diagnose.run import SHARE, diagnose

__all__ = ["SCHEMA_VERSION", "SHARE", "Diagnosis", "Effect", "diagnose", "read_diagnosis", "write_diagnosis"]
