"""The agent's policy manager against a fake dataplane: real forwarding decisions are
asserted with the engine's executable model of the BPF lookup (`lookup_flat`)."""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address, IPv4Network, ip_network
from pathlib import Path

import pytest

from membrane.agent.policy_syncing import LocalEndpoint, PolicyManager
from membrane.delta import diff
from membrane.k8s_models import ObjectRef, parse_object
from membrane.policy import Direction, FlatKey, FlatValue, Protocol, lookup_flat, lpm_lookup
from membrane_testkit.fake_maps import FakePolicyMaps
from membrane_testkit.label_identities import LabelIdentities

FakeMaps = FakePolicyMaps


def pod(ns: str, name: str, **labels: str) -> object:
    return parse_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns,
                         "labels": labels}, "spec": {"containers": [{"name": "c", "image": "i",
                         "ports": [{"name": "http", "containerPort": 80}]}]}})


def namespace(name: str, **labels: str) -> object:
    return parse_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})


def allow_from(ns: str, name: str, selector: dict[str, str], port: int | str = 80) -> object:
    return parse_object({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": name, "namespace": ns},
                         "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                                  "ingress": [{"from": [{"podSelector": {"matchLabels": selector}}],
                                               "ports": [{"port": port}]}]}})


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.maps = FakeMaps()
        self.identities: dict[str, int] = {}
        self.mgr = PolicyManager(LabelIdentities(), self.maps,
                                 lambda key, ident: self.identities.__setitem__(key, ident), lambda: ["198.18.0.1"])
        self.ips = {}

    def endpoint(self, ns: str, name: str, n: int) -> None:
        ref = ObjectRef(ns, name)
        self.ips[ref] = IPv4Address(f"10.0.0.{n}")
        self.mgr.on_endpoint(ref, LocalEndpoint(f"c{n}/eth0", n, self.ips[ref]))

    def canonical(self) -> tuple[set[tuple[object, ...]], set[tuple[object, ...]]]:
        """Map contents with allocation-order numbers (identities, rule refs) replaced by what
        they stand for: the same state reached in another order must give the same set."""
        book = self.mgr.identities

        def ident(number: int) -> object:
            labels = book.allocator.labels_of(number)
            return str(labels) if labels is not None else number

        eps = {ep.endpoint_id: ref for ref, ep in self.mgr.local.items()}
        policy = {(eps[k.endpoint_id], ident(k.identity), k.direction, k.protocol, k.port, k.port_prefix,
                   v.verdict, tuple(self.mgr.rules.describe(v.rule_ref))) for k, v in self.maps.policy.items()}
        ipcache = {(str(net), ident(number)) for net, number in self.maps.ipcache.items()}
        return policy, ipcache

    def cidr_identity(self, ip: IPv4Address) -> int:
        """The CIDR map's longest prefix covering ip, else WORLD (as the datapath)."""
        found = lpm_lookup({str(net): ident for net, ident in self.maps.cidrs.items()}, str(ip))
        return 2 if found is None else found

    def allowed(self, src: ObjectRef, dst: ObjectRef, port: int = 80) -> bool:
        """Egress at the source then ingress at the destination, like from_container."""
        src_id = self.maps.ipcache[IPv4Network(f"{self.ips[src]}/32")]
        dst_id = self.maps.ipcache[IPv4Network(f"{self.ips[dst]}/32")]
        src_ep = self.mgr.local[src].endpoint_id
        dst_ep = self.mgr.local[dst].endpoint_id
        eg = lookup_flat(self.maps.policy, src_ep, Direction.EGRESS, dst_id, Protocol.TCP, port,
                         self.cidr_identity(self.ips[dst]))
        ing = lookup_flat(self.maps.policy, dst_ep, Direction.INGRESS, src_id, Protocol.TCP, port,
                          self.cidr_identity(self.ips[src]))
        return bool(eg and eg.verdict == 1 and ing and ing.verdict == 1)


WEB, DB, OTHER = ObjectRef("shop", "web"), ObjectRef("shop", "db"), ObjectRef("shop", "other")

