import json

import pytest

from membrane import cni_types as c


def test_parse_rejects_bad_input_with_spec_codes() -> None:
    with pytest.raises(c.CniError) as e:
        c.NetConf.parse(b"{not json")
    assert e.value.code == c.DECODE_FAILURE
    with pytest.raises(c.CniError) as e:
        c.NetConf.parse({"name": "x", "type": "y"})
    assert e.value.code == c.INVALID_CONFIG
    with pytest.raises(c.CniError) as e:
        c.NetConf.parse({"cniVersion": "9.9.9", "name": "x", "type": "y"})
    assert e.value.code == c.INCOMPATIBLE_VERSION
    with pytest.raises(c.CniError) as e:
        c.NetConf.parse({"cniVersion": "1.0.0", "name": "x", "type": "y", "mtu": 10})
    assert e.value.code == c.INVALID_CONFIG


def test_cni_args() -> None:
    assert c.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=a") == {"IgnoreUnknown": "1", "K8S_POD_NAME": "a"}
    with pytest.raises(c.CniError) as e:
        c.parse_cni_args("novalue")
    assert e.value.code == c.INVALID_ENVIRONMENT


ATT = c.Attachment("mbabc", "aa:aa:aa:aa:aa:aa", "eth0", "bb:bb:bb:bb:bb:bb", "/var/run/netns/p",
                   "10.0.0.5/32", "169.254.1.1")


def test_result_shapes_per_version() -> None:
    new = c.build_result(ATT, "1.0.0")
    assert new["ips"] == [{"address": "10.0.0.5/32", "gateway": "169.254.1.1", "interface": 1}]
    assert new["interfaces"][1]["sandbox"] == "/var/run/netns/p"
    old = c.build_result(ATT, "0.4.0")
    assert old["ips"][0]["version"] == "4" and old["cniVersion"] == "0.4.0"
    json.dumps(new)


def test_result_appends_to_prev_result() -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "other"}],
            "ips": [{"address": "192.168.9.9/24", "interface": 0}], "dns": {"nameservers": ["10.96.0.10"]}}
    res = c.build_result(ATT, "1.0.0", prev)
    assert [i["name"] for i in res["interfaces"]] == ["other", "mbabc", "eth0"]
    assert res["ips"][1]["interface"] == 2 and res["ips"][0]["address"] == "192.168.9.9/24"
    assert res["dns"] == {"nameservers": ["10.96.0.10"]}
