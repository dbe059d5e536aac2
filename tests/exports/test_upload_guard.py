"""The upload URL guard (GitLab's UrlBlocker): only addresses on the public internet.

Addresses are classified by ``ipaddress`` (``is_global`` and the rest), applied to the
address and to the IPv4 addresses embedded in it (IPv4-mapped, 6to4, Teredo). Before,
``http://[2002:7f00:1::]/`` (6to4 of 127.0.0.1) and ``http://[fec0::1]/`` (IPv6 site-local)
got through.
"""

from __future__ import annotations

import socket

import pytest

from exports import clients, services
from exports.clients import UploadUrlBlocked
from project.errors import ValidationFailed

LOCALHOST = "upload[url] is blocked: Requests to localhost are not allowed"
LINK_LOCAL = "upload[url] is blocked: Requests to the link local network are not allowed"
LOCAL_NETWORK = "upload[url] is blocked: Requests to the local network are not allowed"

BLOCKED = [
    # The two that got through before.
    ("2002:7f00:1::", LOCALHOST),  # 6to4 of 127.0.0.1
    ("fec0::1", LOCAL_NETWORK),  # IPv6 site-local
    # Embedded IPv4 addresses.
    ("::ffff:127.0.0.1", LOCALHOST),  # IPv4-mapped
    ("::ffff:10.0.0.1", LOCAL_NETWORK),
    ("2002:a9fe:a9fe::1", LINK_LOCAL),  # 6to4 of 169.254.169.254
    ("2002:c0a8:0101::1", LOCAL_NETWORK),  # 6to4 of 192.168.1.1
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", LOCALHOST),  # Teredo, client 127.0.0.1
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", LOCAL_NETWORK),  # Teredo, client 8.8.8.8: 2001::/32 is not global
    ("::127.0.0.1", LOCAL_NETWORK),  # IPv4-compatible (deprecated)
    ("64:ff9b::7f00:1", LOCAL_NETWORK),  # NAT64 of 127.0.0.1
    # The usual suspects.
    ("127.0.0.1", LOCALHOST),
    ("127.1.2.3", LOCALHOST),
    ("::1", LOCALHOST),
    ("0.0.0.0", LOCALHOST),
    ("::", LOCALHOST),
    ("169.254.169.254", LINK_LOCAL),  # cloud metadata
    ("fe80::1", LINK_LOCAL),
    ("10.1.2.3", LOCAL_NETWORK),
    ("172.16.0.1", LOCAL_NETWORK),
    ("192.168.0.1", LOCAL_NETWORK),
    ("100.64.0.1", LOCAL_NETWORK),  # carrier-grade NAT (shared address space)
    ("192.0.0.170", LOCAL_NETWORK),
    ("198.18.0.1", LOCAL_NETWORK),  # benchmarking
    ("192.0.2.1", LOCAL_NETWORK),  # documentation
    ("2001:db8::1", LOCAL_NETWORK),  # documentation
    ("fc00::1", LOCAL_NETWORK),  # unique local (fc00::/7)
    ("fd12:3456::1", LOCAL_NETWORK),
    ("224.0.0.1", LOCAL_NETWORK),  # multicast
    ("ff02::1", LOCAL_NETWORK),
    ("240.0.0.1", LOCAL_NETWORK),  # reserved
    ("255.255.255.255", LOCAL_NETWORK),
]

PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]  # 6to4 of 8.8.8.8


def _url(address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}/bucket/archive.tar.gz?X-Amz-Signature=abc"


@pytest.fixture(autouse=True)
def no_local_requests(settings) -> None:
    settings.ALLOW_LOCAL_REQUESTS = False


@pytest.mark.parametrize(("address", "message"), BLOCKED, ids=[a for a, _ in BLOCKED])
def test_non_public_addresses_are_refused_with_gitlabs_message(address, message) -> None:
    with pytest.raises(UploadUrlBlocked) as caught:
        clients.upload_target_resolve(_url(address))
    assert caught.value.message == message


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address) -> None:
    target = clients.upload_target_resolve(_url(address))
    assert target.addresses == (address,)
    assert target.request_path == "/bucket/archive.tar.gz?X-Amz-Signature=abc"


def test_a_host_name_that_resolves_to_a_6to4_loopback_is_refused(monkeypatch) -> None:
    """Whatever the DNS answers is checked, every address of it."""

    def resolve(host, port, *args, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2002:7f00:1::", port, 0, 0)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(UploadUrlBlocked) as caught:
        clients.upload_target_resolve("https://uploads.example.test/drop")
    assert caught.value.message == LOCALHOST


@pytest.mark.django_db
@pytest.mark.parametrize(("address", "message"), [("2002:7f00:1::", LOCALHOST), ("fec0::1", LOCAL_NETWORK)])
def test_the_export_request_refuses_them_before_anything_is_queued(project, maintainer, address, message) -> None:
    from exports.models import ProjectExportJob

    with pytest.raises(ValidationFailed) as caught:
        services.export_request(project=project, user=maintainer, upload_url=_url(address))
    assert caught.value.message == message
    assert caught.value.http_status == 400
    assert not ProjectExportJob.objects.exists()


def test_allow_local_requests_still_lets_an_operator_reach_them(settings) -> None:
    settings.ALLOW_LOCAL_REQUESTS = True
    assert clients.upload_target_resolve(_url("2002:7f00:1::")).addresses == ("2002:7f00:1::",)
