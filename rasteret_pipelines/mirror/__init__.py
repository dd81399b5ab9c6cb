"""Local stand-ins for remote object stores: a range-capable HTTP file server."""

from rasteret_pipelines.mirror.range_server import FAULT_KINDS, FaultPlan, RangeServer, RequestRecord

__all__ = ["FAULT_KINDS", "FaultPlan", "RangeServer", "RequestRecord"]
