"""The checked-in protobuf stubs are exactly what grpcio-tools generates from the vendored proto."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from xpupool._generated.deviceplugin.v1beta1 import api_pb2
from xpupool.agent import protogen


def test_generated_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    checked_in_grpc = re.search(
        r"GRPC_GENERATED_VERSION = '([^']+)'",
        (protogen.SRC_ROOT / "xpupool/_generated/deviceplugin/v1beta1/api_pb2_grpc.py").read_text(),
    )
    assert checked_in_grpc is not None
    installed = importlib.metadata.version("grpcio-tools")
    assert installed == checked_in_grpc.group(1), (
        f"the stubs were generated with grpcio-tools {checked_in_grpc.group(1)} but {installed} is installed: "
        f"pin grpcio-tools=={checked_in_grpc.group(1)} (or regenerate with the new pin)"
    )
    written = protogen.generate(tmp_path)
    assert len(written) == 3 * len(protogen.PROTOS)
    for fresh in written:
        checked_in = protogen.SRC_ROOT / fresh.relative_to(tmp_path)
        assert checked_in.exists(), f"{checked_in} missing: run python -m xpupool.agent.protogen"
        assert checked_in.read_text() == fresh.read_text(), (
            f"{checked_in} drifted from its proto (or grpcio-tools changed): run python -m xpupool.agent.protogen"
        )


def test_wire_names_match_the_kubelet_api() -> None:
    """The package and service names fix the gRPC method paths the kubelet calls."""
    services = api_pb2.DESCRIPTOR.services_by_name
    assert api_pb2.DESCRIPTOR.package == "v1beta1"
    assert set(services) == {"Registration", "DevicePlugin"}
    assert set(services["DevicePlugin"].methods_by_name) == {
        "GetDevicePluginOptions",
        "ListAndWatch",
        "GetPreferredAllocation",
        "Allocate",
        "PreStartContainer",
    }
    fields = {f.name: f.number for f in api_pb2.ContainerAllocateResponse.DESCRIPTOR.fields}
    assert fields == {"envs": 1, "mounts": 2, "devices": 3, "annotations": 4, "cdi_devices": 5}
