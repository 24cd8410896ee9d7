"""CNI protocol data: error codes, network configuration and results (pure, stdlib only).

Used by the agent (which checks configurations and builds results) and the tests; the Go
plugin (cni/membrane-cni) uses the same codes and the same configuration checks. Follows the
CNI specification 1.1.0 and converts results down to the version the network configuration
asks for (0.3.x/0.4.0 carry `version` on each IP).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"

# Error codes reserved by the specification (1-99); 100+ are ours.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
PLUGIN_LIMITED = 51
# Plugin-specific codes.
INTERFACE_MISMATCH = 110  # CHECK found the pod's network not as it was set up
IPAM_EXHAUSTED = 111
INTERNAL_ERROR = 199


class CniError(Exception):
    """An error the plugin reports as CNI error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str = LATEST_VERSION) -> dict[str, Any]:
        body: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            body["details"] = self.details
        return body


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError as exc:
        raise CniError(INCOMPATIBLE_VERSION, f"malformed cniVersion {version!r}") from exc


class NetConf:
    """The fields of a network configuration membrane reads."""

    __slots__ = ("cni_version", "name", "type", "agent_socket", "mtu", "prev_result", "raw")

    def __init__(self, cni_version: str, name: str, type: str, agent_socket: str | None = None,
                 mtu: int | None = None, prev_result: dict[str, Any] | None = None,
                 raw: dict[str, Any] | None = None) -> None:
        self.cni_version = cni_version
        self.name = name
        self.type = type
        self.agent_socket = agent_socket
        self.mtu = mtu
        self.prev_result = prev_result
        self.raw: dict[str, Any] = {} if raw is None else raw

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # unhashable: holds dicts

    def __repr__(self) -> str:
        return f"NetConf(cni_version={self.cni_version!r}, name={self.name!r}, type={self.type!r})"

    @classmethod
    def parse(cls, data: bytes | str | dict[str, Any]) -> NetConf:
        if isinstance(data, dict):
            conf = data
        else:
            import json  # only here: VERSION never pays for it

            try:
                conf = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise CniError(DECODE_FAILURE, "network configuration is not valid JSON", str(exc)) from exc
        if not isinstance(conf, dict):
            raise CniError(DECODE_FAILURE, "network configuration must be a JSON object")
        version = conf.get("cniVersion")
        if not isinstance(version, str) or not version:
            raise CniError(INVALID_CONFIG, "network configuration: cniVersion is required")
        if version not in SUPPORTED_VERSIONS:
            raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported",
                           f"supported: {', '.join(SUPPORTED_VERSIONS)}")
        for key in ("name", "type"):
            if not isinstance(conf.get(key), str) or not conf[key]:
                raise CniError(INVALID_CONFIG, f"network configuration: {key} is required")
        mtu = conf.get("mtu")
        if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool) or not 576 <= mtu <= 65535):
            raise CniError(INVALID_CONFIG, "network configuration: mtu must be an integer in 576..65535")
        socket_path = conf.get("agentSocket")
        if socket_path is not None and not isinstance(socket_path, str):
            raise CniError(INVALID_CONFIG, "network configuration: agentSocket must be a string")
        prev = conf.get("prevResult")
        if prev is not None and not isinstance(prev, dict):
            raise CniError(INVALID_CONFIG, "network configuration: prevResult must be an object")
        return cls(version, conf["name"], conf["type"], socket_path, mtu, prev, conf)


def parse_cni_args(text: str) -> dict[str, str]:
    """Parse CNI_ARGS (`K=V;K=V`)."""
    args: dict[str, str] = {}
    if not text:
        return args
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: malformed pair {pair!r}", "expected K=V;K=V")
        args[key] = value
    return args


class Attachment:
    """What membrane set up for one pod interface, as reported in a result."""

    __slots__ = ("host_ifname", "host_mac", "pod_ifname", "pod_mac", "sandbox", "address", "gateway")

    def __init__(self, host_ifname: str, host_mac: str, pod_ifname: str, pod_mac: str, sandbox: str,
                 address: str, gateway: str) -> None:
        self.host_ifname = host_ifname
        self.host_mac = host_mac
        self.pod_ifname = pod_ifname
        self.pod_mac = pod_mac
        self.sandbox = sandbox
        self.address = address  # "10.0.0.5/32"
        self.gateway = gateway

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # unhashable: holds dicts

    def __repr__(self) -> str:
        return "Attachment(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"


def build_result(att: Attachment, cni_version: str, prev_result: dict[str, Any] | None = None) -> dict[str, Any]:
    """A result for `cni_version`, appended to a chained `prevResult` when there is one."""
    prev = dict(prev_result or {})
    interfaces = list(prev.get("interfaces") or [])
    ips = list(prev.get("ips") or [])
    routes = list(prev.get("routes") or [])
    interfaces.append({"name": att.host_ifname, "mac": att.host_mac})
    interfaces.append({"name": att.pod_ifname, "mac": att.pod_mac, "sandbox": att.sandbox})
    ip: dict[str, Any] = {"address": att.address, "gateway": att.gateway, "interface": len(interfaces) - 1}
    if version_tuple(cni_version) < (1, 0, 0):
        ip["version"] = "4"
    ips.append(ip)
    if not any(r.get("dst") == "0.0.0.0/0" for r in routes):
        routes.append({"dst": "0.0.0.0/0", "gw": att.gateway})
    result: dict[str, Any] = {"cniVersion": cni_version, "interfaces": interfaces, "ips": ips,
                              "routes": routes, "dns": prev.get("dns") or {}}
    return result
