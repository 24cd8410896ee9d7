"""Endpoint manager against a fake netlink and a fake endpoint map (no root, no kernel)."""

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from membrane.agent.config import AgentConfig
from membrane.agent.datapath.endpoints import EndpointEntry
from membrane.agent.endpoints import EndpointManager, host_ifname_for
from membrane.agent.netlinking import PodLink
from membrane.delta import Delta


class FakeNetlink:
    def __init__(self) -> None:
        self.links: dict[str, int] = {}
        self.aliases: dict[str, str] = {}
        self.attached: dict[int, int] = {}
        self.fail_create = False
        self._next = 10

    def create_pod_link(self, host_ifname: str, netns: str, pod_ifname: str, address: IPv4Address,
                        mtu: int) -> PodLink:
        self._next += 1
        self.links[host_ifname] = self._next
        if self.fail_create:
            raise OSError("netns vanished")
        return PodLink(host_ifname, self._next, "02:00:00:00:00:01", pod_ifname, "02:00:00:00:00:02")

    def delete_link(self, name: str) -> bool:
        return self.links.pop(name, None) is not None

    def ifindex(self, name: str) -> int | None:
        return self.links.get(name)

    def attach(self, ifindex: int, from_container: tuple[int, str], to_container: tuple[int, str]) -> None:
        self.attached[ifindex] = self.attached.get(ifindex, 0) + 1

    def host_links(self, prefix: str) -> dict[str, int]:
        return {n: i for n, i in self.links.items() if n.startswith(prefix)}

    def set_alias(self, ifindex: int, alias: str) -> None:
        self.aliases.update({n: alias for n, i in self.links.items() if i == ifindex})

    def host_link_aliases(self, prefix: str) -> dict[str, tuple[int, str, str]]:
        return {n: (i, "02:00:00:00:00:01", self.aliases.get(n, "")) for n, i in self.links.items()
                if n.startswith(prefix)}


class FakeMap:
    def __init__(self) -> None:
        self.entries: dict[IPv4Address, EndpointEntry] = {}
        self.writes = 0

    def read_endpoints(self) -> dict[IPv4Address, EndpointEntry]:
        return dict(self.entries)

    def write_endpoints(self, delta: Delta[IPv4Address, EndpointEntry]) -> None:
        self.entries.update(delta.upserts)
        for key in delta.deletes:
            del self.entries[key]
        self.writes += len(delta.upserts) + len(delta.deletes)

    def programs(self) -> tuple[tuple[int, str], tuple[int, str]]:
        return (3, "from_container"), (4, "to_container")


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    return AgentConfig(node_name="n1", pod_cidr="10.9.0.0/28", state_dir=tmp_path)


def test_add_is_idempotent_and_fills_the_map(config: AgentConfig) -> None:
    nl, dp = FakeNetlink(), FakeMap()
    mgr = EndpointManager(config, nl, dp)
    ep = mgr.add("c1", "eth0", "/var/run/netns/p1", "default", "a")
    again = mgr.add("c1", "eth0", "/var/run/netns/p1", "default", "a")
    assert again.ip == ep.ip and dp.entries[ep.ip].ifindex == ep.host_ifindex
    assert len(nl.links) == 1


def test_delete_is_idempotent(config: AgentConfig) -> None:
    nl, dp = FakeNetlink(), FakeMap()
    mgr = EndpointManager(config, nl, dp)
    ep = mgr.add("c1", "eth0", "/ns")
    assert mgr.delete("c1", "eth0") is True
    assert mgr.delete("c1", "eth0") is False
    assert mgr.delete("never-seen", "eth0") is False
    assert not dp.entries and not nl.links and not mgr.ipam.allocations
    assert ep.ip not in dp.entries


def test_failed_add_leaks_nothing(config: AgentConfig) -> None:
    nl, dp = FakeNetlink(), FakeMap()
    mgr = EndpointManager(config, nl, dp)
    nl.fail_create = True
    with pytest.raises(OSError):
        mgr.add("c1", "eth0", "/ns")
    assert not nl.links and not mgr.ipam.allocations and not dp.entries and not mgr.endpoints


