"""A few calls of the Kubernetes CRI (runtime.v1.RuntimeService), as the kubelet makes them.

The CRI is gRPC with protobuf messages (k8s.io/cri-api, pkg/apis/runtime/v1/
api.proto).  No CRI client is packaged for Debian 12 (crictl is not), and
generating Python stubs would need the .proto file and protoc.  The messages
the tests need are small, so this module writes and reads the protobuf wire
format itself (protobuf.dev, "Encoding": varint keys ``field << 3 | type``,
type 0 varint, type 2 length-delimited) and hands the bytes to grpcio's
generic unary calls.  The field numbers are api.proto's.
"""

from __future__ import annotations

from typing import Any

SERVICE = "/runtime.v1.RuntimeService/"
NAMESPACE_NODE = 2          # enum NamespaceMode: the node's (host) namespace
CONTAINER_EXITED = 2        # enum ContainerState

# A message is a list of (field number, value): str/bytes are length-delimited,
# int is a varint, a nested list is a message.
Message = list[tuple[int, Any]]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode(message: Message) -> bytes:
    out = bytearray()
    for number, value in message:
        if isinstance(value, bool) or isinstance(value, int):
            out += _varint(number << 3 | 0) + _varint(int(value))
            continue
        data = encode(value) if isinstance(value, list) else value.encode() if isinstance(value, str) else value
        out += _varint(number << 3 | 2) + _varint(len(data)) + data
    return bytes(out)


def decode(data: bytes) -> dict[int, list[Any]]:
    """Field number -> values (varints as int, the rest as bytes; decode nested ones again)."""
    fields: dict[int, list[Any]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = varint()
        kind = key & 7
        if kind == 0:
            value: Any = varint()
        elif kind == 2:
            size = varint()
            value = data[i:i + size]
            i += size
        elif kind in (1, 5):   # fixed64, fixed32: not used by the fields read here
            size = 8 if kind == 1 else 4
            value = data[i:i + size]
            i += size
        else:
            raise ValueError(f"protobuf wire type {kind} is not handled")
        fields.setdefault(key >> 3, []).append(value)
    return fields


def pod_config(name: str, uid: str) -> Message:
    """PodSandboxConfig: metadata, and the node's network (no CNI plugin is needed for it)."""
    namespace_options: Message = [(1, NAMESPACE_NODE)]                  # NamespaceOption.network
    security: Message = [(1, namespace_options)]                         # .namespace_options
    return [(1, [(1, name), (2, uid), (3, "default"), (4, 0)]),          # PodSandboxMetadata
            (8, [(2, security)])]                                        # linux.security_context


def container_config(name: str, image: str, command: list[str], log_path: str) -> Message:
    """ContainerConfig: metadata, image, command, log_path (relative to the pod's log directory)."""
    return [(1, [(1, name)]), (2, [(1, image)]), *((3, arg) for arg in command), (11, log_path)]


class RuntimeService:
    """runtime.v1.RuntimeService over a unix socket, through grpcio."""

    def __init__(self, socket_path: str) -> None:
        import grpc

        self._grpc = grpc
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")

    def call(self, method: str, request: Message, timeout: float = 60) -> dict[int, list[Any]]:
        stub = self.channel.unary_unary(SERVICE + method)
        return decode(stub(encode(request), timeout=timeout))

    def close(self) -> None:
        self.channel.close()

    def run_pod_sandbox(self, config: Message, handler: str) -> str:
        return str(self.call("RunPodSandbox", [(1, config), (2, handler)])[1][0].decode())

    def create_container(self, pod_id: str, config: Message, pod: Message) -> str:
        return str(self.call("CreateContainer", [(1, pod_id), (2, config), (3, pod)])[1][0].decode())

    def container_status(self, container_id: str) -> dict[int, list[Any]]:
        return decode(self.call("ContainerStatus", [(1, container_id)])[1][0])
