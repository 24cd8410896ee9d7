"""Certificates of the control plane: the CA, node certificates, CSR checks, the signer's
decisions (who may get which name) and when renewal is due. Pure or cryptography only."""

from __future__ import annotations

import base64
import datetime as dt
import time

import pytest

from membrane.operator.csr_signing import SIGNER, decide, pending
from membrane.tls.certificates import (
    OPERATOR_NAME,
    Authority,
    CertificateError,
    facts,
    key_matches,
    new_key_pem,
    new_request,
    request_name,
)
from membrane.tls.renewal import due, renew_at

HOUR = dt.timedelta(hours=1)


def test_issued_certificate_names_the_node_and_verifies() -> None:
    ca = Authority.create()
    pair = ca.issue("node-1", HOUR)
    found = ca.verify(pair.cert_pem)
    assert found.name == "node-1" and found.dns_names == ("node-1",)
    assert abs((found.not_after - found.issued) - 3600) < 2
    assert key_matches(pair.key_pem, pair.cert_pem)
    assert not key_matches(new_key_pem(), pair.cert_pem)
    again = Authority(ca.key_pem, ca.cert_pem)  # reloaded from the Secret's bytes
    assert again.verify(pair.cert_pem).serial == found.serial


def test_verify_refuses_other_cas_and_expired() -> None:
    ca, other = Authority.create(), Authority.create()
    with pytest.raises(CertificateError, match="not issued by this CA|not this CA"):
        ca.verify(other.issue("node-1", HOUR).cert_pem)
    old = ca.issue("node-1", dt.timedelta(seconds=60), start=dt.datetime.now(dt.UTC) - 2 * HOUR)
    with pytest.raises(CertificateError, match="expired"):
        ca.verify(old.cert_pem)
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        facts(b"garbage")
    with pytest.raises(CertificateError, match="does not belong"):
        Authority(other.key_pem, ca.cert_pem)


def test_csr_name_and_signing_use_only_the_checked_name() -> None:
    key = new_key_pem()
    csr = new_request(key, "node-2")
    assert request_name(csr) == "node-2"
    cert = Authority.create().sign_request(csr, "node-2", HOUR)
    assert facts(cert).name == "node-2" and key_matches(key, cert)
    with pytest.raises(CertificateError, match="certificate request"):
        request_name(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")


def csr_object(name: str, user: str, groups: list[str], extra: dict | None = None,
               usages: list[str] | None = None, signer: str = SIGNER) -> dict:
    request = base64.b64encode(new_request(new_key_pem(), name)).decode()
    spec = {"request": request, "signerName": signer, "username": user, "groups": groups,
            "usages": usages or ["digital signature", "client auth", "server auth"]}
    if extra:
        spec["extra"] = extra
    return {"metadata": {"name": "csr-1"}, "spec": spec, "status": {}}


ACCOUNT = "kube-system/membrane-agent"
NODES = {"n1", "n2", OPERATOR_NAME}


def test_signer_approves_only_a_node_asking_for_itself() -> None:
    known = NODES.__contains__
    assert decide(csr_object("n1", "system:node:n1", ["system:nodes"]), known, ACCOUNT).approve
    bound = {"authentication.kubernetes.io/node-name": ["n1"]}
    assert decide(csr_object("n1", "system:serviceaccount:kube-system:membrane-agent", [], bound),
                  known, ACCOUNT).approve
    denied = {
        "another node": csr_object("n1", "system:node:n2", ["system:nodes"]),
        "not in system:nodes": csr_object("n1", "system:node:n1", []),
        "another account": csr_object("n1", "system:serviceaccount:default:app", [], bound),
        "account bound elsewhere": csr_object("n1", "system:serviceaccount:kube-system:membrane-agent", [],
                                              {"authentication.kubernetes.io/node-name": ["n2"]}),
        "unknown node": csr_object("ghost", "system:node:ghost", ["system:nodes"]),
        "operator's name": csr_object(OPERATOR_NAME, f"system:node:{OPERATOR_NAME}", ["system:nodes"]),
        "usages": csr_object("n1", "system:node:n1", ["system:nodes"], usages=["client auth", "cert sign"]),
    }
    for why, csr in denied.items():
        decision = decide(csr, known, ACCOUNT)
        assert not decision.approve and decision.reason, why
    garbage = csr_object("n1", "system:node:n1", ["system:nodes"])
    garbage["spec"]["request"] = base64.b64encode(b"nonsense").decode()
    assert "unusable request" in decide(garbage, known, ACCOUNT).reason


def test_pending_means_ours_and_undecided() -> None:
    csr = csr_object("n1", "system:node:n1", ["system:nodes"])
    assert pending(csr)
    assert not pending(csr_object("n1", "system:node:n1", [], signer="kubernetes.io/kubelet-serving"))
    assert not pending({**csr, "status": {"certificate": "eA=="}})
    assert not pending({**csr, "status": {"conditions": [{"type": "Denied"}]}})
    assert pending({**csr, "status": {"conditions": [{"type": "Approved"}]}})  # still needs signing


def test_renewal_at_two_thirds() -> None:
    assert renew_at(100.0, 400.0) == pytest.approx(300.0)
    assert not due(100.0, 400.0, 299.0) and due(100.0, 400.0, 300.0)
    now = time.time()
    found = facts(Authority.create().issue("n", dt.timedelta(seconds=30)).cert_pem)
    assert renew_at(found.issued, found.not_after) == pytest.approx(now + 20, abs=2)