def test_restart_restores_without_duplicates_or_rewrites(config: AgentConfig) -> None:
    nl, dp = FakeNetlink(), FakeMap()
    first = EndpointManager(config, nl, dp)
    eps = [first.add(f"c{i}", "eth0", f"/ns{i}") for i in range(3)]
    writes = dp.writes
    nl.attached.clear()
    second = EndpointManager(config, nl, dp)  # same state dir, same kernel objects
    second.restore()
    assert not nl.attached, "restore attaches nothing: programs come after policy state"
    assert second.reattach() == 3 and all(n == 1 for n in nl.attached.values())
    assert dp.writes == writes, "restore must not rewrite an already correct map"
    new = second.add("c9", "eth0", "/ns9")
    assert new.ip not in {e.ip for e in eps}


def test_restore_releases_half_done_adds_and_orphan_links(config: AgentConfig) -> None:
    nl, dp = FakeNetlink(), FakeMap()
    first = EndpointManager(config, nl, dp)
    first.add("c1", "eth0", "/ns1")
    # An ADD that died after its address was taken and the veth made, before its record was
    # committed: the address was never stored apart from a record, so nothing is held.
    first.ipam.allocate("c2/eth0")
    first._save_ipam()
    nl.links[host_ifname_for("c2", "eth0")] = 99
    second = EndpointManager(config, nl, dp)
    report = second.restore()
    assert report["released_addresses"] == 0 and report["orphan_links"] == 1
    assert list(second.ipam.allocations.values()) == ["c1/eth0"]


def test_restore_repairs_drifted_map(config: AgentConfig) -> None:
    nl, dp = FakeNetlink(), FakeMap()
    EndpointManager(config, nl, dp).add("c1", "eth0", "/ns1")
    dp.entries.clear()
    dp.entries[IPv4Address("10.9.0.14")] = EndpointEntry(ifindex=1, endpoint_id=1, identity=0,
                                                         pod_mac="02:00:00:00:00:09", host_mac="02:00:00:00:00:08")
    EndpointManager(config, nl, dp).restore()
    assert list(dp.entries) == [IPv4Address("10.9.0.2")]


def test_records_are_the_truth_about_addresses(config: AgentConfig) -> None:
    """ADD commits its record and the IPAM cursor together (one transaction); the addresses in
    use are the records' addresses, and nothing else."""
    nl, dp = FakeNetlink(), FakeMap()
    first = EndpointManager(config, nl, dp)
    kept = [first.add(f"c{i}", "eth0", f"/ns{i}") for i in range(3)]
    first.delete("c1", "eth0")
    assert first.db.get_doc("ipam") is not None and not (config.state_dir / "ipam.json").exists()
    second = EndpointManager(config, nl, dp)
    second.restore()
    assert {str(a): o for a, o in second.ipam.allocations.items()} == {
        str(kept[0].ip): "c0/eth0", str(kept[2].ip): "c2/eth0"}
    assert second.add("c9", "eth0", "/ns9").ip not in {kept[0].ip, kept[2].ip}


def test_crash_before_the_record_leaks_nothing(config: AgentConfig) -> None:
    """An ADD killed after its veth was made and its address taken, before the record."""
    nl, dp = FakeNetlink(), FakeMap()
    first = EndpointManager(config, nl, dp)
    first.add("c1", "eth0", "/ns1")

    def crash(ep: object, present: bool) -> None:
        raise KeyboardInterrupt  # stands in for kill -9 between netlink and the record

    first.on_change = crash
    with pytest.raises(KeyboardInterrupt):
        first.add("c2", "eth0", "/ns2")
    nl.links[host_ifname_for("c2", "eth0")] = 98  # as if the rollback never ran
    second = EndpointManager(config, nl, dp)
    report = second.restore()
    assert report["orphan_links"] == 1
    assert list(second.ipam.allocations.values()) == ["c1/eth0"]