STEPS = {
    "ns": lambda c: c.mgr.on_namespace("shop", namespace("shop", team="a")),
    "web": lambda c: c.mgr.on_pod(WEB, pod("shop", "web", app="web")),
    "db": lambda c: c.mgr.on_pod(DB, pod("shop", "db", app="db")),
    "other": lambda c: c.mgr.on_pod(OTHER, pod("shop", "other", app="other")),
    "policy": lambda c: c.mgr.on_policy(ObjectRef("shop", "p"), allow_from("shop", "p", {"app": "web"})),
    "eps": lambda c: [c.endpoint("shop", "web", 1), c.endpoint("shop", "db", 2), c.endpoint("shop", "other", 3)],
}


@pytest.mark.parametrize("order", list(itertools.permutations(STEPS))[::37])
def test_any_order_gives_the_same_maps_and_decisions(tmp_path: Path, order: tuple[str, ...]) -> None:
    c = Cluster(tmp_path)
    for step in order:
        STEPS[step](c)
        c.mgr.apply()
    ref = Cluster(tmp_path / "ref")
    for step in STEPS:
        STEPS[step](ref)
    ref.mgr.apply()
    assert c.canonical() == ref.canonical()
    assert c.allowed(WEB, DB) and not c.allowed(OTHER, DB) and not c.allowed(WEB, DB, 81)
    assert c.allowed(DB, WEB)  # db is isolated for ingress only


def test_relabel_moves_identity_and_reachability(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    for step in STEPS.values():
        step(c)
    c.mgr.apply()
    before = c.maps.ipcache[IPv4Network("10.0.0.3/32")]
    c.mgr.on_pod(OTHER, pod("shop", "other", app="web"))
    report = c.mgr.apply()
    assert c.allowed(OTHER, DB) and c.maps.ipcache[IPv4Network("10.0.0.3/32")] != before
    assert c.identities["c3/eth0"] == c.maps.ipcache[IPv4Network("10.0.0.3/32")]
    # "other" now has web's labels, so web's identity: only its ipcache entry changes.
    assert report == {"policy_upserts": 0, "policy_deletes": 0, "ipcache_upserts": 1, "ipcache_deletes": 0}
    # Nothing changed: nothing written.
    assert c.mgr.apply() == {"policy_upserts": 0, "policy_deletes": 0, "ipcache_upserts": 0, "ipcache_deletes": 0}


def test_write_order_never_leaves_a_gap(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    for step in STEPS.values():
        step(c)
    c.mgr.apply()
    c.maps.log.clear()
    c.mgr.on_policy(ObjectRef("shop", "p"), allow_from("shop", "p", {"app": "web"}, port=81))
    c.mgr.apply()
    # New entries first, stale ones last, and only then the revision (established flows are
    # judged again against maps that are complete).
    assert c.maps.log[0].startswith("policy+") and c.maps.log[-2].startswith("policy+0-")
    assert c.maps.log[-1] == f"revision={c.maps.revision}" and c.mgr.revision == c.maps.revision


def test_host_is_allowed_into_isolated_pods_unless_configured(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    for step in STEPS.values():
        step(c)
    c.mgr.apply()
    db_ep = c.mgr.local[DB].endpoint_id
    assert lookup_flat(c.maps.policy, db_ep, Direction.INGRESS, 1, Protocol.TCP, 8080)
    c.mgr.allow_host = False
    c.mgr.dirty.add(DB)
    c.mgr.apply()
    assert not lookup_flat(c.maps.policy, db_ep, Direction.INGRESS, 1, Protocol.TCP, 8080)
    assert c.maps.ipcache[IPv4Network("198.18.0.1/32")] == 1


def test_resync_repairs_drift_and_removes_strays(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    for step in STEPS.values():
        step(c)
    c.mgr.apply()
    good = dict(c.maps.policy)
    victim = next(iter(c.maps.policy))
    del c.maps.policy[victim]
    c.maps.policy[FlatKey(99, 5, 0, 6, 80, 16)] = FlatValue(1, 0)
    report = c.mgr.resync()
    assert c.maps.policy == good and report["stray_policy_entries"] == 1


def from_block(cidr: str, *excepts: str, name: str = "cidr") -> object:
    return parse_object({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": name, "namespace": "shop"},
                         "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                                  "ingress": [{"from": [{"ipBlock": {"cidr": cidr, "except": list(excepts)}}]}]}})


def test_ip_block_selects_pod_addresses_through_the_cidr_map_without_a_gap(tmp_path: Path) -> None:
    """web 10.0.0.1, db 10.0.0.2, other 10.0.0.3: db admits an ipBlock only; pods are matched by
    address (CIDR map), and moving the block to new prefixes never drops web, write by write."""
    c = Cluster(tmp_path)
    for name, step in STEPS.items():
        if name != "policy":
            step(c)
    ref = ObjectRef("shop", "cidr")
    c.mgr.on_policy(ref, from_block("10.0.0.0/24", "10.0.0.3/32"))
    c.mgr.apply()
    cidrs = {IPv4Network(p): i for p, i in c.mgr.resolver.desired().cidr_identities.items()}
    assert c.maps.cidrs == cidrs
    # The ipcache lists them too, except where a pod's /32 is the same key (the pod wins there).
    assert c.maps.ipcache[IPv4Network("10.0.0.0/24")] == cidrs[IPv4Network("10.0.0.0/24")]
    assert c.maps.ipcache[IPv4Network("10.0.0.3/32")] == c.identities["c3/eth0"]
    assert c.allowed(WEB, DB) and not c.allowed(OTHER, DB)

    seen: list[bool] = []
    c.maps.check = lambda: seen.append(c.allowed(WEB, DB))
    c.maps.log.clear()
    c.mgr.on_policy(ref, from_block("10.0.0.0/30", "10.0.0.3/32"))  # new prefix identities
    c.mgr.apply()
    assert seen and all(seen), seen
    # New entries, then prefixes (ipcache, CIDR map), then stale prefixes, then stale entries,
    # then the policy revision (established flows are judged again).
    assert c.maps.log == ["policy+1-0", "ipcache+1-0", "cidr+1-0", "ipcache+0-1", "cidr+0-1", "policy+0-1",
                          f"revision={c.maps.revision}"]
    assert not c.allowed(OTHER, DB)
    c.mgr.on_policy(ref, from_block("10.0.0.0/30"))
    c.mgr.apply()
    assert c.allowed(OTHER, DB) and c.allowed(WEB, DB)
    c.mgr.on_policy(ref, None)
    c.mgr.apply()
    assert c.maps.cidrs == {} and c.allowed(OTHER, DB)

    # A restart: the manager reads the CIDR map back and repairs it.
    c.mgr.on_policy(ref, from_block("10.0.0.0/24", "10.0.0.3/32"))
    c.mgr.apply()
    c.maps.cidrs.clear()
    c.mgr.resync()
    assert c.maps.cidrs == {IPv4Network(p): i for p, i in c.mgr.resolver.desired().cidr_identities.items()}


def test_cidr_map_follows_policy_changes_incrementally(tmp_path: Path) -> None:
    """Random ipBlock policy updates, applied in random batches: the CIDR map written from the
    recorded changes always equals the whole desired table, and only changed prefixes are written."""
    import random

    rng = random.Random(5)
    c = Cluster(tmp_path)
    for step in STEPS.values():
        step(c)
    c.mgr.apply()
    blocks = ["10.0.0.0/24", "10.0.0.0/30", "10.0.0.3/32", "192.0.2.0/24", "0.0.0.0/0", "fd00::/64"]
    for _ in range(60):
        for _ in range(rng.randint(1, 3)):
            name = f"b{rng.randrange(4)}"
            if rng.random() < 0.25:
                c.mgr.on_policy(ObjectRef("shop", name), None)
                continue
            cidr = rng.choice(blocks)
            excepts = [e for e in blocks if e != cidr and rng.random() < 0.3
                       and ip_network(e).version == ip_network(cidr).version and ip_network(e).subnet_of(ip_network(cidr))]
            c.mgr.on_policy(ObjectRef("shop", name), from_block(cidr, *excepts, name=name))
        before = dict(c.maps.cidrs)
        c.maps.log.clear()
        c.mgr.apply()
        want = c.mgr.desired_cidrs()
        assert c.maps.cidrs == want
        written = sum(int(entry.split("+")[1].split("-")[0]) + int(entry.split("-")[1])
                      for entry in c.maps.log if entry.startswith("cidr+"))
        assert written == len(diff(want, before).upserts) + len(diff(want, before).deletes)