def test_identity_is_in_the_first_map_write(config: AgentConfig) -> None:
    nl, dp = FakeNetlink(), FakeMap()
    mgr = EndpointManager(config, nl, dp, on_change=lambda ep, present: 4242 if present else None)
    ep = mgr.add("c1", "eth0", "/ns1")
    assert ep.identity == 4242 and dp.entries[ep.ip].identity == 4242 and dp.writes == 1
    mgr.update_identity(ep.key, 4242)
    assert dp.writes == 1
    mgr.update_identity(ep.key, 7)
    assert dp.entries[ep.ip].identity == 7 and dp.writes == 2


def test_concurrent_adds_and_deletes(config: AgentConfig) -> None:
    from concurrent.futures import ThreadPoolExecutor

    nl, dp = FakeNetlink(), FakeMap()
    mgr = EndpointManager(config, nl, dp)
    with ThreadPoolExecutor(8) as pool:
        eps = list(pool.map(lambda i: mgr.add(f"c{i}", "eth0", f"/ns{i}"), range(10)))
    assert len({e.ip for e in eps}) == 10 and len({e.endpoint_id for e in eps}) == 10
    assert set(dp.entries) == {e.ip for e in eps}
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(lambda i: mgr.delete(f"c{i}", "eth0"), range(10)))
    assert not dp.entries and not mgr.ipam.allocations and not mgr.endpoints


def test_lost_or_damaged_records_are_rebuilt_from_link_aliases_and_the_map(config: AgentConfig) -> None:
    nl, dp = FakeNetlink(), FakeMap()
    first = EndpointManager(config, nl, dp)
    a = first.add("c1", "eth0", "/ns1", namespace="shop", pod="a")
    b = first.add("c2", "eth0", "/ns2", namespace="shop", pod="b")
    first.db.delete_endpoint(a.key)  # lost
    first.db.put_endpoint(b.key, str(b.ip), {"container_id": "c2", "ifn": 1})  # not a record
    second = EndpointManager(config, nl, dp)
    report = second.restore()
    assert report["rebuilt_records"] == 2 and report["damaged_records"] == 1 and report["orphan_links"] == 0
    for ep in (a, b):
        again = second.endpoints[ep.key]
        assert (again.ip, again.endpoint_id, again.pod_ref, again.netns, again.host_ifname) == \
            (ep.ip, ep.endpoint_id, ep.pod_ref, ep.netns, ep.host_ifname)
    assert sorted(k for k, _, _ in second.db.endpoint_rows()) == ["c1/eth0", "c2/eth0"]  # stored again
    assert sorted(second.ipam.allocations.values()) == ["c1/eth0", "c2/eth0"]  # IPAM knows both again
    assert nl.links.keys() == {a.host_ifname, b.host_ifname}  # nothing torn down


def test_a_link_whose_add_never_completed_has_no_alias_and_is_removed(config: AgentConfig) -> None:
    nl, dp = FakeNetlink(), FakeMap()
    mgr = EndpointManager(config, nl, dp)
    nl.set_alias = lambda ifindex, alias: (_ for _ in ()).throw(OSError("agent died"))  # type: ignore[method-assign]
    with pytest.raises(OSError):
        mgr.add("c1", "eth0", "/ns1")
    assert nl.links == {}  # the ADD rolled back
    nl.links[host_ifname_for("c9", "eth0")] = 77  # as if the agent died before completing
    report = EndpointManager(config, nl, dp).restore()
    assert report["orphan_links"] == 1 and nl.links == {}


def test_an_owner_too_long_for_the_alias_still_marks_the_add_complete() -> None:
    from membrane.agent.endpoints import link_alias, parse_alias
    alias = link_alias("c" * 64, "eth0", "n" * 63, "p" * 253, "/var/run/netns/x")
    assert len(alias) <= 255 and alias and parse_alias(alias) is None  # kept at restore, not rebuilt
    short = link_alias("c1", "eth0", "shop", "a", "/var/run/netns/x")
    assert parse_alias(short) == {"c": "c1", "i": "eth0", "n": "shop", "p": "a", "s": "/var/run/netns/x"}
